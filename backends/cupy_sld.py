"""Fused CuPy SLD: one CUDA block per row computes every loss term at every temperature and the
closed-form gradient, in two passes over the row (max/argmax, then the sums; then the gradient).

The per-row algebra is that of :mod:`backends._rows` (the docstring there derives it), transcribed
to CUDA C; it is one of the copies listed in :mod:`backends`, pinned by the GPU tests of
``tests/test_backends.py`` (skipped without a device). The temperatures are compiled in as
constants, so each distinct ``config.temperatures`` (and dtype) compiles one kernel, once. Per row the
kernel writes the four loss terms already divided by ``B`` and three flags (non-finite student /
teacher logits, label out of range); one column sum gives the results, so a call is one launch plus
one reduction, and the value check one read of that 8-vector. Labels are clamped into ``[0, C)``
before any read; NaN rows keep the seeded argmax (column 0): nothing is indexed out of bounds.
CuPy is imported only when this module is used.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import sld_core

__all__ = ["kernel_available", "kernel_source", "sld_loss_and_grad_cupy"]

BLOCK = 256  # threads per row; a power of two (the tree reductions below assume it)

_SOURCE = r"""
#define BLOCK @BLOCK@
#define NUM_T @NUM_T@
#define CE_INDEX @CE_INDEX@
typedef @REAL@ real;
__device__ const real TEMPS[NUM_T] = {@TEMPS@};
__device__ const real KD_ON[NUM_T] = {@KD_ON@};  // 1 where T is in the KD sum (0: T=1 kept for CE)

// Largest value and its first index over the block (ties go to the smaller index, like argmax).
__device__ void block_argmax(real v, int i, real* sv, int* si, real* out_v, int* out_i) {
    const int tid = threadIdx.x;
    sv[tid] = v; si[tid] = i;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            const real ov = sv[tid + stride]; const int oi = si[tid + stride];
            if (ov > sv[tid] || (ov == sv[tid] && oi < si[tid])) { sv[tid] = ov; si[tid] = oi; }
        }
        __syncthreads();
    }
    *out_v = sv[0]; *out_i = si[0];
    __syncthreads();  // sv/si are reused by the next reduction
}

__device__ real block_sum(real v, real* sv) {
    const int tid = threadIdx.x;
    sv[tid] = v;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (tid < stride) sv[tid] += sv[tid + stride];
        __syncthreads();
    }
    const real out = sv[0];
    __syncthreads();
    return out;
}

