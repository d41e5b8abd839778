"""The per-backend fast paths against the generic core, the naive autograd reference
(``harness/bench/reference.py``) and a float64 loss written plainly below."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import backends
import sld_core
from backends import numpy_sld, torch_sld
from backends.cupy_sld import kernel_source
from harness.bench.reference import reference_sld_loss, reference_sld_loss_and_grad
from tests.reference import numeric_grad, ref_terms

TERMS = ("total", "ce", "teacher", "pseudo")
GAMMA = 150
# (epoch, teacher_swap, pseudo_teacher, detach_pseudo_teacher): every switch, before and after gamma
SETTINGS = list(itertools.product((1, GAMMA + 1), (True, False), (True, False), (False, True)))


def _id(p: tuple) -> str:
    epoch, swap, pseudo, detach = p
    return f"ep{epoch}-swap{int(swap)}-pseudo{int(pseudo)}-detach{int(detach)}"


def _config(swap: bool, pseudo: bool, detach: bool, **kw) -> sld_core.SLDConfig:
    return sld_core.SLDConfig(teacher_swap=swap, pseudo_teacher=pseudo, detach_pseudo_teacher=detach, **kw)


def plain_sld_loss(s: np.ndarray, t: np.ndarray, y: np.ndarray, epoch: int, cfg: sld_core.SLDConfig) -> dict:
    """The loss, row by row in float64, straight from the paper's definition."""
    s, t = s.astype(np.float64), t.astype(np.float64)

    def swap(z: np.ndarray, label: int) -> np.ndarray:
        z = z.copy()
        m = int(np.argmax(z))
        z[m], z[label] = z[label], z[m]
        return z

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max())
        return e / e.sum()

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.sum(p * (np.log(p) - np.log(q))))

    ce = teacher = pseudo = 0.0
    for row, label in zip(range(len(y)), y):
        ce += -np.log(softmax(s[row])[label])
        t_row = swap(t[row], label) if cfg.teacher_swap else t[row]
        for temp in cfg.temperatures:
            q = softmax(s[row] / temp)
            teacher += temp**2 * kl(softmax(t_row / temp), q)
            if cfg.pseudo_teacher and epoch > cfg.gamma:
                pseudo += temp**2 * kl(softmax(swap(s[row], label) / temp), q)
    n = len(y)
    out = {"ce": ce / n, "teacher": teacher / n, "pseudo": pseudo / n}
    out["total"] = cfg.ce_weight * out["ce"] + cfg.kd_weight * (out["teacher"] + out["pseudo"])
    return out


def _logits(batch: int, classes: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    t = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, classes, (batch,), generator=g)
    y[: batch // 3] = s[: batch // 3].argmax(1)  # a third of the rows already right
    return s.to(dtype), t.to(dtype), y


def _fused_autograd(s, t, y, epoch, cfg):
    leaf = s.detach().clone().requires_grad_(True)
    terms = torch_sld.sld_loss_fused(leaf, t, y, epoch=epoch, config=cfg)
    terms.total.backward()
    return sld_core.LossTerms(**{k: v.detach() for k, v in terms.as_dict().items()}), leaf.grad


def _rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float64)), torch.as_tensor(np.asarray(b, dtype=np.float64))
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


NUMBA = pytest.param("numba", marks=pytest.mark.skipif(backends._select.cpu_kernel_module() is None,
                                                        reason="numba is not installed"))


@pytest.fixture(params=["eager", NUMBA])
def small_chunks(request, monkeypatch):
    """The NumPy path on the compiled kernel, and eager with several row chunks even for small
    batches (so the chunk loop itself is tested)."""
    if request.param == "eager":
        monkeypatch.setattr(torch_sld, "SMALL_ELEMENTS", 0)
        monkeypatch.setattr(torch_sld, "CPU_CHUNK_ELEMENTS", 2 * 7 * 11 * 3)  # 3 rows of 11 classes, K=6(+1)
        monkeypatch.setattr(numpy_sld, "CHUNK_ELEMENTS", 2 * 7 * 11 * 3)
        monkeypatch.setattr(backends._select, "_forced", False)
    assert backends.implementation(np.zeros((2, 3)), with_grad=True) == request.param
    return request.param


