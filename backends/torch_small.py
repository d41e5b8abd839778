r"""The small-problem path of the fused torch SLD (:func:`fused_small`): for ``B * C`` up to
``torch_sld.SMALL_ELEMENTS`` on CPU when the compiled kernel is absent (or bypassed), and up to
``torch_sld.CUDA_SMALL_ELEMENTS`` on CUDA when Triton is absent -- where each torch op costs more in
dispatch (~2-3 us on CPU, a kernel launch on CUDA) than in arithmetic.

All temperatures of student and teacher go through one softmax on a stacked ``(B, 2, K, C)`` tensor,
every per-row quantity the swaps need is read from it with one gather at ``(m_t, y, m)``, and the
per-row algebra of :mod:`backends._rows` is re-expressed as a few fixed linear maps
(:func:`small_maps`), so that a call applies each with one op. This is one of the copies of the
per-row algebra listed in :mod:`backends`; ``tests/test_backends.py`` (the ``torch_path="small"``
cases) and ``tests/test_kernels.py`` pin it against the float64 core and the plain references.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

import sld_core

from ._rows import row_constants

__all__ = ["constants", "fused_small", "xp_torch"]


class _TorchOps:
    """The few array-API functions :mod:`backends._rows` calls, bound straight to torch: the
    array_api_compat wrappers cost microseconds per call, which adds up at small batch sizes."""

    log = staticmethod(torch.log)
    exp = staticmethod(torch.exp)

    @staticmethod
    def sum(x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
        return x.sum() if axis is None else x.sum(dim=axis)

    @staticmethod
    def stack(arrays: list[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.stack(arrays, dim=axis)

    @staticmethod
    def concat(arrays: list[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.cat(arrays, dim=axis)

    @staticmethod
    def asarray(values: list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)


xp_torch = _TorchOps


@functools.lru_cache(maxsize=32)
def constants(temperatures: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Any:
    # cached: building them on CUDA is a host-to-device copy, which would sync every step
    return row_constants(temperatures, xp=xp_torch, dtype=dtype, device=device)


def _col(side: int, position: int, weighting: int) -> int:
    """Column of the ``(B, 12)`` block of probabilities at the swap positions that :func:`_fused_small`
    reads: ``side`` 0 student (q), 1 teacher (p); ``position`` 0 ``m_t``, 1 ``y``, 2 ``m``;
    ``weighting`` 0 ``sum_T T prob``, 1 ``sum_T prob`` (both over the KD temperatures)."""
    return side * 6 + position * 2 + weighting


@dataclass(frozen=True)
class _SmallMaps:
    """Constants of :func:`_fused_small` for one config: the per-row algebra of :mod:`backends._rows`
    written as a few fixed linear maps, so that a call applies each with one op."""

    consts: Any  # RowConstants
    inv_t: torch.Tensor  # (1, K, 1, 1)
    kd_cols: torch.Tensor  # (K, 2): T and 1 at the KD temperatures, 0 elsewhere
    # features -> (total, ce, teacher, pseudo) sums; features are cat(sum_rows sum_c p_T (u_t - u_s) (K),
    # sum_rows log Z (2K: student, teacher), G (24: [s[m_t] - s_y, d]^T @ block), sum_rows [s[m_t] - s_y, d])
    loss_map: torch.Tensor
    # per gradient weight (w_ce, w_teacher, w_pseudo), as (3, ...) stacks:
    dense: torch.Tensor  # (3, 2K): coefficients of q_T and p_T
    sparse: torch.Tensor  # (3, 12, 3): block -> values at (m_t, y, m)
    sparse_gap: torch.Tensor  # (3, 12, 3): d * block -> values at (m_t, y, m)
    sparse_const: torch.Tensor  # (3, 3)
    row_q: torch.Tensor | None  # (3, 2K): d (prob[m] - prob[y]) -> coefficient of prob (pseudo via swap(s))


@functools.lru_cache(maxsize=64)
def small_maps(config: sld_core.SLDConfig, pseudo_on: bool, dtype: torch.dtype,
                device: torch.device) -> _SmallMaps:
    consts = constants(config.temperatures, dtype, device)
    kd_t = [float(v) for v in consts.kd_t.cpu()]  # once per config (cached), so the copy never recurs
    kd_t2 = [float(v) for v in consts.kd_t2.cpu()]
    kd_on = [float(v) for v in consts.kd_on.cpu()]
    num_t, ce_i = len(kd_t), consts.ce_index
    swap, detach = config.teacher_swap, config.detach_pseudo_teacher
    lz, g, gsum = num_t, 3 * num_t, 3 * num_t + 24  # feature offsets
    ce = [0.0] * (gsum + 2)
    ce[lz + ce_i] = ce[gsum + 1] = 1.0  # ce = log Z_s(T=1) + d
    teacher = [0.0] * (gsum + 2)
    pseudo = [0.0] * (gsum + 2)
    for k in range(num_t):  # T^2 KL(p || q) = T sum p (u_t - u_s) + T^2 (log Z_s - log Z_t)
        teacher[k], teacher[lz + k], teacher[lz + num_t + k] = kd_t[k], kd_t2[k], -kd_t2[k]
    if swap:  # + T (p[m_t] - p[y]) (s[m_t] - s_y)
        teacher[g + _col(1, 0, 0)], teacher[g + _col(1, 1, 0)] = 1.0, -1.0
    if pseudo_on:  # T (q[m] - q[y]) d
        pseudo[g + 12 + _col(0, 2, 0)], pseudo[g + 12 + _col(0, 1, 0)] = 1.0, -1.0
    total = [config.ce_weight * c + config.kd_weight * (te + ps) for c, te, ps in zip(ce, teacher, pseudo)]

    dense = [[1.0 if k == ce_i else 0.0 for k in range(num_t)] + [0.0] * num_t,
             kd_t + [-v for v in kd_t], [0.0] * (2 * num_t)]
    sparse = [[[0.0] * 3 for _ in range(12)] for _ in range(3)]
    sparse_gap = [[[0.0] * 3 for _ in range(12)] for _ in range(3)]
    if swap:  # T (p - swap(p)): +T dp at m_t, -T dp at y
        for col, sign in ((_col(1, 0, 0), 1.0), (_col(1, 1, 0), -1.0)):
            sparse[1][col][0], sparse[1][col][1] = sign, -sign
    if pseudo_on:  # T (q - swap(q)): +T dq at m, -T dq at y
        for col, sign in ((_col(0, 2, 0), 1.0), (_col(0, 1, 0), -1.0)):
            sparse[2][col][2], sparse[2][col][1] = sign, -sign
        if not detach:  # through swap(s): d (q_m e_m - q_y e_y - dq q), summed over T
            sparse_gap[2][_col(0, 2, 1)][2], sparse_gap[2][_col(0, 1, 1)][1] = 1.0, -1.0

    def arr(values: Any) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    return _SmallMaps(
        consts=consts,
        inv_t=consts.inv_t.view(1, num_t, 1, 1),
        kd_cols=torch.stack([consts.kd_t, consts.kd_on], dim=1),
        loss_map=arr([total, ce, teacher, pseudo]),
        dense=arr(dense),
        sparse=arr(sparse),
        sparse_gap=arr(sparse_gap),
        sparse_const=arr([[0.0, -1.0, 0.0], [0.0] * 3, [0.0] * 3]),
        row_q=arr([[0.0] * 2 * num_t] * 2 + [[-v for v in kd_on] + [0.0] * num_t])
        if pseudo_on and not detach else None,
    )


def _weight_maps(maps: _SmallMaps, weights: tuple[Any, Any, Any], batch: int) -> tuple[torch.Tensor, ...]:
    """``(dense, sparse, sparse_gap, sparse_const, row_q)`` of :class:`_SmallMaps` contracted with the
    gradient weights, divided by ``batch``."""
    w = torch.stack([torch.as_tensor(x, dtype=maps.dense.dtype, device=maps.dense.device) for x in weights])
    w = w / batch
    return (w @ maps.dense, torch.tensordot(w, maps.sparse, 1), torch.tensordot(w, maps.sparse_gap, 1),
            w @ maps.sparse_const, None if maps.row_q is None else torch.tensordot(w, maps.row_q, 1))


@functools.lru_cache(maxsize=64)
def _cached_weight_maps(config: sld_core.SLDConfig, pseudo_on: bool, dtype: torch.dtype, device: torch.device,
                        weights: tuple[float, float, float], batch: int) -> tuple[torch.Tensor, ...]:
    return _weight_maps(small_maps(config, pseudo_on, dtype, device), weights, batch)


def fused_small(s: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, config: sld_core.SLDConfig,
                 pseudo_on: bool,
                 weights: tuple[Any, Any, Any] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``((total, ce, teacher, pseudo) batch means, gradient or None)`` as ``torch_sld``'s eager
    ``_fused`` returns them, in about 30 ops and one large temporary (fresh large allocations
    page-fault on every call). ``s``, ``t`` are already detached and in the compute dtype; ``targets``
    are int64 and in range."""
    batch, num_classes = s.shape
    maps = small_maps(config, pseudo_on, s.dtype, s.device)
    num_t = maps.inv_t.shape[1]
    x = torch.stack([s, t], dim=1)  # (B, 2, C)
    u = (x - x.amax(dim=2, keepdim=True)).unsqueeze(2)  # (B, 2, 1, C): u_s, u_t
    # softmax by hand (log_softmax + exp costs two passes more); exp, not exp2: faster on the Intel
    # CPU of RESULTS.md (the AMD one measured before preferred exp2)
    p = torch.mul(u, maps.inv_t.view(1, 1, num_t, 1)).exp_()
    z = p.sum(dim=3, keepdim=True)
    p = p.div_(z)  # [:, 0]: q_T, [:, 1]: p_T
    top = x.argmax(dim=2)  # (B, 2): m, m_t, first index on ties (one op beats _fused's eq/amax here)
    index = torch.stack([top[:, 1], targets, top[:, 0]], dim=1)  # (B, 3): m_t, y, m
    s_at = s.gather(1, index)
    at = p.gather(3, index.view(batch, 1, 1, 3).expand(batch, 2, num_t, 3))  # probabilities at m_t, y, m
    block = torch.matmul(at.transpose(2, 3), maps.kd_cols).view(batch, 12)  # see _col
    gaps = s_at[:, 0::2] - s_at[:, 1:2]  # (B, 2): s[m_t] - s_y, d = s_m - s_y
    diff = u[:, 1] - u[:, 0]  # (B, 1, C)
    features = torch.cat([
        torch.bmm(diff, p[:, 1].transpose(1, 2)).sum(dim=(0, 1)),  # sum_c p_T (u_t - u_s), summed over rows
        z.log().sum(dim=(0, 3)).flatten(),
        (gaps.T @ block).flatten(),
        gaps.sum(dim=0),
    ])
    losses = torch.mv(maps.loss_map, features) / batch  # total, ce, teacher, pseudo
    if weights is None:
        return losses, None

    if all(isinstance(w, (int, float)) for w in weights):
        dense, sparse, sparse_gap, sparse_const, row_q = _cached_weight_maps(
            config, pseudo_on, s.dtype, s.device, weights, batch)
    else:  # tensor weights from a per-term backward
        dense, sparse, sparse_gap, sparse_const, row_q = _weight_maps(maps, weights, batch)
    gap = gaps[:, 1:]
    coef = dense
    if row_q is not None:  # plus a per-row coefficient of q_T: d (q_T[m] - q_T[y]) row_q
        coef = torch.addcmul(dense, (at[..., 2] - at[..., 1]).view(batch, 2 * num_t), gap * row_q)
        coef = coef.unsqueeze(1)
    grad = torch.matmul(coef, p.view(batch, 2 * num_t, num_classes)).view(batch, num_classes)
    values = torch.addmm(sparse_const, block, sparse)
    if row_q is not None:
        values = torch.addcmul(values, gap, block @ sparse_gap)
    grad.scatter_add_(1, index, values)
    return losses, grad


