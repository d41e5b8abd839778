"""The CPU kernel's own parts (``backends.cpu_kernel``) and the fast paths' call machinery: the float32
``exp`` against float64, the fused loop of the official temperatures against the generic plan loops,
the torch path's two ways into the kernel (by address on one thread, NumPy views for the pool),
odd memory layouts, and the remembered layout checks. The float64 references are NumPy's and
``sld_core``'s; the kernel's results are never compared with themselves except where bit equality
across two ways of calling it is the point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import backends
import sld_core
from backends import _checks, _select, torch_sld

pytestmark = pytest.mark.skipif(_select._optional("numba") is None, reason="numba is not installed")
TERMS = ("total", "ce", "teacher", "pseudo")
GAMMA = 150


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(_select, "_forced", True)
    from backends import cpu_kernel

    return cpu_kernel


def logits(b, c, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((b, c)) * 3
    t = rng.standard_normal((b, c)) * 3
    y = rng.integers(0, c, b)
    y[: b // 3] = s[: b // 3].argmax(1)
    return s.astype(dtype), t.astype(dtype), y


def core64(s, t, y, config=None):
    terms, grad = sld_core.sld_loss_and_grad(np.asarray(s, np.float64), np.asarray(t, np.float64), y,
                                             epoch=GAMMA + 1, config=config)
    return np.array([float(getattr(terms, k)) for k in TERMS]), np.asarray(grad)


def test_float32_exp_within_3e7_of_float64(kernel):
    import numba

    @numba.njit(fastmath=kernel._FASTMATH)
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = kernel.fast_exp(x[i])

    x = np.concatenate([-np.linspace(0.0, 87.0, 400_001), -np.random.default_rng(0).uniform(0, 87, 400_000),
                        [0.0, -1e-30, -103.0, -1e30]]).astype(np.float32)
    out = np.empty_like(x)
    run(x, out)
    ref = np.exp(np.maximum(x.astype(np.float64), -87.0))  # the documented clamp at -87
    assert np.abs(out / ref - 1.0).max() <= 3e-7
    assert out[-4] == 1.0  # exp(0) exactly: the row maxima contribute exactly 1 to every sum


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 2e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(3, 5), (7, 513), (2, 1300)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_official_fused_loop_matches_generic_plan_loops(kernel, monkeypatch, dtype, rtol, shape):
    s, t, y = logits(*shape, seed=shape[1], dtype=dtype)
    config = sld_core.SLDConfig(detach_pseudo_teacher=shape[1] == 513)

    def run():
        kernel._params.cache_clear()
        grad = np.empty_like(s)
        sums = kernel.fused_sums(s, t, y, config, True, (0.1, 0.9, 0.9), grad, 1)
        return sums.copy(), grad

    fused_sums, fused_grad = run()
    monkeypatch.setattr(kernel, "_FUSED_FACTORS", ())  # no plan matches: the generic loops run
    generic_sums, generic_grad = run()
    kernel._params.cache_clear()
    np.testing.assert_allclose(fused_sums, generic_sums, rtol=rtol, atol=0)
    np.testing.assert_allclose(fused_grad, generic_grad, rtol=0, atol=rtol * np.abs(generic_grad).max())
    want_terms, want_grad = core64(s, t, y, config)  # and both against the float64 core
    np.testing.assert_allclose(fused_sums[:4], want_terms, rtol=max(rtol, 1e-12) * 5)
    assert np.abs(fused_grad - want_grad).max() <= 5 * max(rtol, 1e-12) * np.abs(want_grad).max()


def test_fused_sums_at_reads_the_same_memory_as_fused_sums(kernel):
    s, t, y = logits(6, 37, seed=1, dtype=np.float32)
    config = sld_core.SLDConfig()
    grad_a, grad_b = np.empty_like(s), np.empty_like(s)
    sums = kernel.fused_sums(s, t, y, config, True, (0.1, 0.9, 0.9), grad_a, 1)
    losses = np.empty(4, np.float32)
    f32 = np.dtype(np.float32)
    flags = kernel.fused_sums_at(s.ctypes.data, t.ctypes.data, y.ctypes.data, grad_b.ctypes.data,
                                 losses.ctypes.data, 6, 37, f32, config, True, (0.1, 0.9, 0.9))
    assert flags == 0
    np.testing.assert_array_equal(grad_a, grad_b)
    np.testing.assert_array_equal(losses, sums[:4].astype(np.float32))
    s[2, 3], t[1, 1] = np.nan, np.inf
    y[0] = 37
    losses_only = kernel.fused_sums_at(s.ctypes.data, t.ctypes.data, y.ctypes.data, 0, losses.ctypes.data, 6,
                                       37, f32, config, True, None)
    assert losses_only == 1 | 2 | 4  # student non-finite, teacher non-finite, a label out of range


@pytest.mark.parametrize("threads", [2, 3])
def test_rows_handed_out_in_many_blocks_give_the_same_numbers(kernel, monkeypatch, threads):
    s, t, y = logits(23, 40, seed=5, dtype=np.float32)
    config = sld_core.SLDConfig()

    def run(n):
        grad = np.empty_like(s)
        return kernel.fused_sums(s, t, y, config, True, (0.1, 0.9, 0.9), grad, n).copy(), grad

    single = run(1)
    monkeypatch.setattr(kernel, "PARALLEL_ELEMENTS", 0)
    monkeypatch.setattr(kernel, "BLOCK_ELEMENTS", 40)  # one row per block: 23 blocks over the threads
    pooled = run(threads)
    np.testing.assert_array_equal(single[0], pooled[0])  # the row sums run in row order after the pool
    np.testing.assert_array_equal(single[1], pooled[1])


def test_torch_by_address_and_through_the_pool_agree_bit_for_bit(kernel, monkeypatch):
    s, t, y = logits(9, 300, seed=2, dtype=np.float32)

    def run(threads):
        backends.set_num_threads(threads)
        try:
            leaf = torch.from_numpy(s.copy()).requires_grad_(True)
            terms = torch_sld.sld_loss_fused(leaf, torch.from_numpy(t), torch.from_numpy(y), epoch=GAMMA + 1)
            terms.total.backward()
        finally:
            backends.set_num_threads(None)
        return torch.stack([getattr(terms, k).detach() for k in TERMS]).numpy(), leaf.grad.numpy()

    by_address = run(1)
    monkeypatch.setattr(kernel, "PARALLEL_ELEMENTS", 0)  # split even this small batch over the pool
    pooled = run(3)
    np.testing.assert_array_equal(by_address[0], pooled[0])
    np.testing.assert_array_equal(by_address[1], pooled[1])
    want_terms, want_grad = core64(s, t, y)
    np.testing.assert_allclose(by_address[0], want_terms, rtol=1e-5)
    assert np.abs(by_address[1] - want_grad).max() <= 1e-5 * np.abs(want_grad).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_torch_non_contiguous_inputs(kernel, dtype):
    s, t, y = logits(8, 13, seed=3)
    # transposed logits, every other label of a longer int64 tensor: neither is contiguous
    s_view = torch.from_numpy(np.ascontiguousarray(s.T)).to(dtype).T.requires_grad_(True)
    t_view = torch.from_numpy(np.ascontiguousarray(t.T)).to(dtype).T
    y_view = torch.from_numpy(np.repeat(y, 2))[::2]
    assert not (s_view.is_contiguous() or t_view.is_contiguous() or y_view.is_contiguous())
    terms = torch_sld.sld_loss_fused(s_view, t_view, y_view, epoch=GAMMA + 1)
    terms.total.backward()
    rounded = [torch.from_numpy(a).to(dtype).double().numpy() for a in (s, t)]
    want_terms, want_grad = core64(*rounded, y)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose([float(getattr(terms, k).detach()) for k in TERMS], want_terms, rtol=rtol)
    assert s_view.grad.dtype == dtype
    assert np.abs(s_view.grad.double().numpy() - want_grad).max() <= rtol * np.abs(want_grad).max()


def test_layout_checks_run_once_per_layout_and_bad_layouts_always_raise(kernel, monkeypatch):
    calls = []
    real = sld_core.validate_inputs

    def spy(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(sld_core, "validate_inputs", spy)
    monkeypatch.setattr(_checks, "_PASSED", set())
    s, t, y = (torch.from_numpy(a) for a in logits(4, 7, seed=4, dtype=np.float32))
    for _ in range(3):
        torch_sld.sld_loss_fused(s, t, y, epoch=1)
    torch_sld.sld_loss_fused(s[:3], t[:3], y[:3], epoch=1)
    assert calls == [(4, 7), (3, 7)]
    for _ in range(2):
        with pytest.raises(ValueError, match="same shape"):
            torch_sld.sld_loss_fused(s, t[:, :5], y, epoch=1)
        with pytest.raises(TypeError, match="integer dtype"):
            torch_sld.sld_loss_fused(s, t, y.float(), epoch=1)
    assert calls[2:] == [(4, 7)] * 4  # a failing layout is never remembered


def test_remembered_layouts_are_bounded(monkeypatch):
    monkeypatch.setattr(_checks, "_PASSED", set())
    monkeypatch.setattr(_checks, "_MAX_LAYOUTS", 3)
    for b in range(1, 8):
        _checks.check_structure(np.zeros((b, 3)), np.zeros((b, 3)), np.zeros(b, dtype=np.int64))
        assert len(_checks._PASSED) <= 3