@pytest.fixture(params=["small", "chunked", NUMBA])
def torch_path(request, monkeypatch):
    """Run a torch test through each CPU implementation: the compiled kernel, and with kernels bypassed
    each side of the eager size threshold: the one-shot small-problem path and the chunked path
    (several chunks, so the chunk loop is covered too)."""
    if request.param == "small":
        monkeypatch.setattr(torch_sld, "SMALL_ELEMENTS", 1 << 62)
    elif request.param == "chunked":
        monkeypatch.setattr(torch_sld, "SMALL_ELEMENTS", 0)
        monkeypatch.setattr(torch_sld, "CPU_CHUNK_ELEMENTS", 2 * 7 * 11 * 3)
    if request.param != "numba":
        monkeypatch.setattr(backends._select, "_forced", False)
    assert backends.implementation(torch.zeros(2, 3)) == ("numba" if request.param == "numba" else "eager")
    return request.param


# ---------------------------------------------------------------- torch fused vs core and reference


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_torch_fused_float64_matches_core_reference_and_plain(setting, torch_path):
    epoch, swap, pseudo, detach = setting
    cfg = _config(swap, pseudo, detach)
    s, t, y = _logits(10, 11)
    terms, grad = _fused_autograd(s, t, y, epoch, cfg)
    core_terms, core_grad = sld_core.sld_loss_and_grad(s, t, y, epoch=epoch, config=cfg)
    ref_terms, ref_grad = reference_sld_loss_and_grad(s, t, y, epoch=epoch, config=cfg)
    plain = plain_sld_loss(s.numpy(), t.numpy(), y.numpy(), epoch, cfg)
    for name in TERMS:
        got = getattr(terms, name).detach()
        assert got.dtype == torch.float64 and got.shape == ()
        np.testing.assert_allclose(float(got), float(getattr(core_terms, name)), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(float(got), float(ref_terms[name]), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(float(got), plain[name], rtol=1e-10, atol=1e-12)
    assert grad.dtype == torch.float64
    torch.testing.assert_close(grad, core_grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_torch_fused_float32_within_1e5_of_float64(setting, torch_path):
    epoch, swap, pseudo, detach = setting
    cfg = _config(swap, pseudo, detach)
    s, t, y = _logits(64, 100, seed=1)
    terms, grad = _fused_autograd(s.float(), t.float(), y, epoch, cfg)
    ref_terms, ref_grad = reference_sld_loss_and_grad(s, t, y, epoch=epoch, config=cfg)
    for name in TERMS:
        assert getattr(terms, name).dtype == torch.float32
        expected = float(ref_terms[name])
        assert abs(float(getattr(terms, name).detach()) - expected) <= 1e-5 * max(abs(expected), 1e-3), name
    assert grad.dtype == torch.float32
    assert _rel(grad, ref_grad) <= 1e-5


def test_loss_and_grad_fused_matches_autograd_path(torch_path):
    cfg = sld_core.SLDConfig()
    s, t, y = _logits(9, 13, seed=2)
    terms, grad = torch_sld.sld_loss_and_grad_fused(s, t, y, epoch=GAMMA + 1, config=cfg)
    terms2, grad2 = _fused_autograd(s, t, y, GAMMA + 1, cfg)
    assert not grad.requires_grad
    torch.testing.assert_close(grad, grad2, rtol=1e-14, atol=0)
    for name in TERMS:
        assert float(getattr(terms, name)) == pytest.approx(float(getattr(terms2, name).detach()), rel=1e-14)


@pytest.mark.parametrize("case", ["ties", "all_correct", "all_wrong"])
@pytest.mark.parametrize("detach", [False, True])
def test_torch_fused_edge_batches(case, detach, torch_path):
    cfg = _config(True, True, detach)
    g = torch.Generator().manual_seed(3)
    s = torch.randint(-2, 3, (24, 6), generator=g).double()  # small integers: many tied maxima
    t = torch.randint(-2, 3, (24, 6), generator=g).double()
    y = torch.randint(0, 6, (24,), generator=g)
    if case == "ties":
        y[:8] = 5 - s[:8].flip(1).argmax(1)  # the *last* tied maximum: wrong for "first index" argmax
    elif case == "all_correct":
        s = torch.randn(24, 6, generator=g, dtype=torch.float64)
        t = s + 0.1 * torch.randn(24, 6, generator=g, dtype=torch.float64)
        y = s.argmax(1)
        t[torch.arange(24), y] += 10  # teacher right as well
    else:
        s = torch.randn(24, 6, generator=g, dtype=torch.float64)
        t = torch.randn(24, 6, generator=g, dtype=torch.float64)
        y = (s.argmax(1) + 1) % 6
        t[torch.arange(24), (y + 1) % 6] += 10  # teacher wrong everywhere too
    terms, grad = _fused_autograd(s, t, y, GAMMA + 1, cfg)
    ref_terms, ref_grad = reference_sld_loss_and_grad(s, t, y, epoch=GAMMA + 1, config=cfg)
    for name in TERMS:
        assert float(getattr(terms, name)) == pytest.approx(float(ref_terms[name]), rel=1e-12, abs=1e-13)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-13)
    if case == "all_correct":
        assert float(terms.pseudo) == 0.0


@pytest.mark.parametrize("detach", [False, True])
def test_torch_fused_float32_large_logit_gaps(detach, torch_path):
    # logits ~30 apart: q and p span ~1e-13 at T=1, the squared exponentials sit far from 1 and the
    # float32 rounding of s - max is largest; still within 1e-5 of float64
    cfg = _config(True, True, detach)
    s, t, y = _logits(48, 37, seed=13)
    s, t = s * 10, t * 10
    terms, grad = _fused_autograd(s.float(), t.float(), y, GAMMA + 1, cfg)
    core_terms, core_grad = sld_core.sld_loss_and_grad(s, t, y, epoch=GAMMA + 1, config=cfg)
    for name in TERMS:
        expected = float(getattr(core_terms, name))
        assert abs(float(getattr(terms, name).detach()) - expected) <= 1e-5 * max(abs(expected), 1e-3), name
    assert _rel(grad, core_grad) <= 1e-5


def test_size_threshold_picks_the_path(monkeypatch):
    monkeypatch.setattr(backends._select, "_forced", False)  # the threshold splits the eager paths
    calls = []
    real = torch_sld._fused_small
    monkeypatch.setattr(torch_sld, "_fused_small", lambda *a: calls.append(a[0].shape) or real(*a))
    n = torch_sld.SMALL_ELEMENTS
    for shape in [(1, n), (n // 64 + 1, 64)]:
        s, t, y = _logits(*shape, seed=14, dtype=torch.float32)
        _fused_autograd(s, t, y, GAMMA + 1, sld_core.SLDConfig())
    assert calls == [torch.Size([1, n])]


def test_temperatures_without_one_and_weights(torch_path):
    cfg = sld_core.SLDConfig(temperatures=(2.0, 4.0, 0.5), ce_weight=0.3, kd_weight=1.7, gamma=0)
    s, t, y = _logits(7, 9, seed=4)
    terms, grad = _fused_autograd(s, t, y, 1, cfg)
    ref_terms, ref_grad = reference_sld_loss_and_grad(s, t, y, epoch=1, config=cfg)
    for name in TERMS:
        assert float(getattr(terms, name)) == pytest.approx(float(ref_terms[name]), rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)


def test_gradcheck_every_term(torch_path):
    # not detached: the analytic gradient is the true derivative (detached it is, by design, not)
    cfg = _config(True, True, False, gamma=0)
    g = torch.Generator().manual_seed(5)
    # well-separated logits so the 1e-6 perturbations never flip an argmax
    s = (torch.randperm(20, generator=g).double().view(4, 5) * 0.7).requires_grad_(True)
    t = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])

    def terms(x):
        out = torch_sld.sld_loss_fused(x, t, y, epoch=1, config=cfg)
        return out.total, out.ce, out.teacher, out.pseudo

    assert torch.autograd.gradcheck(terms, (s,), eps=1e-6, atol=1e-7)


def test_per_term_backward_and_grad_output_scaling(torch_path):
    cfg = sld_core.SLDConfig(gamma=0)
    s, t, y = _logits(6, 8, seed=6)
    leaf = s.clone().requires_grad_(True)
    out = torch_sld.sld_loss_fused(leaf, t, y, epoch=1, config=cfg)
    (3.0 * out.total - 2.0 * out.teacher + 0.5 * out.pseudo + out.ce).backward()
    ref_leaf = s.clone().requires_grad_(True)
    ref = reference_sld_loss(ref_leaf, t, y, epoch=1, config=cfg)
    (3.0 * ref["total"] - 2.0 * ref["teacher"] + 0.5 * ref["pseudo"] + ref["ce"]).backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-12, atol=1e-14)


def test_scaled_and_repeated_backward(torch_path):
    # a seed other than 1 scales the saved gradient; a second backward (retain_graph) recomputes it
    cfg = sld_core.SLDConfig(gamma=0)
    s, t, y = _logits(6, 8, seed=15)
    _, ref_grad = reference_sld_loss_and_grad(s, t, y, epoch=1, config=cfg)
    leaf = s.clone().requires_grad_(True)
    out = torch_sld.sld_loss_fused(leaf, t, y, epoch=1, config=cfg)
    (2.5 * out.total).backward(retain_graph=True)
    torch.testing.assert_close(leaf.grad, 2.5 * ref_grad, rtol=1e-12, atol=1e-14)
    out.total.backward(retain_graph=True)
    out.total.backward()
    torch.testing.assert_close(leaf.grad, 4.5 * ref_grad, rtol=1e-12, atol=1e-14)


def test_functorch_transforms_get_the_autograd_function_wrapper(torch_path, monkeypatch):
    # the fused call skips autograd.Function.apply's Python wrapper only when no functorch transform is
    # active; under one the wrapper runs and says what the Function lacks, as it would without the skip
    s, t, y = _logits(4, 5, seed=3)
    wrapper_calls = []
    original = torch_sld._SLDFunction.apply.__func__
    monkeypatch.setattr(torch_sld._SLDFunction, "apply",
                        classmethod(lambda cls, *a: wrapper_calls.append(1) or original(cls, *a)))
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda x: torch_sld.sld_loss_fused(x, t, y, epoch=1).total)(s)
    assert wrapper_calls == [1]
    leaf = s.clone().requires_grad_(True)
    torch_sld.sld_loss_fused(leaf, t, y, epoch=1).total.backward()  # outside a transform: the C entry
    assert wrapper_calls == [1]
    _, ref_grad = reference_sld_loss_and_grad(s, t, y, epoch=1)
    torch.testing.assert_close(leaf.grad, ref_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_and_autocast(half, torch_path):
    cfg = sld_core.SLDConfig(gamma=0)
    g = torch.Generator().manual_seed(7)
    features = torch.randn(32, 16, generator=g)
    layer = torch.nn.Linear(16, 10)
    t = torch.randn(32, 10, generator=g).to(half)
    y = torch.randint(0, 10, (32,), generator=g)
    with torch.autocast("cpu", dtype=half):
        logits = layer(features)
        assert logits.dtype == half
        logits.retain_grad()
        terms = torch_sld.sld_loss_fused(logits, t, y, epoch=1, config=cfg)
    terms.total.backward()
    assert all(getattr(terms, n).dtype == torch.float32 for n in TERMS)
    assert logits.grad.dtype == half
    # the same values upcast first: the fused path computes in float32, so it agrees to float32 accuracy
    ref_terms, ref_grad = reference_sld_loss_and_grad(logits.detach().double(), t.double(), y, epoch=1,
                                                      config=cfg)
    assert float(terms.total.detach()) == pytest.approx(float(ref_terms["total"]), rel=1e-5)
    torch.testing.assert_close(logits.grad.float(), ref_grad.to(half).float(), rtol=1e-2, atol=1e-4)
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_teacher_gets_no_gradient_and_module_wrapper(torch_path):
    module = torch_sld.SLDLoss(sld_core.SLDConfig(gamma=0))
    s, t, y = _logits(5, 7, seed=8, dtype=torch.float32)
    s.requires_grad_(True)
    t.requires_grad_(True)
    terms = module(s, t, y, epoch=1)
    assert isinstance(terms, sld_core.LossTerms)
    terms.total.backward()
    assert s.grad is not None and t.grad is None
    assert "gamma=0" in repr(module)


def test_check_targets_false_skips_the_range_check(monkeypatch):
    seen = []
    real = sld_core.validate_inputs

    def spy(*args, **kwargs):
        seen.append(kwargs["check_targets"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sld_core, "validate_inputs", spy)
    monkeypatch.setattr(backends._select, "_forced", False)  # eager: the core checks the values first
    s, t, y = _logits(4, 5, dtype=torch.float32)
    torch_sld.SLDLoss()(s, t, y, epoch=1)  # the module checks by default, like the functions
    torch_sld.SLDLoss(check_targets=False)(s, t, y, epoch=1)  # the sync-free setting, asked for
    torch_sld.sld_loss_fused(s, t, y, epoch=1)
    assert seen == [True, False, True]


def test_bad_inputs_raise_the_core_errors():
    s, t, y = _logits(4, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="same shape"):
        torch_sld.sld_loss_fused(s, t[:, :4], y, epoch=1)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        torch_sld.sld_loss_fused(s, t, y + 5, epoch=1)
    with pytest.raises(TypeError, match="real floating"):
        numpy_sld.sld_loss_and_grad_numpy(np.ones((4, 5), dtype=np.int64), t.numpy(), y.numpy(), epoch=1)


# ---------------------------------------------------------------- NumPy path


@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
def test_numpy_path_matches_core(setting, small_chunks):
    epoch, swap, pseudo, detach = setting
    cfg = _config(swap, pseudo, detach)
    s, t, y = (a.numpy() for a in _logits(10, 11, seed=9))
    s_before, t_before = s.copy(), t.copy()
    terms, grad = numpy_sld.sld_loss_and_grad_numpy(s, t, y, epoch=epoch, config=cfg)
    core_terms, core_grad = sld_core.sld_loss_and_grad(s, t, y, epoch=epoch, config=cfg)
    for name in TERMS:
        np.testing.assert_allclose(getattr(terms, name), getattr(core_terms, name), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad, core_grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(s, s_before)  # the caller's arrays are never written
    np.testing.assert_array_equal(t, t_before)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numpy_path_dtypes(dtype):
    cfg = sld_core.SLDConfig(gamma=0)
    s, t, y = (a.numpy() for a in _logits(64, 100, seed=10))
    s, t = s.astype(dtype), t.astype(dtype)
    terms, grad = numpy_sld.sld_loss_and_grad_numpy(s, t, y, epoch=1, config=cfg)
    ref_terms, ref_grad = sld_core.sld_loss_and_grad(s.astype(np.float64), t.astype(np.float64), y,
                                                     epoch=1, config=cfg)
    assert grad.dtype == dtype and np.asarray(terms.total).dtype == np.float32
    assert float(terms.total) == pytest.approx(float(ref_terms.total), rel=1e-5)
    if dtype == np.float32:
        assert _rel(grad, ref_grad) <= 1e-5


@pytest.mark.parametrize("path", ["small", "chunked", "numba"], ids=["torch_small", "torch_chunked", "numba"])
@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 9), classes=st.integers(2, 12), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.1, 3.0, 30.0]))
def test_fused_paths_agree_with_core_property(path, batch, classes, seed, scale):
    if path == "numba" and backends._select.cpu_kernel_module() is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((batch, classes)) * scale
    t = rng.standard_normal((batch, classes)) * scale
    y = rng.integers(0, classes, batch)
    cfg = sld_core.SLDConfig(gamma=0)
    core_terms, core_grad = sld_core.sld_loss_and_grad(s, t, y, epoch=1, config=cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_sld, "SMALL_ELEMENTS", (1 << 62) if path == "small" else 0)
        mp.setattr(backends._select, "_forced", path == "numba")
        np_terms, np_grad = numpy_sld.sld_loss_and_grad_numpy(s, t, y, epoch=1, config=cfg)
        th_terms, th_grad = torch_sld.sld_loss_and_grad_fused(torch.as_tensor(s), torch.as_tensor(t),
                                                              torch.as_tensor(y), epoch=1, config=cfg)
    np.testing.assert_allclose(np_grad, core_grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(th_grad.numpy(), core_grad, rtol=1e-9, atol=1e-12)
    for name in TERMS:
        np.testing.assert_allclose(float(getattr(np_terms, name)), float(getattr(core_terms, name)),
                                   rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(float(getattr(th_terms, name)), float(getattr(core_terms, name)),
                                   rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- routing


def test_backend_name_and_routing():
    import array_api_strict as xs
    import jax.numpy as jnp

    s, t, y = _logits(4, 5, dtype=torch.float32)
    assert backends.backend_name(s) == "torch"
    assert backends.backend_name(s.numpy()) == "numpy"
    assert backends.backend_name(xs.asarray(s.numpy())) == "array_api_strict"
    assert backends.backend_name(jnp.asarray(s.numpy())) == "jax"
    assert backends.backend_name([1.0]) == "other"
    assert backends.fast_path(s) is torch_sld.sld_loss_fused
    assert backends.fast_path(s, with_grad=True) is torch_sld.sld_loss_and_grad_fused
    assert backends.fast_path(s.numpy()) is numpy_sld.sld_loss_numpy
    assert backends.fast_path(s.numpy(), with_grad=True) is numpy_sld.sld_loss_and_grad_numpy
    assert backends.fast_path(jnp.asarray(s.numpy()), with_grad=True) is sld_core.sld_loss_and_grad


@pytest.mark.parametrize("lib", ["torch", "numpy", "array_api_strict"])
def test_routed_results_match_core(lib):
    import array_api_strict as xs

    s, t, y = _logits(6, 7, seed=11)
    convert = {"torch": lambda a: a, "numpy": lambda a: a.numpy(),
               "array_api_strict": lambda a: xs.asarray(a.numpy())}[lib]
    s, t, y = convert(s), convert(t), convert(y)
    terms, grad = backends.sld_loss_and_grad(s, t, y, epoch=GAMMA + 1)
    loss_terms = backends.sld_loss(s, t, y, epoch=GAMMA + 1)
    core_terms, core_grad = sld_core.sld_loss_and_grad(s, t, y, epoch=GAMMA + 1)
    assert type(grad) is type(core_grad)  # no silent fall back to another library
    np.testing.assert_allclose(np.asarray(grad), np.asarray(core_grad), rtol=1e-12, atol=1e-14)
    for name in TERMS:
        assert float(getattr(terms, name)) == pytest.approx(float(getattr(core_terms, name)), rel=1e-12)
        assert float(getattr(loss_terms, name)) == pytest.approx(float(getattr(core_terms, name)), rel=1e-12)


def test_importing_backends_imports_no_framework():
    code = ("import sys, numpy, backends; import backends.numpy_sld; "
            "bad = [m for m in ('torch', 'jax', 'cupy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- CuPy kernel


def test_cupy_kernel_source_has_the_config_constants():
    source, order = kernel_source((2.0, 4.0), "float")
    assert order == (2.0, 4.0, 1.0)
    assert "#define NUM_T 3" in source and "#define CE_INDEX 2" in source
    assert "KD_ON[NUM_T] = {1.0, 1.0, 0.0}" in source and "typedef float real;" in source


def _cupy():
    from backends.cupy_sld import kernel_available

    ok, reason = kernel_available()
    if not ok:
        pytest.skip(reason)
    import cupy

    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("setting", SETTINGS, ids=_id)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_kernel_matches_core(setting, dtype):
    cupy = _cupy()
    from backends.cupy_sld import sld_loss_and_grad_cupy

    epoch, swap, pseudo, detach = setting
    cfg = _config(swap, pseudo, detach)
    s, t, y = (a.numpy() for a in _logits(37, 300, seed=12))
    s, t = s.astype(dtype), t.astype(dtype)
    terms, grad = sld_loss_and_grad_cupy(cupy.asarray(s), cupy.asarray(t), cupy.asarray(y), epoch=epoch,
                                         config=cfg)
    core_terms, core_grad = sld_core.sld_loss_and_grad(s.astype(np.float64), t.astype(np.float64), y,
                                                       epoch=epoch, config=cfg)
    tol = 1e-10 if dtype == "float64" else 1e-5
    assert isinstance(grad, cupy.ndarray) and grad.dtype == dtype
    assert _rel(cupy.asnumpy(grad), core_grad) <= tol
    for name in TERMS:
        expected = float(getattr(core_terms, name))
        assert abs(float(getattr(terms, name)) - expected) <= tol * max(abs(expected), 1e-3), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_kernel_clamps_unchecked_out_of_range_labels(dtype):
    # check_targets=False: the kernel never indexes a row with an unclamped label; the numbers are
    # those of the clipped labels (float64 reference written plainly in tests/reference.py).
    cupy = _cupy()
    from backends.cupy_sld import sld_loss_and_grad_cupy

    rng = np.random.default_rng(21)
    s, t = (rng.normal(scale=3.0, size=(6, 11)).astype(dtype) for _ in range(2))
    bad = rng.integers(0, 11, size=6)
    bad[0], bad[1], bad[2] = -1, 11, 10**6
    clipped = np.clip(bad, 0, 10)
    s64, t64 = s.astype(np.float64), t.astype(np.float64)
    args = (cupy.asarray(s), cupy.asarray(t), cupy.asarray(bad))
    terms, grad = sld_loss_and_grad_cupy(*args, epoch=GAMMA + 1, check_targets=False)
    expected = ref_terms(s64, t64, clipped, epoch=GAMMA + 1)
    want_grad = numeric_grad(lambda x: ref_terms(x, t64, clipped, epoch=GAMMA + 1)["total"], s64)
    rtol, atol = (1e-9, 1e-9) if dtype == "float64" else (1e-5, 1e-6)
    for name in TERMS:
        assert float(getattr(terms, name)) == pytest.approx(expected[name], rel=rtol, abs=atol), name
    np.testing.assert_allclose(cupy.asnumpy(grad), want_grad, rtol=max(rtol, 1e-6), atol=atol)
    np.testing.assert_array_equal(cupy.asnumpy(args[2]), bad)  # the caller's labels are not clamped
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 11\); got values from -1 to 1000000"):
        sld_loss_and_grad_cupy(*args, epoch=GAMMA + 1)


@pytest.mark.gpu
def test_cupy_routing_and_ties():
    cupy = _cupy()
    from backends.cupy_sld import sld_loss_and_grad_cupy

    s = np.random.default_rng(0).integers(-2, 3, (40, 600)).astype(np.float32)  # ties across threads
    t = np.random.default_rng(1).integers(-2, 3, (40, 600)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 600, 40)
    assert backends.fast_path(cupy.asarray(s), with_grad=True) is sld_loss_and_grad_cupy
    s_gpu, t_gpu, y_gpu = cupy.asarray(s), cupy.asarray(t), cupy.asarray(y)
    terms, grad = backends.sld_loss_and_grad(s_gpu, t_gpu, y_gpu, epoch=GAMMA + 1)
    core_terms, core_grad = sld_core.sld_loss_and_grad(s.astype(np.float64), t.astype(np.float64), y,
                                                       epoch=GAMMA + 1)
    assert _rel(cupy.asnumpy(grad), core_grad) <= 1e-5
    assert float(terms.total) == pytest.approx(float(core_terms.total), rel=1e-5)
