r"""Per-row algebra shared by the fused backends (torch, NumPy): once the ``(B, C)``-sized work has
reduced the logits to a few numbers per row and temperature, everything else is written here once,
in array-API words, for any namespace ``xp``.

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

__all__ = ["RowConstants", "row_constants", "row_terms"]

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)); exp2 is ~4x faster than exp in torch on CPU


@dataclass(frozen=True)
class RowConstants:
    """Per-temperature constants of one call, as ``(K,)`` arrays of the compute dtype and device.
    Temperature 1 is appended (KD weight 0) when the config lacks it: the cross-entropy needs its
    log-partition anyway."""

    temperatures: Any
    inv_t: Any  # 1/T
    neg_inv_t: Any  # -1/T
    exp2_scale: Any  # log2(e)/T, the multiplier in front of exp2
    kd_on: Any  # 1 where T is in the KD sum, else 0
    kd_t: Any  # T where T is in the KD sum, else 0 (gradient weight)
    kd_t2: Any  # T**2 where T is in the KD sum, else 0 (loss weight)
    ce_hot: Any  # 1 at the temperature-1 entry
    ce_index: int
    num_roots: int  # exp(u/T) of the first num_roots entries is computed with exp/exp2 ...
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
        exp2_scale=arr([LOG2E / t for t in temps]),
        kd_on=arr(in_kd),
        kd_t=arr([t * k for t, k in zip(temps, in_kd)]),
        kd_t2=arr([t * t * k for t, k in zip(temps, in_kd)]),
        ce_hot=arr([1.0 if i == ce_index else 0.0 for i in range(len(temps))]),
        ce_index=ce_index,
        num_roots=len(roots),
        squares=tuple((position[i], position[source[i]]) for i in derived),
    )


def row_terms(partition: Any, cross: Any, gap: Any, teacher_gap: Any, swap_gap: Any,
              consts: RowConstants, *, xp: Any, teacher_swap: bool, pseudo_on: bool, detach_pseudo: bool,
              weights: tuple[Any, Any, Any] | None, batch: int) -> tuple[list[Any], Any]:
    """Loss sums and gradient coefficients for a block of rows. Written for few array operations:
    on CPU each one costs microseconds of dispatch, and a call runs once per chunk of rows.

    Parameters
    ----------
    partition : (rows, 2, K)
        ``Z_s`` (``[:, 0]``) and ``Z_t`` (``[:, 1]``) per row and temperature.
    cross : (rows, K)
        ``sum exp(u_t/T) (u_t - u_s)``.
    gap, teacher_gap, swap_gap : (rows, 1)
        ``s_m - s_y``, ``t_y - t_max`` and ``s[m_t] - s_y``.
    weights : (w_ce, w_teacher, w_pseudo) or None
        Weights of the three terms in the differentiated total (0-d arrays allowed); None skips the
        gradient.

    Returns
    -------
    sums : [ce, teacher, pseudo] summed over the rows (0-d; ``pseudo`` is 0 when not ``pseudo_on``)
    grad : None, or ``(coef_s, coef_t, sparse)``: the ``(rows, K)`` coefficients of
        ``exp(u_s/T)``, ``exp(u_t/T)`` and the ``(rows, 3)`` values to add at ``(m_t, y, m)``,
        all already divided by ``batch``.
    """
    inv_t = consts.inv_t
    log_z = xp.log(partition)
    recip = 1.0 / partition
    q_top, recip_t = recip[:, 0], recip[:, 1]  # q_m = 1/Z_s; p_t[m_t] = 1/Z_t
    kl_teacher = cross * inv_t * recip_t + (log_z[:, 0] - log_z[:, 1])
    if teacher_swap:
        dp = (1.0 - xp.exp(teacher_gap * inv_t)) * recip_t  # p_t[m_t] - p_t[y]; 0 if the teacher is right
        kl_teacher = kl_teacher + dp * (swap_gap * inv_t)
    q_y = xp.exp(gap * consts.neg_inv_t) * q_top
    dq = q_top - q_y  # zero on rows the student already gets right
    ce = xp.sum(log_z[:, 0, consts.ce_index]) + xp.sum(gap)
    dq_t = dq * consts.kd_t  # T dq (0 for a temperature outside the KD sum)
    pseudo = xp.sum(dq_t * gap) if pseudo_on else ce * 0.0  # T^2 * (dq d / T)
    sums = [ce, xp.sum(kl_teacher * consts.kd_t2), pseudo]
    if weights is None:
        return sums, None

    w_ce, w_teacher, w_pseudo = (w / batch for w in weights)
    dense_s = w_teacher * consts.kd_t + w_ce * consts.ce_hot
    zeros = gap[:, 0] * 0.0
    at_t_top = w_teacher * xp.sum(dp * consts.kd_t, axis=1) if teacher_swap else zeros  # -T p: p swaps
    at_s_top = zeros
    at_target = -w_ce - at_t_top
    if pseudo_on:
        if detach_pseudo:  # T (q - swap(q)): T dq at m, -T dq at y
            at_s_top = w_pseudo * xp.sum(dq_t, axis=1)
            at_target = at_target - at_s_top
        else:  # plus the path through swap(s): d (q_m e_m - q_y e_y - dq q)
            dense_s = dense_s - (w_pseudo * gap) * dq * consts.kd_on
            at_s_top = w_pseudo * xp.sum(dq_t + gap * q_top * consts.kd_on, axis=1)
            at_target = at_target - w_pseudo * xp.sum(dq_t + gap * q_y * consts.kd_on, axis=1)
    coef_s = dense_s * q_top
    coef_t = recip_t * (-w_teacher * consts.kd_t)
    sparse = xp.stack([at_t_top, at_target, at_s_top], axis=1)
    return sums, (coef_s, coef_t, sparse)
