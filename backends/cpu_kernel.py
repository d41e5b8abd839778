r"""Single-pass CPU kernel for the SLD loss and its gradient (numba), shared by the torch CPU path and
the NumPy path.

One compiled function handles a range of rows; per row it reads the logits once from memory and then
works in a ``(2K, C)`` scratch block that stays in cache:

1. row maxima of ``s`` and ``t`` and a non-finite probe (``sum x * 0`` is NaN iff some ``x`` is);
2. ``exp(u/T)`` for the root temperatures (6, 5, 4 for the official 1..6) with the first argmax, the
   row sums ``Z`` and the teacher cross term in the same loop; the other temperatures as squares
   (:func:`backends._rows.row_constants`);
3. the per-row algebra (losses, gradient coefficients) in float64 scalars;
4. the gradient, ``sum_k coef_s[k] e_s[k] + coef_t[k] e_t[k]`` plus the values at ``m_t``, ``y``, ``m``.

This is one of the four copies of the per-row algebra (see :mod:`backends`); the derivation is in
:mod:`backends._rows`. Tests pinning it: ``tests/test_kernels.py`` (float64 to 1e-12 and float32 to
1e-5 against the float64 core and the plain references, every switch and odd shape).

float32 uses a polynomial ``exp`` that the compiler vectorises (numba's ``math.exp`` calls libm one
element at a time, ~8x slower here); its relative error is ~2e-7, below the float32 rounding of
``u / T`` itself. float64 uses ``math.exp``. Rows run on a small thread pool (the kernel releases the
GIL), not on numba's threading layers, so nothing here competes with torch's OpenMP pool.

Labels outside ``[0, C)`` are clamped into range before any read (the call that asked for checks
raises afterwards from the returned flags), so the kernel never indexes out of bounds.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import threading
import warnings
from typing import Any

import array_api_compat.numpy as xp_numpy
import llvmlite.ir
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from ._rows import row_constants

__all__ = ["FLAG_COLUMNS", "LOSS_COLUMNS", "PARALLEL_ELEMENTS", "fused_sums"]

# Per-row output columns: the loss terms (before the 1/B mean), then the input flags counted over rows.
LOSS_COLUMNS = 4  # total, ce, teacher, pseudo
FLAG_COLUMNS = 3  # student non-finite, teacher non-finite, label outside [0, C)

# Keep NaN/inf semantics (the non-finite probe relies on them) while letting sums be reordered so they
# vectorise: every fast-math flag except nnan / ninf.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}


def _cache_enabled() -> bool:
    """numba caches next to the source, or in ``NUMBA_CACHE_DIR`` / the user cache dir when the
    install is read-only. ``SLD_NUMBA_CACHE=0`` turns caching off."""
    return os.environ.get("SLD_NUMBA_CACHE", "1") != "0"


def _jit(**kwargs):
    """``numba.njit(nogil=True, ...)`` with ``cache=True`` where numba finds a writable cache location;
    without one (a read-only install and no writable user cache) it compiles per process instead."""
    def wrap(fn):
        if _cache_enabled():
            try:
                return numba.njit(nogil=True, cache=True, **kwargs)(fn)
            except RuntimeError as exc:  # "cannot cache function ...: no locator available"
                warnings.warn(f"numba cannot cache {fn.__name__} ({exc}); compiling in every process",
                              RuntimeWarning, stacklevel=2)
        return numba.njit(nogil=True, cache=False, **kwargs)(fn)
    return wrap


@intrinsic
def _int_bits_to_float32(typingctx, bits):
    """The low 32 bits of an integer reinterpreted as a float32 (plain LLVM truncation and bitcast, so
    loops around it still vectorise)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = args[0]
        if bits.bitwidth > 32:
            low = builder.trunc(low, llvmlite.ir.IntType(32))
        elif bits.bitwidth < 32:
            low = builder.sext(low, llvmlite.ir.IntType(32))
        return builder.bitcast(low, llvmlite.ir.FloatType())

    return types.float32(bits), codegen


def _key_ir(builder, bits, width):
    # IEEE floats ordered as signed integers: negative values get their magnitude bits flipped
    sign = builder.ashr(bits, llvmlite.ir.Constant(bits.type, width - 1))
    return builder.xor(bits, builder.and_(sign, llvmlite.ir.Constant(bits.type, (1 << (width - 1)) - 1)))


