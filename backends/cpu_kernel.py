r"""Single-pass CPU kernel for the SLD loss and its gradient (numba), shared by the torch CPU path and
the NumPy path.

One compiled function handles a range of rows; per row it reads the logits once from memory and then
works in a ``(2J, C)`` scratch block that stays in cache:

1. row maxima of ``s`` and ``t``;
2. ``exp(u/T)`` for every entry of the exponential plan (:mod:`backends._exp_plan`): a few roots by
   ``exp``, the other temperatures as products of earlier entries, one column block at a time, with
   the row sums ``Z``, the teacher cross term, the first argmax and a non-finite probe (``sum x * 0``
   is NaN iff some ``x`` is) in the same loops. The official temperatures 1..6 need two exponentials
   per element and side (``exp(u/12)``, ``exp(u/5)``) and get one loop that keeps the products in
   registers (:func:`_fused_side`); other sets run the generic loops;
3. the per-row algebra (losses, gradient coefficients) in float64 scalars;
4. the gradient, ``sum_k coef_s[k] e_s[k] + coef_t[k] e_t[k]`` plus the values at ``m_t``, ``y``, ``m``.

This is one of the four copies of the per-row algebra (see :mod:`backends`); the derivation is in
:mod:`backends._rows`. Tests pinning it: ``tests/test_kernels.py`` (float64 to 1e-12 and float32 to
1e-5 against the float64 core and the plain references, every switch and odd shape) and
``tests/test_cpu_kernel.py`` (the ``exp``, the fused against the generic loops, the call paths).

float32 uses a polynomial ``exp`` that the compiler vectorises (numba's ``math.exp`` calls libm one
element at a time, ~8x slower here); its relative error is ~1e-7 (3e-7 at ``x`` near -87), and a plan
entry of power ``n`` carries ~``n`` times that (``MAX_POWER``). float64 uses ``math.exp``. Rows run on
a small thread pool (the kernel releases the GIL), not on numba's threading layers, so nothing here
competes with torch's OpenMP pool; a problem below ``PARALLEL_ELEMENTS`` runs in one call on the
calling thread, and the torch path then passes the tensors by address (:func:`fused_sums_at`).

Labels outside ``[0, C)`` are clamped into range before any read (the call that asked for checks
raises afterwards from the returned flags), so the kernel never indexes out of bounds.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
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

from ._exp_plan import exp_plan
from ._rows import row_constants

__all__ = ["FLAG_COLUMNS", "LOSS_COLUMNS", "MAX_POWER", "PARALLEL_ELEMENTS", "fused_sums", "fused_sums_at"]

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
            # exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), and
            # exp(r) = 1 + r + r^2 P(r) with P of degree 4, fitted for least maximum relative error on
            # |r| <= ln(2)/2 (1e-7 after float32 rounding, as the degree-7 Cephes one); x is clamped at
            # -87 so 2**n stays a normal float.
            v = max(x, f32(-87.0))
            n = np.floor(v * f32(1.4426950408889634) + f32(0.5))
            r = v - n * f32(0.693145751953125)
            r = r - n * f32(1.428606765330187e-06)
            p = f32(1.381461275741458e-3)
            p = p * r + f32(8.368710055947304e-3)
            p = p * r + f32(4.166838899254799e-2)
            p = p * r + f32(1.666652113199234e-1)
            p = p * r + f32(4.999999403953552e-1)
            p = p * r * r + r + f32(1.0)
            # 2**n as its bit pattern (n + 127) << 23, formed in float32 (exact) so the loop stays 32-bit
            return p * _int_bits_to_float32(np.int32((n + f32(127.0)) * f32(8388608.0)))

        return exp_f32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


# Columns per partial sum: float32 lanes add up at most this many terms before the float64 total
# takes them, so the row sums keep ~1e-7 relative accuracy at C = 21841 as at C = 100. It is also the
# column block every entry of the exponential plan is computed over before the next, so a product's
# factors are still in L1 (14 rows of 512 float32 for the official plan: 28 KiB).
SUM_BLOCK = 512
# Largest power of a root exponential that the plan derives by products (backends._exp_plan): a
# power-n entry carries ~n times the root's relative error (~1e-7 in float32), and at 12 the losses and
# gradient stay within 3e-7 of float64 (RESULTS.md); the official temperatures then need 2 exps.
MAX_POWER = 12

# Layout of the two parameter vectors (see _params): the scalars first, then per-entry and
# per-temperature arrays at offsets the kernel reads from the integer vector.
_F_SCALARS = 5  # w_ce / B, w_teacher / B, w_pseudo / B, ce_weight, kd_weight
_I_SCALARS = 8  # teacher_swap, pseudo_on, detach, want_grad, entries J, temperatures K, ce_index, fused
# The plan of the official temperatures (1, ..., 6) with MAX_POWER 12: b = exp(u/12) (no loss term),
# a = exp(u/5), then b^2 (T=6), b^3 (T=4), b^4 (T=3), b^6 (T=2), b^12 (T=1). Plans of this shape get
# one loop that keeps the products in registers (the generic loop stores and reloads each entry).
_FUSED_FACTORS = (None, None, (0, 0), (2, 0), (2, 2), (3, 3), (5, 5))


@_jit(fastmath=_FASTMATH, inline="always")
def _fused_side(x_b, x_max, inv_b, inv_a, e, base, lo, width, z, first, zero):
    """One side (student rows from ``base = 0``, teacher from ``J``) of a column block of the official
    plan (:data:`_FUSED_FACTORS`) in one loop: 2 exponentials and 5 products per column, every entry but
    the auxiliary ``b`` stored and summed. Returns the first argmax and the non-finite probe."""
    a_r = e[base + 1][lo:lo + width]
    b2_r = e[base + 2][lo:lo + width]
    b3_r = e[base + 3][lo:lo + width]
    b4_r = e[base + 4][lo:lo + width]
    b6_r = e[base + 5][lo:lo + width]
    b12_r = e[base + 6][lo:lo + width]
    za = zb2 = zb3 = zb4 = zb6 = zb12 = zero
    probe = zero
    lo32 = np.int32(lo)
    for c in range(np.int32(width)):  # int32 columns: an int64 index halves the argmax's vector width
        u = x_b[c] - x_max
        b1 = fast_exp(u * inv_b)
        ea = fast_exp(u * inv_a)
        b2 = b1 * b1
        b3 = b2 * b1
        b4 = b2 * b2
        b6 = b3 * b3
        b12 = b6 * b6
        a_r[c] = ea
        b2_r[c] = b2
        b3_r[c] = b3
        b4_r[c] = b4
        b6_r[c] = b6
        b12_r[c] = b12
        za += ea
        zb2 += b2
        zb3 += b3
        zb4 += b4
        zb6 += b6
        zb12 += b12
        first = _first_index(first, u == 0, lo32 + c)
        probe += x_b[c] * zero
    z[base + 1] += za
    z[base + 2] += zb2
    z[base + 3] += zb3
    z[base + 4] += zb4
    z[base + 5] += zb6
    z[base + 6] += zb12
    return first, probe


@_jit(fastmath=_FASTMATH, inline="always")
def _fused_cross(s_b, t_b, s_max, t_max, e, num_e, lo, width, cross, zero):
    """The teacher cross term ``sum exp(u_t/T) (u_t - u_s)`` of the official plan's entries (one block)."""
    a_r = e[num_e + 1][lo:lo + width]
    b2_r = e[num_e + 2][lo:lo + width]
    b3_r = e[num_e + 3][lo:lo + width]
    b4_r = e[num_e + 4][lo:lo + width]
    b6_r = e[num_e + 5][lo:lo + width]
    b12_r = e[num_e + 6][lo:lo + width]
    ca = cb2 = cb3 = cb4 = cb6 = cb12 = zero
    for c in range(width):
        diff = (t_b[c] - t_max) - (s_b[c] - s_max)
        ca += a_r[c] * diff
        cb2 += b2_r[c] * diff
        cb3 += b3_r[c] * diff
        cb4 += b4_r[c] * diff
        cb6 += b6_r[c] * diff
        cb12 += b12_r[c] * diff
    cross[1] += ca
    cross[2] += cb2
    cross[3] += cb3
    cross[4] += cb4
    cross[5] += cb6
    cross[6] += cb12


