r"""Fused PyTorch SLD: every loss term, for every temperature, from one pass over the logits, with
the closed-form gradient of :func:`sld_core.sld_loss_and_grad` computed in the forward and handed to
autograd as the backward (no copy when the seed is 1).

Which implementation runs (:func:`backends.implementation` says it for a given tensor):

- CPU, numba installed: the single-pass kernel of :mod:`backends.cpu_kernel`, reading the tensors by
  address on one thread and through zero-copy NumPy views on its thread pool;
- CUDA, triton installed: the one-launch kernel of :mod:`backends.triton_sld`;
- otherwise (or with ``SLD_KERNELS=0``): the eager paths -- :func:`backends.torch_small.fused_small`
  for small problems, and below a chunked pass whose per-row algebra is :mod:`backends._rows`: per chunk
  of rows the row maxima and first argmax, the exponentials at the root temperatures (the others as
  their squares), the row sums, the teacher cross term and the gradient product, each one torch op
  over a buffer reused from cache; the per-row algebra runs once per batch.

Timings and the choices behind the thresholds: ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np
import torch
from torch import nn

import sld_core
from sld_core.validation import raise_for_counts

from ._checks import check_epoch, check_structure
from ._rows import grad_coefficients, row_losses
from ._select import cpu_kernel_module, num_threads, triton_module
from .torch_small import constants as _constants
from .torch_small import fused_small as _fused_small
from .torch_small import xp_torch

__all__ = ["SLDLoss", "implementation", "sld_loss_fused", "sld_loss_and_grad_fused"]

_DEFAULT_CONFIG = sld_core.SLDConfig()  # frozen: one shared instance saves building it per call
_NUMPY_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}

# Elements of the per-chunk exponential buffer (rows x 2 x K x C): 4 MiB of float32 stays in L2/L3
# (RESULTS.md: 2**19 and 2**21 are slower); on CUDA one chunk covers any usual batch.
CPU_CHUNK_ELEMENTS = 1 << 20
CUDA_CHUNK_ELEMENTS = 1 << 28
# Eager paths only: up to this many logits (B * C) the few-op small path beats the chunked one
# (per-op dispatch dominates there; crossover measured in RESULTS.md). On CUDA every op is a launch,
# so the small path wins up to ~4096x1000, at ~350 MB peak.
SMALL_ELEMENTS = 1 << 17
CUDA_SMALL_ELEMENTS = 1 << 22


def implementation(student_logits: torch.Tensor, *, numeric_weights: bool = True) -> str:
    """``"numba"``, ``"triton"`` or ``"eager"``: what :func:`sld_loss_fused` runs for this tensor.
    ``numeric_weights=False`` is the rare per-term backward with tensor weights, which on CUDA stays
    on the eager path (reading the weights would sync)."""
    # is_cpu / is_cuda: .device.type builds a device object and a string (microseconds with cold caches)
    if student_logits.is_cpu:
        return "eager" if cpu_kernel_module() is None else "numba"
    if student_logits.is_cuda and numeric_weights and triton_module() is not None:
        return "triton"
    return "eager"


def _fused_numba(s: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, config: sld_core.SLDConfig,
                 pseudo_on: bool, weights: tuple[Any, Any, Any] | None,
                 check: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU kernel on ``s``, ``t`` (compute dtype, possibly requiring grad): it writes the gradient
    straight into the tensor autograd will receive. On one thread it reads the tensors by address
    (:func:`backends.cpu_kernel.fused_sums_at`), else through NumPy views for the thread pool."""
    kernel = cpu_kernel_module()
    s, t = s.contiguous(), t.contiguous()
    batch, num_classes = s.shape
    grad = torch.empty_like(s) if weights is not None else None
    # CPU tensors: reading tensor weights (a per-term backward) costs no sync
    w = None if weights is None else (float(weights[0]), float(weights[1]), float(weights[2]))
    if batch * num_classes < kernel.PARALLEL_ELEMENTS or num_threads() == 1:
        # every tensor read by address is held by a name until the call returns
        y = targets if targets.dtype == torch.int64 else targets.to(torch.int64)
        y = y.contiguous()
        losses = s.new_empty(4)
        flags = kernel.fused_sums_at(s.data_ptr(), t.data_ptr(), y.data_ptr(),
                                     0 if grad is None else grad.data_ptr(), losses.data_ptr(), batch,
                                     num_classes, _NUMPY_DTYPE[s.dtype], config, pseudo_on, w)
        if check and flags:
            raise_for_counts((flags & 1, flags & 2, flags & 4), targets=targets.numpy(),
                             num_classes=num_classes, xp=np)
        return losses, grad
    y = targets.numpy()
    if y.dtype != np.int64 or not y.flags.c_contiguous:
        y = np.ascontiguousarray(y, dtype=np.int64)
    sums = kernel.fused_sums(s.detach().numpy(), t.detach().numpy(), y, config, pseudo_on, w,
                             None if grad is None else grad.numpy(), num_threads())
    if check and (sums[4] or sums[5] or sums[6]):
        raise_for_counts(sums[4:], targets=y, num_classes=num_classes, xp=np)
    return torch.from_numpy(sums[:4]).to(s.dtype), grad


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


