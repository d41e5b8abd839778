r"""The SLD loss and its gradient on CUDA as one Triton kernel launch (plus one column sum).

Each program takes ``ROWS`` rows and walks their columns in tiles of ``BLOCK_C``, three times:
(1) row maxima, first argmax and a non-finite probe; (2) ``exp(u/T)`` for every temperature at once
(a ``(ROWS, K, BLOCK_C)`` tile), the row sums ``Z`` and the teacher cross term; then the per-row
algebra of :mod:`backends._rows` (losses and gradient coefficients, on ``(ROWS, K)`` tiles);
(3) the gradient, recomputing the exponentials rather than storing ``2K`` of them per logit. The rows
after the first pass come from L2. Per row the kernel writes the four loss terms (already divided by
``B``) and three flags (non-finite student, non-finite teacher, label out of range); one
``sum(dim=0)`` turns them into the batch means and the bad-row counts, so the value check costs one
read of eight numbers, and nothing when ``check_targets=False``.

This is one of the copies of the per-row algebra listed in :mod:`backends`; ``tests/test_kernels.py``
runs it under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) against the float64 core.
Labels are clamped into ``[0, C)`` and NaN rows fall back to column indices in range, so no load or
store leaves the arrays whatever the input.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

import sld_core
from sld_core.validation import raise_for_counts

from ._rows import row_constants
from .torch_small import xp_torch

__all__ = ["OUT_COLUMNS", "fused", "launch_config"]

OUT_COLUMNS = 8  # total, ce, teacher, pseudo (each / B), bad student row, bad teacher row, bad label, 0
# Elements of one (ROWS, K, BLOCK_C) exponential tile: 32 registers per thread at 4 warps.
TILE_ELEMENTS = 4096


@triton.jit
def _sld_rows(s_ptr, t_ptr, y_ptr, grad_ptr, out_ptr, temps_ptr, kd_ptr, w_ptr,
              batch, num_classes, stride_s, stride_t, stride_g,
              NUM_T: tl.constexpr, KP: tl.constexpr, CE_INDEX: tl.constexpr,
              TEACHER_SWAP: tl.constexpr, PSEUDO_ON: tl.constexpr, DETACH: tl.constexpr,
              WANT_GRAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < batch
    rows = tl.where(row_ok, rows, 0).to(tl.int64)  # padding rows compute row 0 again and store nothing
    ks = tl.arange(0, KP)
    k_ok = ks < NUM_T
    temps = tl.load(temps_ptr + ks, mask=k_ok, other=1.0)  # padding temperatures: weight 0 below
    kd = tl.load(kd_ptr + ks, mask=k_ok, other=0.0)
    inv_t = 1.0 / temps
    w_ce = tl.load(w_ptr + 0)  # weights already divided by the batch size
    w_teacher = tl.load(w_ptr + 1)
    w_pseudo = tl.load(w_ptr + 2)
    ce_weight = tl.load(w_ptr + 3)
    kd_weight = tl.load(w_ptr + 4)
    inv_batch = tl.load(w_ptr + 5)
    cols0 = tl.arange(0, BLOCK_C)
    s_row = s_ptr + rows[:, None] * stride_s
    t_row = t_ptr + rows[:, None] * stride_t
    zero_rows = tl.zeros([ROWS], dtype=s_ptr.dtype.element_ty)

    # pass 1: maxima, first argmax (ties to the smaller index), non-finite probe (x * 0 is NaN iff
    # x is NaN or inf)
    s_max = zero_rows - float("inf")
    t_max = zero_rows - float("inf")
    s_top = tl.zeros([ROWS], dtype=tl.int32) + num_classes
    t_top = tl.zeros([ROWS], dtype=tl.int32) + num_classes
    probe_s = zero_rows
    probe_t = zero_rows
    for start in range(0, num_classes, BLOCK_C):
        cols = start + cols0
        mask = (cols[None, :] < num_classes) & (rows[:, None] >= 0)  # (ROWS, BLOCK_C)
        x_s = tl.load(s_row + cols[None, :], mask=mask, other=-float("inf"))
        x_t = tl.load(t_row + cols[None, :], mask=mask, other=-float("inf"))
        probe_s += tl.sum(tl.where(mask, x_s * 0.0, 0.0), axis=1)
        probe_t += tl.sum(tl.where(mask, x_t * 0.0, 0.0), axis=1)
        tile_s = tl.max(x_s, axis=1)
        tile_t = tl.max(x_t, axis=1)
        arg_s = tl.min(tl.where(x_s == tile_s[:, None], cols[None, :], num_classes), axis=1)
        arg_t = tl.min(tl.where(x_t == tile_t[:, None], cols[None, :], num_classes), axis=1)
        s_top = tl.where(tile_s > s_max, arg_s, s_top)  # strictly greater: an earlier tile keeps ties
        t_top = tl.where(tile_t > t_max, arg_t, t_top)
        s_max = tl.maximum(s_max, tile_s)
        t_max = tl.maximum(t_max, tile_t)
    s_top = tl.minimum(tl.maximum(s_top, 0), num_classes - 1)  # NaN rows match no column
    t_top = tl.minimum(tl.maximum(t_top, 0), num_classes - 1)
    label = tl.load(y_ptr + rows).to(tl.int64)
    bad_label = (label < 0) | (label >= num_classes)
    label = tl.minimum(tl.maximum(label, 0), num_classes - 1).to(tl.int32)

    # pass 2: partition functions and the teacher cross term at every temperature
    z_s = tl.zeros([ROWS, KP], dtype=s_ptr.dtype.element_ty)
    z_t = tl.zeros([ROWS, KP], dtype=s_ptr.dtype.element_ty)
    cross = tl.zeros([ROWS, KP], dtype=s_ptr.dtype.element_ty)
    for start in range(0, num_classes, BLOCK_C):
        cols = start + cols0
        mask = (cols[None, :] < num_classes) & (rows[:, None] >= 0)
        u_s = tl.load(s_row + cols[None, :], mask=mask, other=0.0) - s_max[:, None]
        u_t = tl.load(t_row + cols[None, :], mask=mask, other=0.0) - t_max[:, None]
        e_s = tl.where(mask[:, None, :], tl.exp(u_s[:, None, :] * inv_t[None, :, None]), 0.0)
        e_t = tl.where(mask[:, None, :], tl.exp(u_t[:, None, :] * inv_t[None, :, None]), 0.0)
        z_s += tl.sum(e_s, axis=2)
        z_t += tl.sum(e_t, axis=2)
        cross += tl.sum(e_t * (u_t - u_s)[:, None, :], axis=2)

    # per-row algebra (backends._rows): (ROWS, KP) tiles, reduced over the temperatures
    s_y = tl.load(s_ptr + rows * stride_s + label)
    t_y = tl.load(t_ptr + rows * stride_t + label)
    s_at_t_top = tl.load(s_ptr + rows * stride_s + t_top)
    gap = s_max - s_y  # d = s_m - s_y >= 0
    teacher_gap = t_y - t_max  # <= 0
    swap_gap = s_at_t_top - s_y
    log_zs = tl.log(z_s)
    kl = cross / (temps[None, :] * z_t) + log_zs - tl.log(z_t)
    at_t_top = zero_rows
    at_target = zero_rows - w_ce
    at_s_top = zero_rows
    if TEACHER_SWAP:
        dp = (1.0 - tl.exp(teacher_gap[:, None] * inv_t[None, :])) / z_t  # p_t[m_t] - p_t[y]
        kl += dp * swap_gap[:, None] * inv_t[None, :]
        at_t_top += tl.sum(w_teacher * kd[None, :] * temps[None, :] * dp, axis=1)
        at_target -= tl.sum(w_teacher * kd[None, :] * temps[None, :] * dp, axis=1)
    teacher = tl.sum(kd[None, :] * temps[None, :] * temps[None, :] * kl, axis=1)
    is_ce = (ks == CE_INDEX)[None, :]
    ce = tl.sum(tl.where(is_ce, log_zs, 0.0), axis=1) + gap
    q_top = 1.0 / z_s
    coef_s = (w_teacher * kd[None, :] * temps[None, :] + tl.where(is_ce, w_ce, 0.0)) * q_top
    coef_t = -w_teacher * kd[None, :] * temps[None, :] / z_t
    pseudo = zero_rows
    if PSEUDO_ON:
        q_y = tl.exp(-gap[:, None] * inv_t[None, :]) * q_top
        dq = q_top - q_y
        pseudo = tl.sum(kd[None, :] * temps[None, :] * dq, axis=1) * gap
        at_s_top += tl.sum(w_pseudo * kd[None, :] * temps[None, :] * dq, axis=1)
        at_target -= tl.sum(w_pseudo * kd[None, :] * temps[None, :] * dq, axis=1)
        if not DETACH:  # the path through swap(s): d (q_m e_m - q_y e_y - dq q)
            coef_s -= w_pseudo * kd[None, :] * gap[:, None] * dq * q_top
            at_s_top += tl.sum(w_pseudo * kd[None, :] * q_top, axis=1) * gap
            at_target -= tl.sum(w_pseudo * kd[None, :] * q_y, axis=1) * gap
    total = ce_weight * ce + kd_weight * (teacher + pseudo)
    j = tl.arange(0, 8)[None, :]
    values = tl.where(j == 0, total[:, None], 0.0)
    values = tl.where(j == 1, ce[:, None], values)
    values = tl.where(j == 2, teacher[:, None], values)
    values = tl.where(j == 3, pseudo[:, None], values) * inv_batch
    values = tl.where(j == 4, (probe_s != 0)[:, None].to(values.dtype), values)
    values = tl.where(j == 5, (probe_t != 0)[:, None].to(values.dtype), values)
    values = tl.where(j == 6, bad_label[:, None].to(values.dtype), values)
    tl.store(out_ptr + rows[:, None] * 8 + j, values, mask=row_ok[:, None])

    # pass 3: the gradient
    if WANT_GRAD:
        g_row = grad_ptr + rows[:, None] * stride_g
        for start in range(0, num_classes, BLOCK_C):
            cols = start + cols0
            mask = (cols[None, :] < num_classes) & (rows[:, None] >= 0)
            u_s = tl.load(s_row + cols[None, :], mask=mask, other=0.0) - s_max[:, None]
            u_t = tl.load(t_row + cols[None, :], mask=mask, other=0.0) - t_max[:, None]
            e_s = tl.exp(u_s[:, None, :] * inv_t[None, :, None])
            e_t = tl.exp(u_t[:, None, :] * inv_t[None, :, None])
            g = tl.sum(coef_s[:, :, None] * e_s + coef_t[:, :, None] * e_t, axis=1)
            g += tl.where(cols[None, :] == t_top[:, None], at_t_top[:, None], 0.0)
            g += tl.where(cols[None, :] == label[:, None], at_target[:, None], 0.0)
            g += tl.where(cols[None, :] == s_top[:, None], at_s_top[:, None], 0.0)
            tl.store(g_row + cols[None, :], g, mask=mask & row_ok[:, None])


def launch_config(num_classes: int, num_t: int) -> tuple[int, int, int]:
    """``(KP, ROWS, BLOCK_C)``: temperatures padded to a power of two, rows per program and the
    column tile, sized so one ``(ROWS, KP, BLOCK_C)`` tile is :data:`TILE_ELEMENTS`."""
    kp = triton.next_power_of_2(num_t)
    block_c = min(triton.next_power_of_2(num_classes), max(16, TILE_ELEMENTS // kp))
    rows = max(1, min(16, TILE_ELEMENTS // (kp * block_c)))
    return kp, rows, block_c


@functools.lru_cache(maxsize=64)
def _constants(temperatures: tuple[float, ...], dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    # cached: a host-to-device copy per call would cost more than the launch
    consts = row_constants(temperatures, xp=xp_torch, dtype=dtype, device=device)
    return consts.temperatures, consts.kd_on, consts.ce_index, consts.temperatures.shape[0]


@functools.lru_cache(maxsize=64)
def _weights(config: sld_core.SLDConfig, weights: tuple[float, float, float], batch: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
    w_ce, w_teacher, w_pseudo = (w / batch for w in weights)
    return torch.tensor([w_ce, w_teacher, w_pseudo, config.ce_weight, config.kd_weight, 1.0 / batch],
                        dtype=dtype, device=device)


def fused(s: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, config: sld_core.SLDConfig,
          pseudo_on: bool, weights: tuple[float, float, float] | None,
          check: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``((total, ce, teacher, pseudo), gradient or None)`` of ``s``, ``t`` (detached, compute dtype),
    the gradient being that of ``w_ce ce + w_teacher teacher + w_pseudo pseudo`` with numeric
    ``weights``. With ``check``, raises for non-finite logits or labels outside ``[0, C)`` (one sync)."""
    batch, num_classes = s.shape
    s = s if s.stride(1) == 1 else s.contiguous()
    t = t if t.stride(1) == 1 else t.contiguous()
    if targets.dtype not in (torch.int32, torch.int64):
        targets = targets.long()
    temps, kd_on, ce_index, num_t = _constants(config.temperatures, s.dtype, s.device)
    want_grad = weights is not None
    w = _weights(config, weights if want_grad else (0.0, 0.0, 0.0), batch, s.dtype, s.device)
    out = torch.empty(batch, OUT_COLUMNS, dtype=s.dtype, device=s.device)
    grad = torch.empty_like(s, memory_format=torch.contiguous_format) if want_grad else out
    kp, rows, block_c = launch_config(num_classes, num_t)
    _sld_rows[(triton.cdiv(batch, rows),)](
        s, t, targets, grad, out, temps, kd_on, w, batch, num_classes, s.stride(0), t.stride(0),
        grad.stride(0), NUM_T=num_t, KP=kp, CE_INDEX=ce_index, TEACHER_SWAP=config.teacher_swap,
        PSEUDO_ON=pseudo_on, DETACH=config.detach_pseudo_teacher, WANT_GRAD=want_grad, ROWS=rows,
        BLOCK_C=block_c, num_warps=4)
    sums = out.sum(dim=0)
    if check:
        raise_for_counts(sums[4:7].tolist(), targets=targets, num_classes=num_classes, xp=torch)
    return sums[:4], grad if want_grad else None