@_jit(fastmath=_FASTMATH, inline="always")
def _fused_grad(g, e, num_e, coef_s, coef_t, num_classes):
    """The gradient's dense part for the official plan in one pass over ``g``: entries 1..6 of both
    sides (``coef_s[j]``, ``coef_t[j]`` by entry)."""
    s1, s2, s3, s4, s5, s6 = e[1], e[2], e[3], e[4], e[5], e[6]
    n = num_e
    t1, t2, t3, t4, t5, t6 = e[n + 1], e[n + 2], e[n + 3], e[n + 4], e[n + 5], e[n + 6]
    a1, a2, a3, a4, a5, a6 = coef_s[1], coef_s[2], coef_s[3], coef_s[4], coef_s[5], coef_s[6]
    b1, b2, b3, b4, b5, b6 = coef_t[1], coef_t[2], coef_t[3], coef_t[4], coef_t[5], coef_t[6]
    for c in range(num_classes):
        g[c] = (((a1 * s1[c] + b1 * t1[c]) + (a2 * s2[c] + b2 * t2[c]))
                + ((a3 * s3[c] + b3 * t3[c]) + (a4 * s4[c] + b4 * t4[c]))
                + ((a5 * s5[c] + b5 * t5[c]) + (a6 * s6[c] + b6 * t6[c])))


