"""Fused NumPy SLD: loss terms and the closed-form gradient of :func:`sld_core.sld_loss_and_grad`
in one vectorised pass over all temperatures.

Same plan as :mod:`backends.torch_sld` (the per-row algebra is shared, :mod:`backends._rows`): rows
go through in cache-sized chunks; per chunk one ``(rows, 2, K, C)`` buffer holds ``exp(u/T)`` for
student and teacher at every temperature, written in place with ``out=`` and reused by every chunk.
float32 input stays float32 end to end; the caller's arrays are never written.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as xp_numpy
import numpy as np

import sld_core

from ._rows import grad_coefficients, row_constants, row_losses

__all__ = ["sld_loss_and_grad_numpy"]

# Elements of the per-chunk exponential buffer: 2**20 float32 = 4 MiB, an L2/L3-sized block.
CHUNK_ELEMENTS = 1 << 20


def _fused(s: np.ndarray, t: np.ndarray, targets: np.ndarray, config: sld_core.SLDConfig, pseudo_on: bool,
           want_grad: bool) -> tuple[list[Any], np.ndarray | None]:
    batch, num_classes = s.shape
    consts = row_constants(config.temperatures, xp=xp_numpy, dtype=s.dtype, device="cpu")
    num_t = consts.temperatures.shape[0]
    step = max(1, min(batch, CHUNK_ELEMENTS // (2 * num_t * num_classes)))
    exps_buffer = np.empty((step, 2, num_t, num_classes), dtype=s.dtype)
    shifted_buffer = np.empty((step, 2, num_classes), dtype=s.dtype)
    inv_t = consts.inv_t.reshape(1, 1, num_t, 1)
    roots = consts.num_roots
    weights = (config.ce_weight, config.kd_weight, config.kd_weight) if want_grad else None
    grad = np.empty_like(s) if want_grad else None
    totals = [0.0, 0.0, 0.0]
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        rows = stop - start
        y = targets[start:stop]
        shifted = shifted_buffer[:rows]
        shifted[:, 0] = s[start:stop]
        shifted[:, 1] = t[start:stop]
        top_index = shifted.argmax(axis=2)  # (rows, 2), first index on ties
        top = np.take_along_axis(shifted, top_index[:, :, None], axis=2)  # (rows, 2, 1)
        s_y = np.take_along_axis(s[start:stop], y[:, None], axis=1)
        t_y = np.take_along_axis(t[start:stop], y[:, None], axis=1)
        s_at_t_top = np.take_along_axis(s[start:stop], top_index[:, 1:], axis=1)
        shifted -= top
        exps = exps_buffer[:rows]
        np.multiply(shifted[:, :, None, :], inv_t[:, :, :roots], out=exps[:, :, :roots])
        np.exp(exps[:, :, :roots], out=exps[:, :, :roots])  # exps[:, 0, k] = exp(u_s / T_k), [:, 1] u_t
        for dst, src in consts.squares:
            np.multiply(exps[:, :, src], exps[:, :, src], out=exps[:, :, dst])
        partition = exps.sum(axis=3)
        shifted[:, 1] -= shifted[:, 0]  # u_t - u_s
        cross = np.matmul(exps[:, 1], shifted[:, 1, :, None])[:, :, 0]
        gap, teacher_gap = top[:, 0] - s_y, t_y - top[:, 1]
        sums = row_losses(partition, cross, gap, teacher_gap, s_at_t_top - s_y, consts, xp=xp_numpy,
                          teacher_swap=config.teacher_swap, pseudo_on=pseudo_on)
        totals = [a + b for a, b in zip(totals, sums)]
        if want_grad:
            co = grad_coefficients(gap, teacher_gap, consts, xp=xp_numpy, teacher_swap=config.teacher_swap,
                                   pseudo_on=pseudo_on, detach_pseudo=config.detach_pseudo_teacher,
                                   weights=weights, batch=batch)
            r = 1.0 / partition.reshape(rows, 2 * num_t)
            coef = r * co.lin if co.quad is None else r * (co.lin + co.quad * r)
            grad_rows = grad[start:stop]
            np.matmul(coef[:, None, :], exps.reshape(rows, 2 * num_t, num_classes), out=grad_rows[:, None, :])
            sparse = np.matmul(r[:, None, :], co.sparse_map)[:, 0]
            sparse[:, 1] += co.at_target
            positions = np.stack([top_index[:, 1], y, top_index[:, 0]], axis=1)
            # ufunc.at accumulates when two of the three positions coincide (e.g. m_t == y)
            np.add.at(grad_rows, (np.arange(rows)[:, None], positions), sparse)
    return [np.asarray(x / batch, dtype=s.dtype)[()] for x in totals], grad


def sld_loss_and_grad_numpy(student_logits: np.ndarray, teacher_logits: np.ndarray, targets: np.ndarray, *,
                            epoch: int, config: sld_core.SLDConfig | None = None,
                            check_targets: bool = True) -> tuple[sld_core.LossTerms, np.ndarray]:
    """:func:`sld_core.sld_loss_and_grad` for NumPy arrays, fused (same arguments, same results).

    Parameters
    ----------
    student_logits, teacher_logits : np.ndarray, shape (B, C)
        float16 is computed in float32; float32 stays float32; float64 stays float64.
    targets : np.ndarray, shape (B,), integer labels
    epoch, config, check_targets
        As in :func:`sld_core.sld_loss`.

    Returns
    -------
    (LossTerms, grad)
        NumPy scalars of the compute dtype, and ``d total / d student_logits`` in the input dtype.

    Examples
    --------
    >>> s = np.array([[2.0, 1.0, 0.0]]); t = np.array([[0.0, 3.0, 1.0]]); y = np.array([0])
    >>> terms, grad = sld_loss_and_grad_numpy(s, t, y, epoch=1)
    >>> round(float(terms.total), 4), grad.shape
    (1.8387, (1, 3))
    """
    config = sld_core.SLDConfig() if config is None else config
    sld_core.validate_inputs(student_logits, teacher_logits, targets, check_targets=check_targets)
    dtype = np.float64 if student_logits.dtype == np.float64 else np.float32
    s = np.asarray(student_logits, dtype=dtype)  # no copy when already the compute dtype; never written
    t = np.asarray(teacher_logits, dtype=dtype)
    pseudo_on = config.pseudo_teacher and sld_core.pseudo_teacher_active(epoch, config.gamma)
    (ce, teacher, pseudo), grad = _fused(s, t, np.asarray(targets), config, pseudo_on, want_grad=True)
    total = config.ce_weight * ce + config.kd_weight * (teacher + pseudo)
    terms = sld_core.LossTerms(total=total, ce=ce, teacher=teacher, pseudo=pseudo)
    return terms, grad.astype(student_logits.dtype, copy=False)