def _float_width(x):
    return {types.float32: 32, types.float64: 64}.get(x)


@intrinsic
def _max_key(typingctx, best, x):
    """``max(best, key(x))`` with ``key`` the order-preserving integer image of the float ``x``: an
    integer max-reduction vectorises without fast-math's no-NaN assumption (under which a NaN input
    would be undefined behaviour, not just a NaN result)."""
    width = _float_width(x)
    if width is None or best != types.int64 and width == 64 or best != types.int32 and width == 32:
        return None

    def codegen(context, builder, signature, args):
        int_type = llvmlite.ir.IntType(width)
        key = _key_ir(builder, builder.bitcast(args[1], int_type), width)
        return builder.select(builder.icmp_signed(">", key, args[0]), key, args[0])

    return best(best, x), codegen


@intrinsic
def _key_to_float(typingctx, key):
    """The float whose :func:`_max_key` image is ``key`` (the map is its own inverse on the bits)."""
    if key == types.int32:
        result, float_type, width = types.float32, llvmlite.ir.FloatType(), 32
    elif key == types.int64:
        result, float_type, width = types.float64, llvmlite.ir.DoubleType(), 64
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_key_ir(builder, args[0], width), float_type)

    return result(key), codegen


@intrinsic
def _lowest_key(typingctx, x):
    """The smallest key of ``x``'s float type (``INT_MIN`` of the matching width)."""
    width = _float_width(x)
    if width is None:
        return None
    result = types.int32 if width == 32 else types.int64

    def codegen(context, builder, signature, args):
        return llvmlite.ir.Constant(llvmlite.ir.IntType(width), -(1 << (width - 1)))

    return result(x), codegen