@intrinsic
def _address_as_pointer(typingctx, address, witness):
    """The integer ``address`` as a pointer to elements of ``witness``'s dtype (an array: the pointer
    type must be known when compiling)."""
    if not isinstance(address, types.Integer) or not isinstance(witness, types.Array):
        return None
    pointer = types.CPointer(witness.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, witness), codegen


def _unowned(a):  # pragma: no cover - a typing stub; the compiled version is the overload below
    """Inside the kernels: the memory of the C-contiguous array ``a`` as an array without an owner."""
    return a


@overload(_unowned, inline="always")
def _unowned_impl(a):
    """Every view of an array that has an owner (a row, a column block: dozens per row of the kernel)
    takes and drops a reference with an atomic add on the owner's count, the largest cost of a 640x10
    call (1.22x faster without them; RESULTS.md). Views of the same memory seen without an owner
    (``numba.carray``) skip that. Only valid while ``a`` itself is alive: the kernel applies it to its
    arguments, which the caller holds until the call returns. Arrays of another layout are returned as
    they are."""
    if not isinstance(a, types.Array):
        return None
    if a.layout != "C":
        return lambda a: a
    return lambda a: numba.carray(_address_as_pointer(a.ctypes.data, a), a.shape)


@_jit()
def _kernel(s, t, y, fpar, ipar, grad, out, start, stop):
    """Rows ``[start, stop)`` (:func:`_rows`) with their scratch: two allocations (each one costs
    microseconds when the allocator is out of cache)."""
    num_e, num_t = ipar[4], ipar[5]
    wide = np.empty(6 * num_e, dtype=np.float64)
    narrow = np.empty(2 * num_e * s.shape[1] + 3 * num_e + 2 * num_t, dtype=s.dtype)
    _rows(s, t, y, fpar, ipar, grad, out, start, stop, wide, narrow)


