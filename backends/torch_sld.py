r"""Fused PyTorch SLD: every loss term, for every temperature, in one batched pass, with the
closed-form gradient of :func:`sld_core.sld_loss_and_grad` as the backward.

Why it is fast (numbers in ``benchmarks/RESULTS.md``): the naive formulation clones and swaps two
logit tensors and runs a log-softmax, a softmax and a KL per temperature and term, each a full pass
over ``(B, C)`` memory, then autograd replays all of it backwards. Here the swaps never materialise
(the algebra is in :mod:`backends._rows`), all temperatures are stacked on one axis, and the only
``(B, C)``-sized work is: the row maxima and first argmax, ``2K`` exponentials (half of them as
squares of the others, see :func:`backends._rows.row_constants`; via ``exp2``, ~4x cheaper than
``exp`` on CPU) with their row sums, one row-wise dot product for the teacher KL, and one small
matrix product for the gradient. Rows go through in cache-sized chunks so the ``(rows, 2, K, C)``
exponentials are reused from cache rather than allocated (and page-faulted) at full size; the
per-row algebra runs once per batch, not per chunk. Small problems (``B * C <= SMALL_ELEMENTS``),
where per-op dispatch dominates, take :func:`_fused_small`: the same mathematics in ~30 ops. The
gradient is computed in the forward pass (the exponentials are at hand) and saved; the backward
hands it over (or scales it).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import sld_core

from ._rows import grad_coefficients, row_constants, row_losses

__all__ = ["SLDLoss", "sld_loss_fused", "sld_loss_and_grad_fused"]

# Elements of the per-chunk exponential buffer (rows x 2 x K x C): 2**20 float32 = 4 MiB stays in
# the L2/L3 of the CPU measured in benchmarks/RESULTS.md; on CUDA one chunk covers any usual batch.
CPU_CHUNK_ELEMENTS = 1 << 20
CUDA_CHUNK_ELEMENTS = 1 << 28
# Problems of at most this many logits (B * C) take _fused_small: it wins up to ~2**17 on the CPU of
# benchmarks/RESULTS.md (one and two threads; e.g. 128x1000: 1.96 vs 2.14 ms, 256x1000: 8.3 vs 7.5 ms).
SMALL_ELEMENTS = 1 << 17
# On CUDA every op is a kernel launch (~10 us on the H100 box measured), so the few-op small path wins
# up to 4096x1000 (1.04 vs 1.49 ms before this path existed; ~350 MB peak); at 16384x1000 (1.3 GB)
# the chunked path is ahead again.
CUDA_SMALL_ELEMENTS = 1 << 22


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
def _constants(temperatures: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Any:
    # cached: building them on CUDA is a host-to-device copy, which would sync every step
    return row_constants(temperatures, xp=xp_torch, dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _square_groups(squares: tuple[tuple[int, int], ...]) -> tuple[tuple[Any, Any], ...]:
    """``(dst, src)`` index pairs of :attr:`RowConstants.squares` merged into slices where the
    destinations are consecutive and the sources evenly spaced and already computed, so one multiply
    does several (for T = 1..6: 3, 2 from 6, 4 in one op, then 1 from 2)."""
    groups: list[list[tuple[int, int]]] = []
    for dst, src in squares:
        group = groups[-1] if groups else None
        if group is not None and dst == group[-1][0] + 1 and all(src != d for d, _ in group) and (
                len(group) == 1 and src > group[-1][1] or len(group) > 1
                and src - group[-1][1] == group[1][1] - group[0][1]):
            group.append((dst, src))
        else:
            groups.append([(dst, src)])
    return tuple(
        (slice(g[0][0], g[-1][0] + 1), slice(g[0][1], g[-1][1] + 1, g[1][1] - g[0][1] if len(g) > 1 else 1))
        for g in groups)


@functools.lru_cache(maxsize=32)
def _reversed_positions(num_classes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.arange(num_classes - 1, -1, -1, dtype=dtype, device=device)


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
    exp2_scale: torch.Tensor  # (1, K, 1, 1)
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
def _small_maps(config: sld_core.SLDConfig, pseudo_on: bool, dtype: torch.dtype,
                device: torch.device) -> _SmallMaps:
    consts = _constants(config.temperatures, dtype, device)
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
        exp2_scale=consts.exp2_scale.view(1, num_t, 1, 1),
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
    return _weight_maps(_small_maps(config, pseudo_on, dtype, device), weights, batch)


def _fused_small(s: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, config: sld_core.SLDConfig,
                 pseudo_on: bool,
                 weights: tuple[Any, Any, Any] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_fused` for small problems, where each torch op costs more in dispatch (~2-3 us) than in
    arithmetic: all temperatures of student and teacher go through one softmax on a stacked
    ``(B, 2, K, C)`` tensor, every per-row quantity the swaps need is read from it with one gather at
    ``(m_t, y, m)``, and the per-row algebra is a few fixed linear maps (:func:`_small_maps`). About
    30 ops and one large temporary (fresh large allocations page-fault on every call).
    ``s``, ``t`` are already detached and in the compute dtype."""
    batch, num_classes = s.shape
    maps = _small_maps(config, pseudo_on, s.dtype, s.device)
    num_t = maps.inv_t.shape[1]
    x = torch.stack([s, t], dim=1)  # (B, 2, C)
    u = (x - x.amax(dim=2, keepdim=True)).unsqueeze(2)  # (B, 2, 1, C): u_s, u_t
    # softmax by hand rather than log_softmax + exp: exp2 is ~4x cheaper than torch's exp on CPU
    p = torch.mul(u, maps.exp2_scale.view(1, 1, num_t, 1)).exp2_()
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