extern "C" __global__ void sld_rows(
    const real* __restrict__ s, const real* __restrict__ t, const long long* __restrict__ y,
    const int num_classes, const int teacher_swap, const int pseudo_on, const int detach_pseudo,
    const real w_ce, const real w_teacher, const real w_pseudo,  // already divided by the batch size
    const real ce_weight, const real kd_weight, const real inv_batch,
    real* __restrict__ row_out, real* __restrict__ grad)          // (B, 8) and (B, C)
{
    __shared__ real sv[BLOCK];
    __shared__ int si[BLOCK];
    const int tid = threadIdx.x;
    const long long row = blockIdx.x;
    const real* sr = s + row * num_classes;
    const real* tr = t + row * num_classes;
    const long long raw_label = y[row];
    const int bad_label = raw_label < 0 || raw_label >= num_classes;
    // clamped: even unchecked labels never index out of bounds
    const int label = raw_label < 0 ? 0 : (raw_label >= num_classes ? num_classes - 1 : (int)raw_label);

    // Pass 1a: row maxima and first argmax of student and teacher, and a non-finite probe
    // (x * 0 is NaN iff x is NaN or inf).
    real v_s = sr[0], v_t = tr[0];  // seeding with column 0 keeps "first index" without needing -inf
    int i_s = 0, i_t = 0;
    real probe_s = 0, probe_t = 0;
    for (int c = tid; c < num_classes; c += BLOCK) {
        if (sr[c] > v_s) { v_s = sr[c]; i_s = c; }
        if (tr[c] > v_t) { v_t = tr[c]; i_t = c; }
        probe_s += sr[c] * (real)0;
        probe_t += tr[c] * (real)0;
    }
    real s_max, t_max; int s_top, t_top;
    block_argmax(v_s, i_s, sv, si, &s_max, &s_top);
    block_argmax(v_t, i_t, sv, si, &t_max, &t_top);
    probe_s = block_sum(probe_s, sv);
    probe_t = block_sum(probe_t, sv);

    // Pass 1b: partition functions and the teacher cross term, all temperatures at once.
    real z_s[NUM_T], z_t[NUM_T], cross[NUM_T];
    for (int k = 0; k < NUM_T; ++k) { z_s[k] = 0; z_t[k] = 0; cross[k] = 0; }
    for (int c = tid; c < num_classes; c += BLOCK) {
        const real u_s = sr[c] - s_max, u_t = tr[c] - t_max;
        for (int k = 0; k < NUM_T; ++k) {
            const real e_s = exp(u_s / TEMPS[k]), e_t = exp(u_t / TEMPS[k]);
            z_s[k] += e_s; z_t[k] += e_t; cross[k] += e_t * (u_t - u_s);
        }
    }
    for (int k = 0; k < NUM_T; ++k) {
        z_s[k] = block_sum(z_s[k], sv); z_t[k] = block_sum(z_t[k], sv); cross[k] = block_sum(cross[k], sv);
    }

    // Per-row terms and gradient coefficients (every thread computes them: no extra sync needed).
    const real gap = s_max - sr[label];             // d = s_m - s_y >= 0
    const real teacher_gap = tr[label] - t_max;     // <= 0
    const real swap_gap = sr[t_top] - sr[label];
    real ce = 0, teacher = 0, pseudo = 0;
    real coef_s[NUM_T], coef_t[NUM_T];
    real at_t_top = 0, at_target = -w_ce, at_s_top = 0;
    for (int k = 0; k < NUM_T; ++k) {
        const real T = TEMPS[k], kd = KD_ON[k];
        const real q_top = 1 / z_s[k];
        real kl = cross[k] / (T * z_t[k]) + log(z_s[k]) - log(z_t[k]);
        if (teacher_swap) {
            const real dp = (1 - exp(teacher_gap / T)) / z_t[k];  // p_t[m_t] - p_t[y]
            kl += dp * swap_gap / T;
            at_t_top += w_teacher * kd * T * dp;
            at_target -= w_teacher * kd * T * dp;
        }
        const real q_y = exp(-gap / T) * q_top;
        const real dq = q_top - q_y;
        teacher += kd * T * T * kl;
        if (k == CE_INDEX) ce = log(z_s[k]) + gap;
        coef_s[k] = (w_teacher * kd * T + (k == CE_INDEX ? w_ce : 0)) * q_top;
        coef_t[k] = -w_teacher * kd * T / z_t[k];
        if (pseudo_on) {
            pseudo += kd * T * dq * gap;
            at_s_top += w_pseudo * kd * T * dq;
            at_target -= w_pseudo * kd * T * dq;
            if (!detach_pseudo) {
                coef_s[k] -= w_pseudo * kd * gap * dq * q_top;
                at_s_top += w_pseudo * kd * gap * q_top;
                at_target -= w_pseudo * kd * gap * q_y;
            }
        }
    }
    if (tid == 0) {
        real* out = row_out + row * 8;
        out[0] = (ce_weight * ce + kd_weight * (teacher + pseudo)) * inv_batch;
        out[1] = ce * inv_batch;
        out[2] = teacher * inv_batch;
        out[3] = pseudo * inv_batch;
        out[4] = probe_s != 0;
        out[5] = probe_t != 0;
        out[6] = bad_label;
        out[7] = 0;
    }

    // Pass 2: the gradient, recomputing the exponentials instead of storing 2K of them per class.
    real* gr = grad + row * num_classes;
    for (int c = tid; c < num_classes; c += BLOCK) {
        const real u_s = sr[c] - s_max, u_t = tr[c] - t_max;
        real g = 0;
        for (int k = 0; k < NUM_T; ++k)
            g += coef_s[k] * exp(u_s / TEMPS[k]) + coef_t[k] * exp(u_t / TEMPS[k]);
        if (c == t_top) g += at_t_top;
        if (c == label) g += at_target;
        if (c == s_top) g += at_s_top;
        gr[c] = g;
    }
}
"""


def kernel_source(temperatures: tuple[float, ...], real: str) -> tuple[str, tuple[float, ...]]:
    """The CUDA source for one config's temperatures and ``real`` (``"float"`` or ``"double"``), and
    the temperatures in kernel order (temperature 1 appended, KD weight 0, if absent)."""
    temps = [float(t) for t in temperatures]
    kd_on = [1.0] * len(temps)
    if 1.0 not in temps:
        temps.append(1.0)
        kd_on.append(0.0)
    source = (
        _SOURCE.replace("@BLOCK@", str(BLOCK))
        .replace("@NUM_T@", str(len(temps)))
        .replace("@CE_INDEX@", str(temps.index(1.0)))
        .replace("@REAL@", real)
        .replace("@TEMPS@", ", ".join(repr(t) for t in temps))
        .replace("@KD_ON@", ", ".join(repr(k) for k in kd_on))
    )
    return source, tuple(temps)


@functools.lru_cache(maxsize=1)
def kernel_available() -> tuple[bool, str]:
    """``(True, "")`` when the kernel can run here: a CUDA device and NVRTC to compile it (the
    ``cupy-cuda12x`` wheel does not ship NVRTC; a CUDA toolkit or ``nvidia-cuda-nvrtc-cu12`` does).
    Otherwise ``(False, reason)``."""
    try:
        import cupy
    except ImportError as exc:
        return False, f"cupy is not installed ({exc})"
    if not cupy.cuda.is_available():
        return False, "cupy.cuda.is_available() is False (no CUDA device)"
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - CuPy raises a loader-specific error type
        return False, f"NVRTC cannot be loaded, so the kernel cannot compile ({exc})"
    return True, ""


@functools.lru_cache(maxsize=16)
def _kernel(temperatures: tuple[float, ...], real: str) -> Any:
    import cupy

    source, _ = kernel_source(temperatures, real)
    return cupy.RawKernel(source, "sld_rows")


@functools.lru_cache(maxsize=64)
def _launch_args(config: sld_core.SLDConfig, pseudo_on: bool, batch: int, num_classes: int,
                 real: str) -> tuple[tuple[int], tuple[int], tuple[Any, ...]]:
    """Grid, block and the scalar kernel arguments of one configuration, built once: converting them
    per call costs more host time than the launch itself."""
    scalar = np.float64 if real == "double" else np.float32
    w_ce, w_kd = config.ce_weight / batch, config.kd_weight / batch
    scalars = (np.int32(num_classes), np.int32(config.teacher_swap), np.int32(pseudo_on),
               np.int32(config.detach_pseudo_teacher), scalar(w_ce), scalar(w_kd), scalar(w_kd),
               scalar(config.ce_weight), scalar(config.kd_weight), scalar(1.0 / batch))
    return (batch,), (BLOCK,), scalars


def sld_loss_and_grad_cupy(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: Any,
                           config: sld_core.SLDConfig | None = None,
                           check_targets: bool = True) -> tuple[sld_core.LossTerms, Any]:
    """:func:`sld_core.sld_loss_and_grad` for CuPy arrays, as one fused kernel launch (plus a
    ``(B, 8)`` column sum). Same arguments and results; ``check_targets=False`` makes it sync-free
    (labels are then clamped into ``[0, C)``).

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> s, t = cupy.random.randn(8, 100), cupy.random.randn(8, 100)  # doctest: +SKIP
    >>> terms, grad = sld_loss_and_grad_cupy(s, t, cupy.arange(8), epoch=1)  # doctest: +SKIP
    """
    import cupy

    config = sld_core.SLDConfig() if config is None else config
    sld_core.validate_epoch(epoch)
    sld_core.validate_inputs(student_logits, teacher_logits, targets, check_targets=False)
    dtype = cupy.float64 if student_logits.dtype == cupy.float64 else cupy.float32
    real = "double" if dtype == cupy.float64 else "float"
    s = cupy.ascontiguousarray(student_logits, dtype=dtype)  # no-ops for contiguous compute-dtype input
    t = cupy.ascontiguousarray(teacher_logits, dtype=dtype)
    y = cupy.ascontiguousarray(targets, dtype=cupy.int64)
    batch, num_classes = s.shape
    pseudo_on = config.pseudo_teacher and sld_core.pseudo_teacher_active(epoch, config.gamma)
    grid, block, scalars = _launch_args(config, pseudo_on, batch, num_classes, real)
    row_out = cupy.empty((batch, 8), dtype=dtype)
    grad = cupy.empty((batch, num_classes), dtype=dtype)
    with s.device:
        _kernel(tuple(config.temperatures), real)(grid, block, (s, t, y, *scalars, row_out, grad))
    sums = row_out.sum(axis=0)
    if check_targets:  # one read of eight numbers: the only sync of a checked call
        sld_core.validation.raise_for_counts(sums[4:7].get(), targets=targets, num_classes=num_classes,
                                             xp=cupy)
    terms = sld_core.LossTerms(total=sums[0], ce=sums[1], teacher=sums[2], pseudo=sums[3])
    return terms, grad.astype(student_logits.dtype, copy=False)