@_jit(fastmath=_FASTMATH)
def _rows(s, t, y, fpar, ipar, grad, out, start, stop, wide, narrow):
    """Rows ``[start, stop)``: per-row terms and flags into ``out`` (float64, ``(B + 1, 7)``), the gradient
    into ``grad`` when wanted (else ``grad`` may be empty). ``wide`` (float64, ``6 J``) and ``narrow``
    (the logits' dtype, ``2 J C + 3 J + 2 K``) are scratch.

    ``ipar = (teacher_swap, pseudo_on, detach, want_grad, J, K, ce_index, factor_a[J], factor_b[J],
    entry_of_temperature[K])``, ``factor_a[j] < 0`` for a root; ``fpar = (w_ce / B, w_teacher / B,
    w_pseudo / B, ce_weight, kd_weight, 1/T_entry[J], T[K], kd_on[K])`` (see :func:`_params`).
    """
    num_classes = s.shape[1]
    teacher_swap = ipar[0] != 0
    pseudo_on = ipar[1] != 0
    detach = ipar[2] != 0
    want_grad = ipar[3] != 0
    num_e = ipar[4]
    num_t = ipar[5]
    ce_index = ipar[6]
    fused = ipar[7] != 0
    factor_a = ipar[_I_SCALARS:_I_SCALARS + num_e]
    factor_b = ipar[_I_SCALARS + num_e:_I_SCALARS + 2 * num_e]
    entry_of = ipar[_I_SCALARS + 2 * num_e:_I_SCALARS + 2 * num_e + num_t]
    w_ce, w_teacher, w_pseudo, ce_weight, kd_weight = fpar[0], fpar[1], fpar[2], fpar[3], fpar[4]
    inv_e64 = fpar[_F_SCALARS:_F_SCALARS + num_e]
    temps = fpar[_F_SCALARS + num_e:_F_SCALARS + num_e + num_t]
    kd_on = fpar[_F_SCALARS + num_e + num_t:_F_SCALARS + num_e + 2 * num_t]
    # every array as memory without an owner, so that the views below take no references (the caller
    # holds the arguments until this returns)
    s, t, grad, wide, narrow = _unowned(s), _unowned(t), _unowned(grad), _unowned(wide), _unowned(narrow)
    z = wide[:2 * num_e]
    cross = wide[2 * num_e:3 * num_e]
    ratio_t = wide[3 * num_e:4 * num_e]  # exp((t_y - t_max) / T_entry)
    ratio_s = wide[4 * num_e:5 * num_e]  # exp(-(s_m - s_y) / T_entry) = q_y / q_m
    size_e = 2 * num_e * num_classes
    # entry j of the student in row j, of the teacher in row J + j (first: the allocation is aligned)
    e = narrow[:size_e].reshape((2 * num_e, num_classes))
    inv_e = narrow[size_e:size_e + num_e]
    coef = narrow[size_e + num_e:size_e + num_e + 2 * num_t]  # by temperature
    coef_e = narrow[size_e + num_e + 2 * num_t:]  # by entry (the fused gradient)
    for j in range(num_e):
        inv_e[j] = inv_e64[j]  # rounded once to the compute dtype
    zero = inv_e[0] - inv_e[0]  # 0 in the compute dtype (a literal 0 would promote float32 to float64)
    no_index = np.int32(num_classes)
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

        # every entry of the plan, one column block at a time: exponentials at the roots, products of
        # earlier entries (still in L1) for the rest, with the row sums and the teacher cross term; the
        # first argmax and the non-finite probe (sum x * 0 is NaN iff some x is NaN or inf) ride along
        # with entry 0, always a root
        for j in range(2 * num_e):
            z[j] = 0.0
        for j in range(num_e):
            cross[j] = 0.0
        s_first = no_index
        t_first = no_index
        probe_s = zero
        probe_t = zero
        for lo in range(0, num_classes, SUM_BLOCK):
            # slices per block: numba's range(lo, hi) over the full rows does not vectorise
            width = min(SUM_BLOCK, num_classes - lo)
            s_b = sr[lo:lo + width]
            t_b = tr[lo:lo + width]
            if fused:
                inv_b, inv_a = inv_e[0], inv_e[1]
                s_first, p_s = _fused_side(s_b, s_max, inv_b, inv_a, e, 0, lo, width, z, s_first, zero)
                t_first, p_t = _fused_side(t_b, t_max, inv_b, inv_a, e, num_e, lo, width, z, t_first, zero)
                _fused_cross(s_b, t_b, s_max, t_max, e, num_e, lo, width, cross, zero)
                probe_s += p_s
                probe_t += p_t
                continue
            for j in range(num_e):
                es_row = e[j]
                et_row = e[num_e + j]
                es_b = es_row[lo:lo + width]
                et_b = et_row[lo:lo + width]
                zs_b = zero
                zt_b = zero
                cr_b = zero
                if j == 0:
                    a = inv_e[0]
                    lo32 = np.int32(lo)
                    for c in range(np.int32(width)):  # int32 columns, as in _fused_side
                        us = s_b[c] - s_max
                        ut = t_b[c] - t_max
                        es = fast_exp(us * a)
                        et = fast_exp(ut * a)
                        es_b[c] = es
                        et_b[c] = et
                        zs_b += es
                        zt_b += et
                        cr_b += et * (ut - us)
                        s_first = _first_index(s_first, us == 0, lo32 + c)
                        t_first = _first_index(t_first, ut == 0, lo32 + c)
                        probe_s += s_b[c] * zero
                        probe_t += t_b[c] * zero
                elif factor_a[j] < 0:
                    a = inv_e[j]
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
                else:
                    fa = factor_a[j]
                    fb = factor_b[j]
                    row_sa = e[fa]
                    row_sb = e[fb]
                    row_ta = e[num_e + fa]
                    row_tb = e[num_e + fb]
                    sa_b = row_sa[lo:lo + width]
                    sb_b = row_sb[lo:lo + width]
                    ta_b = row_ta[lo:lo + width]
                    tb_b = row_tb[lo:lo + width]
                    for c in range(width):
                        es = sa_b[c] * sb_b[c]
                        et = ta_b[c] * tb_b[c]
                        es_b[c] = es
                        et_b[c] = et
                        zs_b += es
                        zt_b += et
                        cr_b += et * ((t_b[c] - t_max) - (s_b[c] - s_max))
                z[j] += zs_b
                z[num_e + j] += zt_b
                cross[j] += cr_b
        out[b, 4] = 0.0 if probe_s == 0 else 1.0
        out[b, 5] = 0.0 if probe_t == 0 else 1.0
        # NaN rows find no exact maximum: any in-range index keeps the reads below in bounds
        s_top = min(max(np.int64(s_first), 0), num_classes - 1)
        t_top = min(max(np.int64(t_first), 0), num_classes - 1)

        # per-row algebra (float64); the derivation is in backends._rows
        s_y = float(sr[label])
        gap = float(s_max) - s_y  # d = s_m - s_y >= 0
        teacher_gap = float(tr[label]) - float(t_max)  # <= 0
        swap_gap = float(sr[t_top]) - s_y
        # exp(gap / T) for every entry by the same plan (float64: a power-12 product loses ~3e-15); a
        # right row (gap 0) needs none
        ratios_t = teacher_swap and teacher_gap != 0.0
        ratios_s = pseudo_on and gap != 0.0
        for j in range(num_e):
            if factor_a[j] < 0:
                ratio_t[j] = math.exp(teacher_gap * inv_e64[j]) if ratios_t else 1.0
                ratio_s[j] = math.exp(-gap * inv_e64[j]) if ratios_s else 1.0
            else:
                ratio_t[j] = ratio_t[factor_a[j]] * ratio_t[factor_b[j]]
                ratio_s[j] = ratio_s[factor_a[j]] * ratio_s[factor_b[j]]
        ce = 0.0
        teacher = 0.0
        pseudo = 0.0
        at_t_top = 0.0
        at_target = -w_ce
        at_s_top = 0.0
        for k in range(num_t):
            j = entry_of[k]
            temp = temps[k]
            kd = kd_on[k]
            z_s = z[j]
            z_t = z[num_e + j]
            q_top = 1.0 / z_s
            r_t = 1.0 / z_t
            kl = cross[j] * r_t / temp + math.log(z_s / z_t)
            if teacher_swap:
                dp = (1.0 - ratio_t[j]) * r_t  # p_t[m_t] - p_t[y]
                kl += dp * swap_gap / temp
                at_t_top += w_teacher * kd * temp * dp
                at_target -= w_teacher * kd * temp * dp
            teacher += kd * temp * temp * kl
            if k == ce_index:
                ce = math.log(z_s) + gap
            cs = (w_teacher * kd * temp + (w_ce if k == ce_index else 0.0)) * q_top
            if pseudo_on:
                q_y = ratio_s[j] * q_top
                dq = q_top - q_y
                pseudo += kd * temp * dq * gap
                at_s_top += w_pseudo * kd * temp * dq
                at_target -= w_pseudo * kd * temp * dq
                if not detach:  # the path through swap(s): d (q_m e_m - q_y e_y - dq q)
                    cs -= w_pseudo * kd * gap * dq * q_top
                    at_s_top += w_pseudo * kd * gap * q_top
                    at_target -= w_pseudo * kd * gap * q_y
            coef[k] = cs
            coef[num_t + k] = -w_teacher * kd * temp * r_t
        out[b, 0] = ce_weight * ce + kd_weight * (teacher + pseudo)
        out[b, 1] = ce
        out[b, 2] = teacher
        out[b, 3] = pseudo

        if want_grad and fused:
            g = grad[b]
            for k in range(num_t):
                coef_e[entry_of[k]] = coef[k]
                coef_e[num_e + entry_of[k]] = coef[num_t + k]
            _fused_grad(g, e, num_e, coef_e[:num_e], coef_e[num_e:], num_classes)
            g[t_top] += at_t_top
            g[label] += at_target
            g[s_top] += at_s_top
        elif want_grad:
            # two temperatures per pass over g (half the traffic); the entries are in L1/L2 from above
            g = grad[b]
            j0 = entry_of[0]
            c0s = coef[0]
            c0t = coef[num_t]
            e0s = e[j0]
            e0t = e[num_e + j0]
            if num_t == 1:
                for c in range(num_classes):
                    g[c] = c0s * e0s[c] + c0t * e0t[c]
            else:
                j1 = entry_of[1]
                c1s = coef[1]
                c1t = coef[num_t + 1]
                e1s = e[j1]
                e1t = e[num_e + j1]
                for c in range(num_classes):
                    g[c] = (c0s * e0s[c] + c0t * e0t[c]) + (c1s * e1s[c] + c1t * e1t[c])
            for k in range(2, num_t - 1, 2):
                j1 = entry_of[k]
                j2 = entry_of[k + 1]
                c1s = coef[k]
                c1t = coef[num_t + k]
                c2s = coef[k + 1]
                c2t = coef[num_t + k + 1]
                e1s = e[j1]
                e1t = e[num_e + j1]
                e2s = e[j2]
                e2t = e[num_e + j2]
                for c in range(num_classes):
                    g[c] += (c1s * e1s[c] + c1t * e1t[c]) + (c2s * e2s[c] + c2t * e2t[c])
            if num_t > 2 and num_t % 2 == 1:
                j1 = entry_of[num_t - 1]
                cks = coef[num_t - 1]
                ckt = coef[2 * num_t - 1]
                e1s = e[j1]
                e1t = e[num_e + j1]
                for c in range(num_classes):
                    g[c] += cks * e1s[c] + ckt * e1t[c]
            # accumulate: two of the three positions may coincide (e.g. m_t == y)
            g[t_top] += at_t_top
            g[label] += at_target
            g[s_top] += at_s_top


