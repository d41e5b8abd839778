"""Fused NumPy SLD: loss terms and the closed-form gradient of :func:`sld_core.sld_loss_and_grad`.

With numba installed (and ``SLD_KERNELS`` not off) both go through the single-pass CPU kernel
(:mod:`backends.cpu_kernel`), which the torch CPU path shares. Without it, the eager fallback below:
rows go through in cache-sized chunks; per chunk one ``(rows, 2, K, C)`` buffer holds ``exp(u/T)`` for
student and teacher at every temperature, written in place with ``out=`` and reused by every chunk,
and the per-row algebra is :mod:`backends._rows`. float32 input stays float32 end to end; the caller's
arrays are never written.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as xp_numpy
import numpy as np

import sld_core

from ._checks import check_epoch, check_structure
from ._rows import grad_coefficients, row_constants, row_losses
from ._select import cpu_kernel_module, num_threads

__all__ = ["sld_loss_and_grad_numpy", "sld_loss_numpy"]

# Elements of the per-chunk exponential buffer: 2**20 float32 = 4 MiB, an L2/L3-sized block.
CHUNK_ELEMENTS = 1 << 20
_DEFAULT_CONFIG = sld_core.SLDConfig()  # frozen: one shared instance saves building it per call


def _fused_eager(s: np.ndarray, t: np.ndarray, targets: np.ndarray, config: sld_core.SLDConfig,
                 pseudo_on: bool, want_grad: bool) -> tuple[list[Any], np.ndarray | None]:
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


def _check_eager(s: np.ndarray, t: np.ndarray, targets: np.ndarray) -> None:
    """The value checks of :func:`sld_core.validate_inputs`, for the eager path (host arrays: no sync)."""
    sld_core.validation.raise_for_values(
        nonfinite={"student_logits": not np.isfinite(s).all(), "teacher_logits": not np.isfinite(t).all()},
        bad_labels=bool(targets.min() < 0 or targets.max() >= s.shape[1]), targets=targets,
        num_classes=s.shape[1], xp=np)


def _terms(student_logits: np.ndarray, teacher_logits: np.ndarray, targets: np.ndarray, epoch: Any,
           config: sld_core.SLDConfig | None, check_targets: bool,
           want_grad: bool) -> tuple[sld_core.LossTerms, np.ndarray | None]:
    config = _DEFAULT_CONFIG if config is None else config
    check_epoch(epoch)
    kernel = cpu_kernel_module()
    if kernel is not None:  # the kernel reports the values from its own pass; the layout check is remembered
        check_structure(student_logits, teacher_logits, targets)
    else:
        sld_core.validate_inputs(student_logits, teacher_logits, targets, check_targets=False)
    dtype = np.float64 if student_logits.dtype == np.float64 else np.float32
    s = np.asarray(student_logits, dtype=dtype)  # no copy when already the compute dtype; never written
    t = np.asarray(teacher_logits, dtype=dtype)
    y = np.asarray(targets)
    pseudo_on = config.pseudo_teacher and sld_core.pseudo_teacher_active(epoch, config.gamma)
    if kernel is not None:
        s, t = np.ascontiguousarray(s), np.ascontiguousarray(t)
        grad = np.empty_like(s) if want_grad else None
        weights = (config.ce_weight, config.kd_weight, config.kd_weight)
        y64 = y if y.dtype == np.int64 and y.flags.c_contiguous else np.ascontiguousarray(y, dtype=np.int64)
        sums = kernel.fused_sums(s, t, y64, config, pseudo_on, weights, grad, num_threads())
        if check_targets and (sums[4] or sums[5] or sums[6]):
            sld_core.validation.raise_for_counts(sums[4:], targets=y, num_classes=s.shape[1], xp=np)
        total, ce, teacher, pseudo = sums[:4].astype(dtype)
    else:
        if check_targets:
            _check_eager(s, t, y)
        y = np.clip(y.astype(np.int64, copy=False), 0, s.shape[1] - 1)  # unchecked labels: clamped
        (ce, teacher, pseudo), grad = _fused_eager(s, t, y, config, pseudo_on, want_grad=want_grad)
        total = config.ce_weight * ce + config.kd_weight * (teacher + pseudo)
    terms = sld_core.LossTerms(total=total, ce=ce, teacher=teacher, pseudo=pseudo)
    return terms, None if grad is None else grad.astype(student_logits.dtype, copy=False)


def sld_loss_numpy(student_logits: np.ndarray, teacher_logits: np.ndarray, targets: np.ndarray, *,
                   epoch: Any, config: sld_core.SLDConfig | None = None,
                   check_targets: bool = True) -> sld_core.LossTerms:
    """:func:`sld_core.sld_loss` for NumPy arrays on the fused path (no gradient computed).

    Examples
    --------
    >>> s = np.array([[2.0, 1.0, 0.0]]); t = np.array([[0.0, 3.0, 1.0]]); y = np.array([0])
    >>> round(float(sld_loss_numpy(s, t, y, epoch=1).total), 4)
    1.8387
    """
    return _terms(student_logits, teacher_logits, targets, epoch, config, check_targets, want_grad=False)[0]


def sld_loss_and_grad_numpy(student_logits: np.ndarray, teacher_logits: np.ndarray, targets: np.ndarray, *,
                            epoch: Any, config: sld_core.SLDConfig | None = None,
                            check_targets: bool = True) -> tuple[sld_core.LossTerms, np.ndarray]:
    """:func:`sld_core.sld_loss_and_grad` for NumPy arrays, fused (same arguments, same results).

    Parameters
    ----------
    student_logits, teacher_logits : np.ndarray, shape (B, C)
        float16 is computed in float32; float32 stays float32; float64 stays float64.
    targets : np.ndarray, shape (B,), integer labels (any integer dtype)
    epoch, config, check_targets
        As in :func:`sld_core.sld_loss` (with ``check_targets`` the kernel reports non-finite logits
        and bad labels from its own pass: no second pass over the data).

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
    return _terms(student_logits, teacher_logits, targets, epoch, config, check_targets, want_grad=True)