def _fused(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
           config: sld_core.SLDConfig, pseudo_on: bool, weights: tuple[Any, Any, Any] | None,
           check: bool = False, impl: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``((total, ce, teacher, pseudo) batch means, gradient or None)`` in the compute dtype (float64 stays
    float64, everything else is float32). ``weights = (w_ce, w_teacher, w_pseudo)`` selects the
    differentiated combination; None skips the gradient. ``check``: the kernels report bad values
    (one sync on CUDA); on the eager paths the caller has checked them. Otherwise nothing here
    synchronises the device. ``impl``: :func:`implementation`'s answer when the caller has it.

    Eager, per chunk of rows only the ``(rows, C)``-sized work runs (a dozen ops); the per-row algebra runs
    once per batch: the gradient coefficients depend on the row sums only through ``1 / Z``
    (:func:`backends._rows.grad_coefficients`), and the losses are reduced after the loop.
    """
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    if impl == "numba" and student.dtype == dtype and teacher.dtype == dtype:
        return _fused_numba(student, teacher, targets, config, pseudo_on, weights, check)  # reads by address
    s = student.detach()
    t = teacher.detach()
    if s.dtype != dtype or t.dtype != dtype:
        s, t = s.to(dtype), t.to(dtype)
    if impl is None:
        numeric = weights is None or all(isinstance(w, (int, float)) for w in weights)
        impl = implementation(s, numeric_weights=numeric)
    if impl == "numba":
        return _fused_numba(s, t, targets, config, pseudo_on, weights, check)
    if impl == "triton":
        return triton_module().fused(s, t, targets, config, pseudo_on, weights, check)
    # eager: the values were checked by the caller (validate_inputs); unchecked labels are clamped
    targets = targets.long()  # gather needs int64 (a no-op for int64 labels)
    if not check:
        targets = targets.clamp(0, s.shape[1] - 1)
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
    scale = consts.inv_t[:roots].view(1, 1, roots, 1)
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
        roots_c.exp_()  # exps[:, 0, k] = exp(u_s / T_k), exps[:, 1, k] = exp(u_t / T_k)
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
    def forward(ctx: Any, student: torch.Tensor,
                call: tuple[torch.Tensor, torch.Tensor, sld_core.SLDConfig, bool, bool, str]):  # noqa: ANN205
        # call = (teacher, targets, config, pseudo_on, check, implementation): one argument, not six.
        # The teacher logits and labels are never differentiated, so they are not autograd inputs
        # either: each tensor input costs ~1 us with cold caches (its edge, its requires_grad).
        teacher, targets, config, pseudo_on, check, impl = call
        ctx.set_materialize_grads(False)
        want_grad = ctx.needs_input_grad[0]
        w_kd = config.kd_weight
        weights = (config.ce_weight, w_kd, w_kd) if want_grad else None
        if impl == "numba" and student.dtype == teacher.dtype and student.dtype in _NUMPY_DTYPE:
            # no torch op inside: autocast has nothing to recast
            losses, grad = _fused_numba(student, teacher, targets, config, pseudo_on, weights, check)
        elif impl == "numba":
            losses, grad = _fused(student, teacher, targets, config, pseudo_on, weights, check, impl)
        else:  # autocast must not recast the internals (bmm would go to bf16/fp16 and lose the tail mass)
            with _no_autocast(student.device.type):
                losses, grad = _fused(student, teacher, targets, config, pseudo_on, weights, check, impl)
        total, ce, teacher_term, pseudo = losses.unbind()
        if want_grad:
            # student/teacher saved for the rare per-term backward; saving inputs copies nothing.
            # The gradient (an intermediate, not an input or output) is kept in an attribute so the
            # backward can hand it over and drop the reference: see backward. One attribute for it and
            # the per-term backward's settings: each set on ctx costs ~1 us with cold caches.
            ctx.save_for_backward(student, teacher, targets)
            ctx.state = [grad, config, pseudo_on, student.dtype]
        return total, ce, teacher_term, pseudo

    @staticmethod
    def backward(ctx: Any, d_total, d_ce, d_teacher, d_pseudo):  # noqa: ANN205
        if not ctx.needs_input_grad[0]:
            return None, None
        state = ctx.state
        grad, config, pseudo_on, input_dtype = state
        state[0] = None  # a second backward (retain_graph) recomputes below
        if grad is not None and d_ce is None and d_teacher is None and d_pseudo is None:
            if d_total is None:
                return None, None
            # total.backward() seeds 1: then the tensor itself is the gradient, and with no other
            # reference left autograd stores it as .grad without a copy (a multiply would write a
            # new (B, C) tensor). Checked only on CPU, where reading the value costs no sync (item():
            # ~2 us less than float() with cold caches; the seed of a 0-d output has one element).
            if not (d_total.is_cpu and d_total.item() == 1.0):
                grad = grad.mul_(d_total)
            if grad.dtype != input_dtype:
                grad = grad.to(input_dtype)
            return grad, None
        student, teacher, targets = ctx.saved_tensors

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
            _, full = _fused(student, teacher, targets, config, pseudo_on, weights)
        return full.to(input_dtype), None


def _direct_apply() -> Any:
    """``_SLDFunction.apply`` without the Python wrapper of ``torch.autograd.Function.apply``, which
    costs 8-20 us a call with cold caches (5-10 % of a 64x100 loss + backward in ``sld bench``;
    RESULTS.md). With no functorch transform active that wrapper only unwraps dead functorch wrappers
    and calls the C entry point; this does the same, and under a transform (or on a torch without
    these internals) it defers to the wrapper itself."""
    try:
        entry = super(torch.autograd.Function, _SLDFunction).apply
        unwrap = torch._C._functorch.unwrap_if_dead
        transforms_active = torch._C._are_functorch_transforms_active
    except AttributeError:  # pragma: no cover - internals of the supported torch versions
        return _SLDFunction.apply

    def apply(student: torch.Tensor, call: tuple) -> Any:
        if transforms_active():
            return _SLDFunction.apply(student, call)
        return entry(unwrap(student), call)

    return apply


_apply = _direct_apply()


def _prepare(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, epoch: Any,
             config: sld_core.SLDConfig | None,
             check_targets: bool) -> tuple[sld_core.SLDConfig, bool, bool, str]:
    """``(config, pseudo_on, kernel_checks, implementation)`` after the checks that run before the pass:
    the compiled kernels check the values from the pass itself (``kernel_checks``), the eager paths
    beforehand."""
    config = _DEFAULT_CONFIG if config is None else config
    check_epoch(epoch)
    impl = implementation(student_logits)
    if impl == "eager":
        sld_core.validate_inputs(student_logits, teacher_logits, targets, check_targets=check_targets)
        in_kernel = False
    else:  # the kernel reports the values from its own pass; the layout check is remembered
        check_structure(student_logits, teacher_logits, targets)
        in_kernel = check_targets
    pseudo_on = config.pseudo_teacher and sld_core.pseudo_teacher_active(epoch, config.gamma)
    return config, pseudo_on, in_kernel, impl


def sld_loss_fused(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                   epoch: int, config: sld_core.SLDConfig | None = None,
                   check_targets: bool = True) -> sld_core.LossTerms:
    """:func:`sld_core.sld_loss` for torch tensors, fused (same arguments, same results).

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor, shape (B, C)
        float16/bfloat16 (e.g. under ``torch.autocast``) are computed in float32. Teacher logits are
        never differentiated (the gradient w.r.t. them is reported as ``None``).
    targets : torch.Tensor, shape (B,), integer labels (any integer dtype)
    epoch : int or float
        Counted from 1 (a real number >= 0); the pseudo-teacher is active when ``epoch > config.gamma``.
    config : SLDConfig, optional
    check_targets : bool
        Check labels in ``[0, C)`` and finite logits (one device sync on CUDA; the kernels report
        both from their own pass). ``False`` makes the call sync-free and clamps the labels.

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
    config, pseudo_on, kernel_checks, impl = _prepare(student_logits, teacher_logits, targets, epoch, config,
                                                      check_targets)
    total, ce, teacher, pseudo = _apply(student_logits,
                                        (teacher_logits, targets, config, pseudo_on, kernel_checks, impl))
    return sld_core.LossTerms(total, ce, teacher, pseudo)  # positional: keywords cost ~1 us cold


def sld_loss_and_grad_fused(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            targets: torch.Tensor, *, epoch: int, config: sld_core.SLDConfig | None = None,
                            check_targets: bool = True) -> tuple[sld_core.LossTerms, torch.Tensor]:
    """:func:`sld_core.sld_loss_and_grad` for torch tensors: losses and the gradient of ``total``
    w.r.t. ``student_logits`` (input dtype) from one fused pass, without building an autograd graph."""
    config, pseudo_on, kernel_checks, impl = _prepare(student_logits, teacher_logits, targets, epoch, config,
                                                      check_targets)
    with torch.no_grad(), _no_autocast(student_logits.device.type):
        losses, grad = _fused(student_logits, teacher_logits, targets, config, pseudo_on,
                              (config.ce_weight, config.kd_weight, config.kd_weight), kernel_checks, impl)
    total, ce, teacher, pseudo = losses.unbind()
    terms = sld_core.LossTerms(total=total, ce=ce, teacher=teacher, pseudo=pseudo)
    return terms, grad.to(student_logits.dtype)


class SLDLoss(nn.Module):
    """The SLD loss as a module for a torch training loop.

    ``SLDLoss(config)(student_logits, teacher_logits, targets, epoch) -> LossTerms``; call
    ``terms.total.backward()``. ``epoch`` counts from 1 (the pseudo-teacher is on for ``epoch > gamma``);
    a loop that counts from 0 passes ``epoch + 1``.

    ``check_targets=True`` (the default, as for the functions) checks every call's labels and logits and
    raises one clear error; ``False`` skips that check, which on CUDA is a device sync per call, and
    clamps out-of-range labels silently: use it once the data pipeline has validated the labels (the
    ``sld`` trainer does).

    Examples
    --------
    >>> loss = SLDLoss(sld_core.SLDConfig(gamma=0))
    >>> s = torch.randn(4, 10, requires_grad=True)
    >>> terms = loss(s, torch.randn(4, 10), torch.tensor([0, 1, 2, 3]), epoch=1)
    >>> terms.total.backward(); s.grad.shape
    torch.Size([4, 10])
    """

    def __init__(self, config: sld_core.SLDConfig | None = None, *, check_targets: bool = True) -> None:
        super().__init__()
        self.config = sld_core.SLDConfig() if config is None else config
        self.check_targets = check_targets

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                epoch: int) -> sld_core.LossTerms:
        return sld_loss_fused(student_logits, teacher_logits, targets, epoch=epoch, config=self.config,
                              check_targets=self.check_targets)

    def extra_repr(self) -> str:
        return repr(self.config)
