r"""Per-row algebra of the fused SLD paths: once the ``(B, C)``-sized work has reduced the logits to a
few numbers per row and temperature, the losses and the gradient coefficients follow from the
formulas below. Here they are code, in array-API words for any namespace ``xp``, used by the eager
paths (torch chunked, NumPy without numba). The other paths transcribe the same formulas with the
same names (the list of copies and the tests that pin each is in :mod:`backends`).

Notation (one row, one temperature ``T``): ``u_s = s - max(s)``, ``u_t = t - max(t)``,
``Z_s = sum exp(u_s/T)``, ``Z_t = sum exp(u_t/T)``, ``q = softmax(s/T)``, ``p_t = softmax(t/T)``,
``m`` / ``m_t`` the first argmax of ``s`` / ``t``, ``y`` the label, ``d = s_m - s_y >= 0``.

- ``KL(p_t || q) = sum(p_t (u_t - u_s)) / T - log Z_t + log Z_s``
- teacher swap: ``KL(swap(p_t) || q) = KL(p_t || q) + (p_t[m_t] - p_t[y]) (s[m_t] - s[y]) / T``,
  with ``p_t[m_t] = 1/Z_t`` (the shifted maximum is ``exp(0) = 1``)
- pseudo-teacher: ``KL(swap(q) || q) = (q_m - q_y) d / T``, ``q_m = 1/Z_s``, ``q_y = exp(-d/T)/Z_s``
- gradient of the weighted total w.r.t. ``s`` (see :func:`sld_core.sld_loss_and_grad`) is
  ``sum_T (coef_s[T] exp(u_s/T) + coef_t[T] exp(u_t/T))`` plus values at ``m_t``, ``y`` and ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["GradCoefficients", "RowConstants", "grad_coefficients", "row_constants", "row_losses"]


@dataclass(frozen=True)
class RowConstants:
    """Per-temperature constants of one call, as ``(K,)`` arrays of the compute dtype and device.
    Temperature 1 is appended (KD weight 0) when the config lacks it: the cross-entropy needs its
    log-partition anyway."""

    temperatures: Any
    inv_t: Any  # 1/T
    neg_inv_t: Any  # -1/T
    kd_on: Any  # 1 where T is in the KD sum, else 0
    kd_t: Any  # T where T is in the KD sum, else 0 (gradient weight)
    kd_t2: Any  # T**2 where T is in the KD sum, else 0 (loss weight)
    ce_hot: Any  # 1 at the temperature-1 entry
    ce_index: int
    num_roots: int  # exp(u/T) of the first num_roots entries is computed with exp ...
    squares: tuple[tuple[int, int], ...]  # ... and entry dst as the square of entry src (T_src = 2 T_dst)


def row_constants(temperatures: tuple[float, ...], *, xp: Any, dtype: Any, device: Any) -> RowConstants:
    """The :class:`RowConstants` of ``temperatures`` (from an ``SLDConfig``), in evaluation order.

    ``exp(u/T) = exp(u/(2T))**2``: a temperature whose double is also used is derived by one multiply
    instead of an ``exp`` (at most two squarings deep, so the relative rounding error stays within a
    few ulp; measured in ``benchmarks/RESULTS.md``). For (1, ..., 6): 6, 5, 4 by ``exp``; 3, 2, 1 by
    squaring 6, 4, 2.
    """
    temps = [float(t) for t in temperatures]
    in_kd = [1.0] * len(temps)
    if 1.0 not in temps:
        temps.append(1.0)
        in_kd.append(0.0)
    power: dict[int, int] = {}  # how many squarings of a root give entry i
    source: dict[int, int] = {}
    for i in sorted(range(len(temps)), key=lambda i: -temps[i]):
        src = next((j for j in power if temps[j] == 2 * temps[i] and power[j] < 2), None)
        power[i] = 0 if src is None else power[src] + 1
        if src is not None:
            source[i] = src
    roots = [i for i in power if i not in source]
    derived = [i for i in power if i in source]  # descending T: every source comes first
    order = roots + derived
    position = {old: new for new, old in enumerate(order)}
    temps, in_kd = [temps[i] for i in order], [in_kd[i] for i in order]
    ce_index = temps.index(1.0)

    def arr(values: list[float]) -> Any:
        return xp.asarray(values, dtype=dtype, device=device)

    return RowConstants(
        temperatures=arr(temps),
        inv_t=arr([1.0 / t for t in temps]),
        neg_inv_t=arr([-1.0 / t for t in temps]),
        kd_on=arr(in_kd),
        kd_t=arr([t * k for t, k in zip(temps, in_kd)]),
        kd_t2=arr([t * t * k for t, k in zip(temps, in_kd)]),
        ce_hot=arr([1.0 if i == ce_index else 0.0 for i in range(len(temps))]),
        ce_index=ce_index,
        num_roots=len(roots),
        squares=tuple((position[i], position[source[i]]) for i in derived),
    )


def row_losses(partition: Any, cross: Any, gap: Any, teacher_gap: Any, swap_gap: Any, consts: RowConstants, *,
               xp: Any, teacher_swap: bool, pseudo_on: bool) -> list[Any]:
    """``[ce, teacher, pseudo]`` summed over a block of rows (0-d; ``pseudo`` is 0 when not ``pseudo_on``).

    Parameters
    ----------
    partition : (rows, 2, K)
        ``Z_s`` (``[:, 0]``) and ``Z_t`` (``[:, 1]``) per row and temperature.
    cross : (rows, K)
        ``sum exp(u_t/T) (u_t - u_s)``.
    gap, teacher_gap, swap_gap : (rows, 1)
        ``s_m - s_y``, ``t_y - t_max`` and ``s[m_t] - s_y``.
    """
    inv_t = consts.inv_t
    log_z = xp.log(partition)
    recip_t = 1.0 / partition[:, 1]  # p_t[m_t] = 1/Z_t
    kl_teacher = cross * inv_t * recip_t + (log_z[:, 0] - log_z[:, 1])
    if teacher_swap:
        dp = (1.0 - xp.exp(teacher_gap * inv_t)) * recip_t  # p_t[m_t] - p_t[y]; 0 if the teacher is right
        kl_teacher = kl_teacher + dp * (swap_gap * inv_t)
    ce = xp.sum(log_z[:, 0, consts.ce_index]) + xp.sum(gap)
    if pseudo_on:
        dq = (1.0 - xp.exp(gap * consts.neg_inv_t)) / partition[:, 0]  # q_m - q_y; 0 on right rows
        pseudo = xp.sum(dq * consts.kd_t * gap)  # T^2 * (dq d / T)
    else:
        pseudo = ce * 0.0
    return [ce, xp.sum(kl_teacher * consts.kd_t2), pseudo]


@dataclass(frozen=True)
class GradCoefficients:
    """The gradient of the weighted total w.r.t. ``s`` as a function of ``r = 1 / partition``, flattened
    to ``(rows, 2K)`` (student temperatures first, then teacher): everything else depends only on the
    row gaps, so it is known before any ``(B, C)``-sized work. With ``E`` the ``(rows, 2K, C)``
    exponentials ``exp(u_s/T)``, ``exp(u_t/T)``::

        grad = sum_k (r * (lin + quad * r))[:, k] * E[:, k]  +  sparse at (m_t, y, m)
        sparse = r @ sparse_map, plus ``at_target`` at ``y``

    All terms are already divided by the batch size."""

    lin: Any  # (2K,): w_teacher T + w_ce [T=1] (student), -w_teacher T (teacher)
    quad: Any  # (rows, 2K) or None: -w_pseudo d (1 - exp(-d/T)), student half (pseudo path via swap(s))
    sparse_map: Any  # (rows, 2K, 3): r -> values at (m_t, y, m)
    at_target: Any  # -w_ce at y (0-d or float)


def grad_coefficients(gap: Any, teacher_gap: Any, consts: RowConstants, *, xp: Any, teacher_swap: bool,
                      pseudo_on: bool, detach_pseudo: bool, weights: tuple[Any, Any, Any],
                      batch: int) -> GradCoefficients:
    """:class:`GradCoefficients` for rows with gaps ``gap = s_m - s_y`` and ``teacher_gap = t_y - t_max``
    (both ``(rows, 1)``), for the total ``w_ce ce + w_teacher teacher + w_pseudo pseudo`` with
    ``weights = (w_ce, w_teacher, w_pseudo)`` (0-d arrays allowed)."""
    w_ce, w_teacher, w_pseudo = (w / batch for w in weights)
    kd_t, kd_on = consts.kd_t, consts.kd_on
    zeros = gap * kd_on * 0.0  # (rows, K)
    lin = xp.concat([w_teacher * kd_t + w_ce * consts.ce_hot, -w_teacher * kd_t])
    # T (p - swap(p)) at m_t and y, with p_t[m_t] - p_t[y] = (1 - exp((t_y - t_max)/T)) / Z_t
    at_t_top = w_teacher * kd_t * (1.0 - xp.exp(teacher_gap * consts.inv_t)) if teacher_swap else zeros
    quad = None
    if pseudo_on:
        q_y_ratio = xp.exp(gap * consts.neg_inv_t)  # q_y / q_m
        dq_ratio = 1.0 - q_y_ratio  # (q_m - q_y) Z_s
        at_s_top = at_y = w_pseudo * kd_t * dq_ratio  # T (q - swap(q)): T dq at m, -T dq at y
        if not detach_pseudo:  # plus the path through swap(s): d (q_m e_m - q_y e_y - dq q)
            at_s_top = at_s_top + w_pseudo * gap * kd_on
            at_y = at_y + w_pseudo * gap * q_y_ratio * kd_on
            quad = xp.concat([-w_pseudo * gap * dq_ratio * kd_on, zeros], axis=1)
    else:
        at_s_top = at_y = zeros
    sparse_map = xp.stack([
        xp.concat([zeros, at_t_top], axis=1),
        xp.concat([-at_y, -at_t_top], axis=1),
        xp.concat([at_s_top, zeros], axis=1),
    ], axis=2)
    return GradCoefficients(lin=lin, quad=quad, sparse_map=sparse_map, at_target=-w_ce)