@intrinsic
def _first_index(typingctx, first, is_max, c):
    """``min(first, c if is_max else first)`` in 32-bit integers (``c`` truncated), so the first-argmax
    search vectorises at the width of float32 data."""
    if first != types.int32 or not isinstance(c, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i32 = llvmlite.ir.IntType(32)
        col = args[2] if c.bitwidth == 32 else builder.trunc(args[2], i32)
        # the canonical select-then-smin shape, which the loop vectoriser recognises as a reduction
        candidate = builder.select(args[1], col, llvmlite.ir.Constant(i32, (1 << 31) - 1))
        return builder.select(builder.icmp_signed("<", candidate, args[0]), candidate, args[0])

    return types.int32(types.int32, types.boolean, c), codegen


def fast_exp(x):  # pragma: no cover - a typing stub; the compiled versions are the overloads below
    """``exp(x)`` for ``x <= 0`` inside the kernels (float32: vectorisable polynomial)."""
    return math.exp(x)


@overload(fast_exp, inline="always")
def _fast_exp_impl(x):
    if x == types.float32:
        f32 = np.float32

        def exp_f32(x):
            # exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), a
            # degree-7 polynomial for exp(r); x is clamped at -87 so 2**n stays a normal float.
            v = max(x, f32(-87.0))
            n = np.floor(v * f32(1.4426950408889634) + f32(0.5))
            r = v - n * f32(0.693145751953125)
            r = r - n * f32(1.428606765330187e-06)
            p = f32(1.9875691500e-4)
            p = p * r + f32(1.3981999507e-3)
            p = p * r + f32(8.3334519073e-3)
            p = p * r + f32(4.1665795894e-2)
            p = p * r + f32(1.6666665459e-1)
            p = p * r + f32(5.0000001201e-1)
            p = p * r * r + r + f32(1.0)
            # 2**n as its bit pattern (n + 127) << 23, formed in float32 (exact) so the loop stays 32-bit
            return p * _int_bits_to_float32(np.int32((n + f32(127.0)) * f32(8388608.0)))

        return exp_f32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


# Columns per partial sum: float32 lanes add up at most this many terms before the float64 total
# takes them, so the row sums keep ~1e-7 relative accuracy at C = 21841 as at C = 100.
SUM_BLOCK = 512


@_jit(fastmath=_FASTMATH)
def _kernel(s, t, y, temps, kd_on, squares, num_roots, ce_index, switches, weights, grad, out, start, stop):
    """Rows ``[start, stop)``: per-row terms and flags into ``out`` (float64, ``(B, 7)``), the gradient
    into ``grad`` when ``switches[3]`` (else ``grad`` may be empty).

    ``temps``/``kd_on`` in evaluation order (roots first, then squares ``(dst, src)``);
    ``switches = (teacher_swap, pseudo_on, detach_pseudo, want_grad)``;
    ``weights = (w_ce / B, w_teacher / B, w_pseudo / B, ce_weight, kd_weight)``.
    """
    num_classes = s.shape[1]
    num_t = temps.shape[0]
    teacher_swap, pseudo_on, detach, want_grad = switches[0], switches[1], switches[2], switches[3]
    w_ce, w_teacher, w_pseudo = weights[0], weights[1], weights[2]
    ce_weight, kd_weight = weights[3], weights[4]
    inv_t = np.empty(num_t, dtype=s.dtype)
    for k in range(num_t):
        inv_t[k] = 1.0 / temps[k]  # rounded once to the compute dtype
    zero = inv_t[0] - inv_t[0]  # 0 in the compute dtype (a literal 0 would promote float32 to float64)
    no_index = np.int32(num_classes)
    e = np.empty((2 * num_t, num_classes), dtype=s.dtype)  # exp(u_s/T_k) rows 0..K-1, exp(u_t/T_k) K..2K-1
    z = np.empty(2 * num_t, dtype=np.float64)
    cross = np.empty(num_t, dtype=np.float64)
    coef = np.empty(2 * num_t, dtype=s.dtype)
    for b in range(start, stop):
        sr = s[b]
        tr = t[b]
        label = y[b]
        out[b, 6] = 1.0 if (label < 0 or label >= num_classes) else 0.0
        label = min(max(label, 0), num_classes - 1)  # never index out of bounds, even unchecked
        key_s = _lowest_key(zero)
        key_t = _lowest_key(zero)
        for c in range(num_classes):
            key_s = _max_key(key_s, sr[c])
            key_t = _max_key(key_t, tr[c])
        s_max = _key_to_float(key_s)
        t_max = _key_to_float(key_t)

        # root temperatures: exponentials, sums, cross term; the first argmax and the non-finite probe
        # (sum x * 0 is NaN iff some x is NaN or inf) ride along with the first one
        s_first = no_index
        t_first = no_index
        probe_s = zero
        probe_t = zero
        for k in range(num_roots):
            a = inv_t[k]
            es_row = e[k]
            et_row = e[num_t + k]
            zs = 0.0
            zt = 0.0
            cr = 0.0
            for lo in range(0, num_classes, SUM_BLOCK):
                # slices per block: numba's range(lo, hi) over the full rows does not vectorise
                width = min(SUM_BLOCK, num_classes - lo)
                s_b = sr[lo:lo + width]
                t_b = tr[lo:lo + width]
                es_b = es_row[lo:lo + width]
                et_b = et_row[lo:lo + width]
                zs_b = zero
                zt_b = zero
                cr_b = zero
                if k == 0:
                    for c in range(width):
                        us = s_b[c] - s_max
                        ut = t_b[c] - t_max
                        es = fast_exp(us * a)
                        et = fast_exp(ut * a)
                        es_b[c] = es
                        et_b[c] = et
                        zs_b += es
                        zt_b += et
                        cr_b += et * (ut - us)
                        s_first = _first_index(s_first, us == 0, lo + c)
                        t_first = _first_index(t_first, ut == 0, lo + c)
                        probe_s += s_b[c] * zero
                        probe_t += t_b[c] * zero
                else:
                    for c in range(width):
                        us = s_b[c] - s_max
                        ut = t_b[c] - t_max
                        es = fast_exp(us * a)
                        et = fast_exp(ut * a)
                        es_b[c] = es
                        et_b[c] = et
                        zs_b += es
                        zt_b += et
                        cr_b += et * (ut - us)
                zs += zs_b
                zt += zt_b
                cr += cr_b
            z[k] = zs
            z[num_t + k] = zt
            cross[k] = cr
        out[b, 4] = 0.0 if probe_s == 0 else 1.0
        out[b, 5] = 0.0 if probe_t == 0 else 1.0
        # NaN rows find no exact maximum: any in-range index keeps the reads below in bounds
        s_top = min(max(np.int64(s_first), 0), num_classes - 1)
        t_top = min(max(np.int64(t_first), 0), num_classes - 1)
        for j in range(squares.shape[0]):
            dst = squares[j, 0]
            src = squares[j, 1]
            es_src = e[src]
            et_src = e[num_t + src]
            es_row = e[dst]
            et_row = e[num_t + dst]
            zs = 0.0
            zt = 0.0
            cr = 0.0
            for lo in range(0, num_classes, SUM_BLOCK):
                width = min(SUM_BLOCK, num_classes - lo)
                s_b = sr[lo:lo + width]
                t_b = tr[lo:lo + width]
                src_s = es_src[lo:lo + width]
                src_t = et_src[lo:lo + width]
                es_b = es_row[lo:lo + width]
                et_b = et_row[lo:lo + width]
                zs_b = zero
                zt_b = zero
                cr_b = zero
                for c in range(width):
                    es = src_s[c] * src_s[c]
                    et = src_t[c] * src_t[c]
                    es_b[c] = es
                    et_b[c] = et
                    zs_b += es
                    zt_b += et
                    cr_b += et * ((t_b[c] - t_max) - (s_b[c] - s_max))
                zs += zs_b
                zt += zt_b
                cr += cr_b
            z[dst] = zs
            z[num_t + dst] = zt
            cross[dst] = cr

        # per-row algebra (float64); the derivation is in backends._rows
        s_y = float(sr[label])
        gap = float(s_max) - s_y  # d = s_m - s_y >= 0
        teacher_gap = float(tr[label]) - float(t_max)  # <= 0
        swap_gap = float(sr[t_top]) - s_y
        ce = 0.0
        teacher = 0.0
        pseudo = 0.0
        at_t_top = 0.0
        at_target = -w_ce
        at_s_top = 0.0
        for k in range(num_t):
            temp = temps[k]
            kd = kd_on[k]
            z_s = z[k]
            z_t = z[num_t + k]
            q_top = 1.0 / z_s
            kl = cross[k] / (temp * z_t) + math.log(z_s) - math.log(z_t)
            if teacher_swap:
                dp = (1.0 - math.exp(teacher_gap / temp)) / z_t  # p_t[m_t] - p_t[y]
                kl += dp * swap_gap / temp
                at_t_top += w_teacher * kd * temp * dp
                at_target -= w_teacher * kd * temp * dp
            teacher += kd * temp * temp * kl
            if k == ce_index:
                ce = math.log(z_s) + gap
            cs = (w_teacher * kd * temp + (w_ce if k == ce_index else 0.0)) * q_top
            if pseudo_on:
                q_y = math.exp(-gap / temp) * q_top
                dq = q_top - q_y
                pseudo += kd * temp * dq * gap
                at_s_top += w_pseudo * kd * temp * dq
                at_target -= w_pseudo * kd * temp * dq
                if not detach:  # the path through swap(s): d (q_m e_m - q_y e_y - dq q)
                    cs -= w_pseudo * kd * gap * dq * q_top
                    at_s_top += w_pseudo * kd * gap * q_top
                    at_target -= w_pseudo * kd * gap * q_y
            coef[k] = cs
            coef[num_t + k] = -w_teacher * kd * temp / z_t
        out[b, 0] = ce_weight * ce + kd_weight * (teacher + pseudo)
        out[b, 1] = ce
        out[b, 2] = teacher
        out[b, 3] = pseudo

        if want_grad:
            g = grad[b]
            c0s = coef[0]
            c0t = coef[num_t]
            es_row = e[0]
            et_row = e[num_t]
            for c in range(num_classes):
                g[c] = c0s * es_row[c] + c0t * et_row[c]
            for k in range(1, num_t - 1, 2):  # two temperatures per pass: half the traffic through g
                c1s = coef[k]
                c1t = coef[num_t + k]
                c2s = coef[k + 1]
                c2t = coef[num_t + k + 1]
                e1s = e[k]
                e1t = e[num_t + k]
                e2s = e[k + 1]
                e2t = e[num_t + k + 1]
                for c in range(num_classes):
                    g[c] += (c1s * e1s[c] + c1t * e1t[c]) + (c2s * e2s[c] + c2t * e2t[c])
            if num_t % 2 == 0:
                cks = coef[num_t - 1]
                ckt = coef[2 * num_t - 1]
                es_row = e[num_t - 1]
                et_row = e[2 * num_t - 1]
                for c in range(num_classes):
                    g[c] += cks * es_row[c] + ckt * et_row[c]
            # accumulate: two of the three positions may coincide (e.g. m_t == y)
            g[t_top] += at_t_top
            g[label] += at_target
            g[s_top] += at_s_top


@_jit()
def rows_to_sums(out):
    """Column sums of the per-row output in row order (the same result whatever the thread split)."""
    sums = np.zeros(out.shape[1], dtype=np.float64)
    for b in range(out.shape[0]):
        for j in range(out.shape[1]):
            sums[j] += out[b, j]
    return sums


# ---------------------------------------------------------------- driver: constants, threads, one call

_EMPTY_GRAD = {np.dtype(np.float32): np.empty((0, 0), np.float32), np.dtype(np.float64): np.empty((0, 0))}
# Below this many logits one thread does the whole batch: handing rows to the pool costs ~30-50 us.
PARALLEL_ELEMENTS = 1 << 16


@functools.lru_cache(maxsize=64)
def _plan(temperatures: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """``(temps, kd_on, squares, num_roots, ce_index)`` in the kernel's evaluation order (float64)."""
    consts = row_constants(temperatures, xp=xp_numpy, dtype=np.float64, device="cpu")
    squares = np.array(consts.squares, dtype=np.int64).reshape(-1, 2)
    return consts.temperatures, consts.kd_on, squares, consts.num_roots, consts.ce_index


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sld-kernel")
            _pool_size = workers
        return _pool


def _forget_pool_after_fork() -> None:
    # a forked child inherits the executor object but not its threads: work handed to it would never run
    global _pool, _pool_size
    _pool, _pool_size = None, 0


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def fused_sums(s: np.ndarray, t: np.ndarray, y: np.ndarray, config: Any, pseudo_on: bool,
               weights: tuple[float, float, float] | None, grad: np.ndarray | None,
               threads: int) -> np.ndarray:
    """Run the kernel over every row of C-contiguous ``s``, ``t`` (float32 or float64, same dtype) and
    int64 ``y``; write the gradient of ``w_ce ce + w_teacher teacher + w_pseudo pseudo`` (``weights``)
    into ``grad`` when given. Returns the float64 ``(7,)`` vector ``(total, ce, teacher, pseudo)``
    batch means, then the counts of rows with non-finite student logits, non-finite teacher logits and
    labels outside ``[0, C)``."""
    batch, num_classes = s.shape
    temps, kd_on, squares, num_roots, ce_index = _plan(config.temperatures)
    want_grad = grad is not None
    switches = np.array([config.teacher_swap, pseudo_on, config.detach_pseudo_teacher, want_grad],
                        dtype=np.int64)
    w_ce, w_teacher, w_pseudo = weights if want_grad else (0.0, 0.0, 0.0)
    w = np.array([w_ce / batch, w_teacher / batch, w_pseudo / batch, config.ce_weight, config.kd_weight])
    grad_arg = grad if want_grad else _EMPTY_GRAD[s.dtype]
    out = np.empty((batch, LOSS_COLUMNS + FLAG_COLUMNS))
    args = (s, t, y, temps, kd_on, squares, num_roots, ce_index, switches, w, grad_arg, out)
    workers = min(threads, batch) if batch * num_classes >= PARALLEL_ELEMENTS else 1
    if workers <= 1:
        _kernel(*args, 0, batch)
    else:
        bounds = [batch * i // workers for i in range(workers + 1)]
        pool = _executor(workers - 1)
        futures = [pool.submit(_kernel, *args, bounds[i], bounds[i + 1]) for i in range(1, workers)]
        _kernel(*args, bounds[0], bounds[1])  # the calling thread takes the first block
        for future in futures:
            future.result()
    sums = rows_to_sums(out)
    sums[:LOSS_COLUMNS] /= batch
    return sums