@_jit()
def rows_to_sums(out):
    """Column sums of the per-row output ``out[:-1]`` in row order (the same result whatever the thread
    split) into the last row, the loss columns divided by the batch size."""
    batch = out.shape[0] - 1
    for j in range(out.shape[1]):
        out[batch, j] = 0.0
    for b in range(batch):
        for j in range(out.shape[1]):
            out[batch, j] += out[b, j]
    for j in range(LOSS_COLUMNS):
        out[batch, j] /= batch


@_jit()
def _one_thread(s, t, y, fpar, ipar, grad, out):
    """:func:`_kernel` over every row, then :func:`rows_to_sums`: one call from Python (each dispatch
    costs microseconds, tens of them with cold caches; so does returning a new array)."""
    _kernel(s, t, y, fpar, ipar, grad, out, 0, s.shape[0])
    rows_to_sums(out)


@_jit()
def _one_thread_at(s_at, t_at, y_at, grad_at, losses_at, batch, num_classes, witness, fpar, ipar):
    """:func:`_one_thread` on memory given by address (C-contiguous ``(B, C)`` logits and gradient of
    ``witness``'s dtype, ``(B,)`` int64 labels; ``grad_at = 0``: no gradient). Writes the four loss means
    in that dtype at ``losses_at`` and returns the flags as a bit mask (1 student non-finite, 2 teacher
    non-finite, 4 labels out of range)."""
    shape = (batch, num_classes)
    s = numba.carray(_address_as_pointer(s_at, witness), shape)
    t = numba.carray(_address_as_pointer(t_at, witness), shape)
    y = numba.carray(_address_as_pointer(y_at, np.empty(0, dtype=np.int64)), batch)
    grad = witness if grad_at == 0 else numba.carray(_address_as_pointer(grad_at, witness), shape)
    out = np.empty((batch + 1, LOSS_COLUMNS + FLAG_COLUMNS))
    _kernel(s, t, y, fpar, ipar, grad, out, 0, batch)
    rows_to_sums(out)
    losses = numba.carray(_address_as_pointer(losses_at, witness), LOSS_COLUMNS)
    for j in range(LOSS_COLUMNS):
        losses[j] = out[batch, j]
    flags = 0
    for j in range(FLAG_COLUMNS):
        if out[batch, LOSS_COLUMNS + j] > 0:
            flags |= 1 << j
    return flags