def _fused(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
           config: sld_core.SLDConfig, pseudo_on: bool,
           weights: tuple[Any, Any, Any] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``((total, ce, teacher, pseudo) batch means, gradient or None)`` in the compute dtype (float64 stays
    float64, everything else is float32). ``weights = (w_ce, w_teacher, w_pseudo)`` selects the
    differentiated combination; None skips the gradient. Nothing here synchronises the device.

    Per chunk of rows only the ``(rows, C)``-sized work runs (a dozen ops); the per-row algebra runs
    once per batch: the gradient coefficients depend on the row sums only through ``1 / Z``
    (:func:`backends._rows.grad_coefficients`), and the losses are reduced after the loop.
    """
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    s = student.detach()
    t = teacher.detach()
    if s.dtype != dtype or t.dtype != dtype:
        s, t = s.to(dtype), t.to(dtype)
    batch, num_classes = s.shape
    if batch * num_classes <= (CUDA_SMALL_ELEMENTS if s.is_cuda else SMALL_ELEMENTS):
        return _fused_small(s, t, targets, config, pseudo_on, weights)
    consts = _constants(config.temperatures, dtype, s.device)
    num_t = consts.temperatures.shape[0]
    budget = CUDA_CHUNK_ELEMENTS if s.is_cuda else CPU_CHUNK_ELEMENTS
    step = max(1, min(batch, budget // (2 * num_t * num_classes)))
    exps_buffer = s.new_empty(step, 2, num_t, num_classes)  # reused by every chunk
    flags_buffer = None if s.is_cuda else s.new_empty(step, 2, num_classes)
    shifted_buffer = s.new_empty(step, 2, num_classes)
    reversed_positions = _reversed_positions(num_classes, dtype, s.device)
    roots = consts.num_roots
    scale = consts.exp2_scale[:roots].view(1, 1, roots, 1)
    # amax, not argmax or max(dim): on CPU argmax is ~10x slower than amax, and max(dim) goes
    # multi-threaded even for tiny inputs (waking threads on a busy machine costs milliseconds). The
    # first argmax is found per chunk below, from the shifted logits already in cache.
    top = torch.stack([s.amax(dim=1), t.amax(dim=1)], dim=1).unsqueeze(2)  # (B, 2, 1)
    y = targets.unsqueeze(1)
    s_y = s.gather(1, y)
    gap = top[:, 0] - s_y
    teacher_gap = t.gather(1, y) - top[:, 1]
    partition = s.new_empty(batch, 2, num_t)
    cross = s.new_empty(batch, num_t)
    # CPU: first argmax from flags in the chunk loop; CUDA: one argmax kernel each is cheaper
    last_flag = None if s.is_cuda else s.new_empty(batch, 2)  # C - 1 - (first index of the maximum)
    grad = coefs = recip = None
    if weights is not None:
        grad = torch.empty_like(s)
        recip = s.new_empty(batch, 2 * num_t)
        coefs = grad_coefficients(gap, teacher_gap, consts, xp=xp_torch, teacher_swap=config.teacher_swap,
                                  pseudo_on=pseudo_on, detach_pseudo=config.detach_pseudo_teacher,
                                  weights=weights, batch=batch)
    # Views of the reused buffers made once (each view op costs ~1 us, ~50 chunks a call); a shorter
    # last chunk takes their first rows.
    shifted_s, shifted_t = shifted_buffer[:, 0], shifted_buffer[:, 1]
    exps_roots = exps_buffer[:, :, :roots]
    squares = [(exps_buffer[:, :, dst], exps_buffer[:, :, src])
               for dst, src in _square_groups(consts.squares)]
    exps_teacher_t = exps_buffer[:, 1].transpose(1, 2)
    exps_flat = exps_buffer.view(step, 2 * num_t, num_classes)
    top_s, top_t = top[:, 0], top[:, 1]
    for start in range(0, batch, step):
        chunk = slice(start, start + step)
        s_c, t_c = s[chunk], t[chunk]
        rows = s_c.shape[0]
        head = slice(None) if rows == step else slice(rows)
        shifted = shifted_buffer[head]  # (rows, 2, C): u_s, u_t
        torch.sub(s_c, top_s[chunk], out=shifted_s[head])
        torch.sub(t_c, top_t[chunk], out=shifted_t[head])
        # u == 0 exactly at the maxima (x - max is 0 only for x == max): the first one has the largest
        # reversed position. eq/mul/amax into a buffer is ~3x faster than argmax.
        if last_flag is not None:
            flags = flags_buffer[head]
            torch.eq(shifted, 0, out=flags).mul_(reversed_positions)
            torch.amax(flags, dim=2, out=last_flag[chunk])
        roots_c = exps_roots[head]
        torch.mul(shifted.unsqueeze(2), scale, out=roots_c)
        roots_c.exp2_()  # exps[:, 0, k] = exp(u_s / T_k), exps[:, 1, k] = exp(u_t / T_k)
        for dst, base in squares:
            torch.mul(base[head], base[head], out=dst[head])
        exps = exps_buffer[head]
        torch.sum(exps, dim=3, out=partition[chunk])
        diff = shifted_t[head] - shifted_s[head]  # u_t - u_s
        # a row-wise dot with the teacher exponentials; as bmm with the transposed operand: ~2x faster
        # than vecdot, ~10x faster than bmm/matmul with the vector on the right
        torch.bmm(diff.unsqueeze(1), exps_teacher_t[head], out=cross[chunk].unsqueeze(1))
        if coefs is not None:
            r = torch.reciprocal(partition[chunk], out=recip[chunk].view(rows, 2, num_t)).view(rows, -1)
            if coefs.quad is None:
                coef = r * coefs.lin
            else:
                coef = torch.addcmul(coefs.lin, coefs.quad[chunk], r).mul_(r)
            torch.bmm(coef.unsqueeze(1), exps_flat[head], out=grad[chunk].unsqueeze(1))
    if last_flag is not None:
        top_index = (num_classes - 1) - last_flag.long()  # (B, 2): m, m_t
    else:
        top_index = torch.stack([s.argmax(dim=1), t.argmax(dim=1)], dim=1)
    swap_gap = s.gather(1, top_index[:, 1:]) - s_y
    sums = row_losses(partition, cross, gap, teacher_gap, swap_gap, consts, xp=xp_torch,
                      teacher_swap=config.teacher_swap, pseudo_on=pseudo_on)
    if coefs is not None:
        sparse = torch.bmm(recip.unsqueeze(1), coefs.sparse_map).squeeze(1)
        sparse[:, 1] += coefs.at_target
        positions = torch.stack([top_index[:, 1], targets, top_index[:, 0]], dim=1)  # m_t, y, m
        grad.scatter_add_(1, positions, sparse)
    return torch.mv(_total_map(config, dtype, s.device), torch.stack(sums)) / batch, grad


@functools.lru_cache(maxsize=32)
def _total_map(config: sld_core.SLDConfig, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(ce, teacher, pseudo) -> (total, ce, teacher, pseudo)."""
    w_ce, w_kd = config.ce_weight, config.kd_weight
    return torch.tensor([[w_ce, w_kd, w_kd], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                        dtype=dtype, device=device)


def _no_autocast(device_type: str) -> Any:
    """``torch.autocast(device_type, enabled=False)``, or a no-op context when autocast is off anyway
    (entering autocast costs a few microseconds, a noticeable share of a small call)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _SLDFunction(torch.autograd.Function):
    """Outputs ``(total, ce, teacher, pseudo)``. When only ``total`` is differentiated (the usual
    case) the backward is one multiply of the gradient computed in the forward pass; gradients that
    flow in through the other terms trigger one more fused pass with the combined weights."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                config: sld_core.SLDConfig, pseudo_on: bool):  # noqa: ANN205
        ctx.set_materialize_grads(False)
        want_grad = ctx.needs_input_grad[0]
        w_kd = config.kd_weight
        # autocast must not recast the internals (bmm would go to bf16/fp16 and lose the tail mass)
        with _no_autocast(student.device.type):
            losses, grad = _fused(student, teacher, targets, config, pseudo_on,
                                  (config.ce_weight, w_kd, w_kd) if want_grad else None)
        total, ce, teacher_term, pseudo = losses.unbind()
        ctx.config, ctx.pseudo_on, ctx.input_dtype = config, pseudo_on, student.dtype
        if want_grad:
            # student/teacher saved for the rare per-term backward; saving inputs copies nothing.
            # The gradient (an intermediate, not an input or output) is kept as an attribute so the
            # backward can hand it over and drop the reference: see backward.
            ctx.save_for_backward(student, teacher, targets)
            ctx.grad = grad
        return total, ce, teacher_term, pseudo

    @staticmethod
    def backward(ctx: Any, d_total, d_ce, d_teacher, d_pseudo):  # noqa: ANN205
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        student, teacher, targets = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None  # a second backward (retain_graph) recomputes below
        if grad is not None and d_ce is None and d_teacher is None and d_pseudo is None:
            if d_total is None:
                return None, None, None, None, None
            # total.backward() seeds 1: then the tensor itself is the gradient, and with no other
            # reference left autograd stores it as .grad without a copy (a multiply would write a
            # new (B, C) tensor). Checked only on CPU, where reading the value costs no sync.
            if not (d_total.device.type == "cpu" and d_total.dim() == 0 and float(d_total) == 1.0):
                grad = grad.mul_(d_total)
            return grad.to(ctx.input_dtype), None, None, None, None
        config = ctx.config

        def scalar(x: torch.Tensor | None) -> Any:
            return 0.0 if x is None else x

        d_tot = scalar(d_total)
        weights = (
            d_tot * config.ce_weight + scalar(d_ce),
            d_tot * config.kd_weight + scalar(d_teacher),
            d_tot * config.kd_weight + scalar(d_pseudo),
        )
        # tensor weights (no .item(): that would sync the device) broadcast through the pass
        with _no_autocast(student.device.type):
            _, full = _fused(student, teacher, targets, config, ctx.pseudo_on, weights)
        return full.to(ctx.input_dtype), None, None, None, None


def sld_loss_fused(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                   epoch: int, config: sld_core.SLDConfig | None = None,
                   check_targets: bool = True) -> sld_core.LossTerms:
    """:func:`sld_core.sld_loss` for torch tensors, fused (same arguments, same results).

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor, shape (B, C)
        float16/bfloat16 (e.g. under ``torch.autocast``) are computed in float32. Teacher logits are
        never differentiated (the gradient w.r.t. them is reported as ``None``).
    targets : torch.Tensor, shape (B,), integer labels
    epoch : int
        Counted from 1; the pseudo-teacher is active when ``epoch > config.gamma``.
    config : SLDConfig, optional
    check_targets : bool
        The label range check costs a device sync; ``False`` makes the call sync-free.

    Returns
    -------
    LossTerms
        0-d float32 tensors (float64 for float64 input); all four are differentiable w.r.t.
        ``student_logits``, and the backward of ``total`` is the closed-form gradient.

    Examples
    --------
    >>> s = torch.tensor([[2.0, 1.0, 0.0]]); t = torch.tensor([[0.0, 3.0, 1.0]]); y = torch.tensor([0])
    >>> round(float(sld_loss_fused(s, t, y, epoch=1).total), 4)
    1.8387
    """
    config = sld_core.SLDConfig() if config is None else config
    sld_core.validate_inputs(student_logits, teacher_logits, targets, check_targets=check_targets)
    pseudo_on = config.pseudo_teacher and sld_core.pseudo_teacher_active(epoch, config.gamma)
    total, ce, teacher, pseudo = _SLDFunction.apply(student_logits, teacher_logits, targets, config,
                                                    pseudo_on)
    return sld_core.LossTerms(total=total, ce=ce, teacher=teacher, pseudo=pseudo)


def sld_loss_and_grad_fused(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            targets: torch.Tensor, *, epoch: int, config: sld_core.SLDConfig | None = None,
                            check_targets: bool = True) -> tuple[sld_core.LossTerms, torch.Tensor]:
    """:func:`sld_core.sld_loss_and_grad` for torch tensors: losses and the gradient of ``total``
    w.r.t. ``student_logits`` (input dtype) from one fused pass, without building an autograd graph."""
    config = sld_core.SLDConfig() if config is None else config
    sld_core.validate_inputs(student_logits, teacher_logits, targets, check_targets=check_targets)
    pseudo_on = config.pseudo_teacher and sld_core.pseudo_teacher_active(epoch, config.gamma)
    with torch.no_grad(), _no_autocast(student_logits.device.type):
        losses, grad = _fused(student_logits, teacher_logits, targets, config, pseudo_on,
                              (config.ce_weight, config.kd_weight, config.kd_weight))
    total, ce, teacher, pseudo = losses.unbind()
    terms = sld_core.LossTerms(total=total, ce=ce, teacher=teacher, pseudo=pseudo)
    return terms, grad.to(student_logits.dtype)


class SLDLoss(nn.Module):
    """The SLD loss as a module for a torch training loop.

    ``SLDLoss(config)(student_logits, teacher_logits, targets, epoch) -> LossTerms``; call
    ``terms.total.backward()``. ``check_targets=False`` (the default here) keeps the step free of
    device syncs: validate labels once in the data pipeline instead.

    Examples
    --------
    >>> loss = SLDLoss(sld_core.SLDConfig(gamma=0))
    >>> s = torch.randn(4, 10, requires_grad=True)
    >>> terms = loss(s, torch.randn(4, 10), torch.tensor([0, 1, 2, 3]), epoch=1)
    >>> terms.total.backward(); s.grad.shape
    torch.Size([4, 10])
    """

    def __init__(self, config: sld_core.SLDConfig | None = None, *, check_targets: bool = False) -> None:
        super().__init__()
        self.config = sld_core.SLDConfig() if config is None else config
        self.check_targets = check_targets

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                epoch: int) -> sld_core.LossTerms:
        return sld_loss_fused(student_logits, teacher_logits, targets, epoch=epoch, config=self.config,
                              check_targets=self.check_targets)

    def extra_repr(self) -> str:
        return repr(self.config)