# ---------------------------------------------------------------- driver: constants, threads, one call

_EMPTY_GRAD = {np.dtype(np.float32): np.empty((0, 0), np.float32), np.dtype(np.float64): np.empty((0, 0))}
# Below this many logits one thread does the whole batch: handing rows to the pool costs ~30-50 us.
PARALLEL_ELEMENTS = 1 << 16
# Above it the rows go out in up to this many blocks per thread, each of at least BLOCK_ELEMENTS logits
# (a block's call costs a few microseconds).
BLOCKS_PER_THREAD = 8
BLOCK_ELEMENTS = 1 << 15


@functools.lru_cache(maxsize=64)
def _params(temperatures: tuple[float, ...], switches: tuple[bool, bool, bool, bool],
            weights: tuple[float, float, float], batch: int, ce_weight: float,
            kd_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """``(fpar, ipar)`` of :func:`_kernel` for one configuration and batch size (cached: building them
    costs more than a small call's arithmetic). ``switches = (teacher_swap, pseudo_on, detach,
    want_grad)``."""
    consts = row_constants(temperatures, xp=xp_numpy, dtype=np.float64, device="cpu")
    temps = [float(v) for v in consts.temperatures]
    plan = exp_plan(tuple(temps), MAX_POWER)
    num_e, num_t = len(plan.entry_temperature), len(temps)
    factor_a = [-1 if f is None else f[0] for f in plan.factors]
    factor_b = [-1 if f is None else f[1] for f in plan.factors]
    fused = plan.factors == _FUSED_FACTORS and sorted(plan.temperature_entry) == list(range(1, 7))
    ipar = np.array([*(int(bool(v)) for v in switches), num_e, num_t, consts.ce_index, int(fused), *factor_a,
                     *factor_b, *plan.temperature_entry], dtype=np.int64)
    w_ce, w_teacher, w_pseudo = weights
    fpar = np.array([w_ce / batch, w_teacher / batch, w_pseudo / batch, ce_weight, kd_weight,
                     *(1.0 / v for v in plan.entry_temperature), *temps, *(float(v) for v in consts.kd_on)])
    return fpar, ipar


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
    labels outside ``[0, C)``.

    Examples
    --------
    >>> import sld_core
    >>> s = np.array([[2.0, 1.0, 0.0]]); t = np.array([[0.0, 3.0, 1.0]]); grad = np.empty_like(s)
    >>> sums = fused_sums(s, t, np.array([0]), sld_core.SLDConfig(), False, (0.1, 0.9, 0.9), grad, 1)
    >>> round(float(sums[0]), 4), sums[4:].tolist()
    (1.8387, [0.0, 0.0, 0.0])
    """
    batch, num_classes = s.shape
    want_grad = grad is not None
    fpar, ipar = _params(config.temperatures, (config.teacher_swap, pseudo_on, config.detach_pseudo_teacher,
                                               want_grad),
                         weights if want_grad else (0.0, 0.0, 0.0), batch, config.ce_weight, config.kd_weight)
    grad_arg = grad if want_grad else _EMPTY_GRAD[s.dtype]
    out = np.empty((batch + 1, LOSS_COLUMNS + FLAG_COLUMNS))  # per row, then the sums
    workers = min(threads, batch) if batch * num_classes >= PARALLEL_ELEMENTS else 1
    if workers <= 1:
        _one_thread(s, t, y, fpar, ipar, grad_arg, out)
        return out[batch]
    # Row blocks handed out one at a time: a thread whose core is busy (torch's OpenMP workers spin for
    # milliseconds after a parallel op) takes fewer, instead of the whole call waiting for its half.
    blocks = max(workers, min(batch, BLOCKS_PER_THREAD * workers, batch * num_classes // BLOCK_ELEMENTS))
    bounds = [batch * i // blocks for i in range(blocks + 1)]
    taken = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while (i := next(taken)) < blocks:
            _kernel(s, t, y, fpar, ipar, grad_arg, out, bounds[i], bounds[i + 1])

    futures = [_executor(workers - 1).submit(work) for _ in range(workers - 1)]
    work()  # the calling thread works too
    for future in futures:
        future.result()
    rows_to_sums(out)
    return out[batch]


def fused_sums_at(s_at: int, t_at: int, y_at: int, grad_at: int, losses_at: int, batch: int,
                  num_classes: int, dtype: np.dtype, config: Any, pseudo_on: bool,
                  weights: tuple[float, float, float] | None) -> int:
    """:func:`fused_sums` on one thread for arrays given by their addresses (the torch path: a NumPy
    view of each tensor costs microseconds, tens with cold caches). ``s_at``, ``t_at``, ``grad_at``:
    C-contiguous ``(batch, num_classes)`` of ``dtype`` (``np.dtype`` float32 or float64; ``grad_at = 0``: no
    gradient), ``y_at``: ``(batch,)`` int64, ``losses_at``: 4 elements of ``dtype`` that receive
    ``(total, ce, teacher, pseudo)``. The caller keeps all of them alive during the call. Returns the
    flags as a bit mask: 1 student logits non-finite, 2 teacher logits non-finite, 4 a label outside
    ``[0, C)``.
    """
    want_grad = grad_at != 0
    fpar, ipar = _params(config.temperatures, (config.teacher_swap, pseudo_on, config.detach_pseudo_teacher,
                                               want_grad),
                         weights if want_grad else (0.0, 0.0, 0.0), batch, config.ce_weight, config.kd_weight)
    return _one_thread_at(s_at, t_at, y_at, grad_at, losses_at, batch, num_classes, _EMPTY_GRAD[dtype], fpar,
                          ipar)
