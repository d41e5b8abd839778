"""Every implementation of the fused SLD loss + gradient against the float64 core and the plain
references of ``tests/reference.py``: eager torch (small and chunked), the numba CPU kernel (torch and
NumPy), the NumPy eager fallback, and the Triton kernel under Triton's interpreter (CPU tensors).

float64 within 1e-12, float32 within 1e-5 relative; mixed / tied / all-correct / all-wrong batches;
B = 1, C = 2, C not a multiple of any block, C = 1000 and 21841; both detach settings, teacher swap and
pseudo-teacher off, before and after gamma, half inputs; the strict input semantics (non-finite
logits, unchecked out-of-range labels, epoch, integer label dtypes) on every path.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import backends
import sld_core
from backends import _select, numpy_sld, torch_sld
from tests.reference import ref_terms

TERMS = ("total", "ce", "teacher", "pseudo")
GAMMA = 150
HAS_NUMBA = _select._optional("numba") is not None
HAS_TRITON = _select._optional("triton") is not None


@pytest.fixture(scope="module")
def triton_interpreted():
    """``backends.triton_sld`` running under Triton's interpreter (tests/conftest.py switches it on
    when there is no CUDA device, before triton is imported)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a CUDA device is present: the Triton kernel is tested on it (test_triton_on_cuda)")
    from backends import triton_sld

    return triton_sld


PATHS = [
    "torch-small",
    "torch-chunked",
    pytest.param("torch-numba", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")),
    pytest.param("torch-triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")),
    "numpy-eager",
    pytest.param("numpy-numba", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")),
]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Select one implementation; the returned name says which (and the routing is asserted)."""
    name = request.param
    monkeypatch.setattr(_select, "_forced", name.endswith("numba") or name == "torch-triton")
    if name == "torch-small":
        monkeypatch.setattr(torch_sld, "SMALL_ELEMENTS", 1 << 62)
    elif name == "torch-chunked":
        monkeypatch.setattr(torch_sld, "SMALL_ELEMENTS", 0)
        monkeypatch.setattr(torch_sld, "CPU_CHUNK_ELEMENTS", 2 * 7 * 13 * 3)  # a few rows per chunk
    elif name == "numpy-eager":
        monkeypatch.setattr(numpy_sld, "CHUNK_ELEMENTS", 2 * 7 * 13 * 3)
    elif name == "torch-triton":
        module = request.getfixturevalue("triton_interpreted")
        monkeypatch.setattr(module, "TILE_ELEMENTS", 8 * 16)  # several column tiles even at C = 37
        monkeypatch.setattr(torch_sld, "triton_module", lambda: module)
        monkeypatch.setattr(torch_sld, "implementation", lambda s, numeric_weights=True:
                            "triton" if numeric_weights else "eager")
    expected = {"torch-small": "eager", "torch-chunked": "eager", "numpy-eager": "eager",
                "torch-numba": "numba", "numpy-numba": "numba", "torch-triton": "triton"}[name]
    probe = np.zeros((2, 3)) if name.startswith("numpy") else torch.zeros(2, 3)
    assert backends.implementation(probe, with_grad=True) == expected
    return name


def run(path: str, s: np.ndarray, t: np.ndarray, y: np.ndarray, *, epoch=GAMMA + 1, config=None,
        check_targets=True, dtype=None):
    """Loss terms (floats) and the gradient (float64 NumPy) of one path; torch paths go through the
    autograd Function (forward + ``total.backward()``), as a training step does."""
    config = sld_core.SLDConfig() if config is None else config
    if path.startswith("numpy"):
        sa = s if dtype is None else s.astype(dtype)
        ta = t if dtype is None else t.astype(dtype)
        terms, grad = numpy_sld.sld_loss_and_grad_numpy(sa, ta, y, epoch=epoch, config=config,
                                                        check_targets=check_targets)
        assert grad.dtype == sa.dtype and isinstance(grad, np.ndarray)
        return {k: float(getattr(terms, k)) for k in TERMS}, grad.astype(np.float64)
    tdtype = {None: None, np.float32: torch.float32, np.float64: torch.float64, np.float16: torch.float16,
              "bfloat16": torch.bfloat16}[dtype]
    leaf = torch.as_tensor(s) if tdtype is None else torch.as_tensor(s).to(tdtype)
    leaf = leaf.clone().requires_grad_(True)
    teacher = torch.as_tensor(t) if tdtype is None else torch.as_tensor(t).to(tdtype)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # the interpreter's padding lanes
        terms = torch_sld.sld_loss_fused(leaf, teacher, torch.as_tensor(y), epoch=epoch, config=config,
                                         check_targets=check_targets)
        terms.total.backward()
    assert leaf.grad.dtype == leaf.dtype
    return {k: float(getattr(terms, k).detach()) for k in TERMS}, leaf.grad.double().numpy()


def core64(s, t, y, *, epoch=GAMMA + 1, config=None):
    config = sld_core.SLDConfig() if config is None else config
    terms, grad = sld_core.sld_loss_and_grad(np.asarray(s, np.float64), np.asarray(t, np.float64),
                                             np.asarray(y), epoch=epoch, config=config)
    return {k: float(getattr(terms, k)) for k in TERMS}, np.asarray(grad)


def assert_close(got, want, rtol):
    terms, grad = got
    want_terms, want_grad = want
    for k in TERMS:
        assert abs(terms[k] - want_terms[k]) <= rtol * max(abs(want_terms[k]), 1e-3), k
    assert np.abs(grad - want_grad).max() <= rtol * max(np.abs(want_grad).max(), 1e-30)


def batch(kind: str, b: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "ties":
        s = rng.integers(-2, 3, (b, c)).astype(np.float64)
        t = rng.integers(-2, 3, (b, c)).astype(np.float64)
        y = rng.integers(0, c, b)
        y[: b // 2] = c - 1 - np.argmax(s[: b // 2, ::-1], axis=1)  # the *last* tied maximum
        return s, t, y
    s = rng.standard_normal((b, c)) * 3
    t = rng.standard_normal((b, c)) * 3
    if kind == "mixed":
        y = rng.integers(0, c, b)
        y[: b // 3] = s[: b // 3].argmax(1)
    elif kind == "all-correct":
        y = s.argmax(1)
        t[np.arange(b), y] = t.max(1) + 1.0
    else:  # all-wrong, teacher wrong too
        y = (s.argmax(1) + 1) % c
        t[np.arange(b), y] = t.min(1) - 1.0
    return s, t, y


SETTINGS = {
    "official": dict(epoch=GAMMA + 1),
    "detached": dict(epoch=GAMMA + 1, config=sld_core.SLDConfig(detach_pseudo_teacher=True)),
    "no-swap": dict(epoch=GAMMA + 1, config=sld_core.SLDConfig(teacher_swap=False)),
    "no-pseudo": dict(epoch=GAMMA + 1, config=sld_core.SLDConfig(pseudo_teacher=False)),
    "before-gamma": dict(epoch=GAMMA),
    "odd-temps": dict(epoch=3, config=sld_core.SLDConfig(temperatures=(0.5, 2.0, 4.0, 3.0), gamma=2,
                                                         ce_weight=0.3, kd_weight=1.7)),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("kind", ["mixed", "ties", "all-correct", "all-wrong"])
def test_float64_matches_core_and_plain_reference(path, kind, setting):
    s, t, y = batch(kind, 6, 13, seed=len(kind) + len(setting))
    kw = SETTINGS[setting]
    got = run(path, s, t, y, **kw)
    assert_close(got, core64(s, t, y, **kw), 1e-12)
    cfg = kw.get("config", sld_core.SLDConfig())
    plain = ref_terms(s, t, y, epoch=kw["epoch"], temperatures=cfg.temperatures, gamma=cfg.gamma,
                      ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight, teacher_swap=cfg.teacher_swap,
                      pseudo_teacher=cfg.pseudo_teacher)
    for k in TERMS:
        assert got[0][k] == pytest.approx(plain[k], rel=1e-10, abs=1e-12), k
    if kind == "all-correct":
        assert got[0]["pseudo"] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("shape", [(1, 2), (1, 9), (7, 2), (5, 37), (3, 1000), (2, 21841)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("detach", [False, True], ids=["through-pseudo", "detached"])
def test_float32_within_1e5_of_float64(path, shape, detach, request, monkeypatch):
    if path == "torch-triton" and shape[1] >= 1000:  # the interpreter is slow: the real tile size here
        monkeypatch.setattr(request.getfixturevalue("triton_interpreted"), "TILE_ELEMENTS", 4096)
    s, t, y = batch("mixed", *shape, seed=shape[1])
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    kw = dict(config=sld_core.SLDConfig(detach_pseudo_teacher=detach))
    got = run(path, s32, t32, y, dtype=None, **kw)
    assert_close(got, core64(s32, t32, y, **kw), 1e-5)


def half_cases():
    """Every path with float16, the torch paths with bfloat16 too (NumPy has no bfloat16)."""
    for case in PATHS:
        name, marks = (case.values[0], case.marks) if hasattr(case, "values") else (case, ())
        for half, tag in ((np.float16, "fp16"), ("bfloat16", "bf16")):
            if tag == "fp16" or not name.startswith("numpy"):
                yield pytest.param(name, half, marks=marks, id=f"{name}-{tag}")


@pytest.mark.parametrize(("path", "half"), list(half_cases()), indirect=["path"])
def test_half_inputs_compute_in_float32(path, half):
    s, t, y = batch("mixed", 4, 19, seed=3)
    terms, grad = run(path, s, t, y, dtype=half)
    rounded = (torch.as_tensor(s).to(torch.bfloat16).double().numpy(), torch.as_tensor(t).to(torch.bfloat16)
               .double().numpy()) if half == "bfloat16" else (s.astype(np.float16), t.astype(np.float16))
    want_terms, want_grad = core64(*rounded, y)
    for k in TERMS:  # computed in float32 from the half values
        assert terms[k] == pytest.approx(want_terms[k], rel=1e-5, abs=1e-6), k
    eps = 2.0**-8 if half == "bfloat16" else 2.0**-11  # one rounding to the half dtype at the end
    np.testing.assert_allclose(grad, want_grad, rtol=eps, atol=1e-6)


def test_unchecked_out_of_range_labels_are_clamped(path):
    # check_targets=False: no bounds are crossed, and every path returns the clamped labels' numbers
    s, t, y = batch("mixed", 5, 11, seed=4)
    bad = y.copy()
    bad[0], bad[1], bad[2] = -1, 11, 10**6
    got = run(path, s, t, bad, check_targets=False)
    assert_close(got, core64(s, t, np.clip(bad, 0, 10)), 1e-12)
    assert_close(core64_unchecked(s, t, bad), core64(s, t, np.clip(bad, 0, 10)), 1e-15)


def core64_unchecked(s, t, y):
    terms, grad = sld_core.sld_loss_and_grad(s, t, y, epoch=GAMMA + 1, check_targets=False)
    return {k: float(getattr(terms, k)) for k in TERMS}, np.asarray(grad)


@pytest.mark.parametrize("where", ["student", "teacher", "both"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_logits_raise_naming_the_input(path, where, value):
    s, t, y = batch("mixed", 4, 7, seed=5)
    if where in ("student", "both"):
        s[2, 3] = value
    if where in ("teacher", "both"):
        t[1, 0] = value
    with pytest.raises(ValueError) as info:
        run(path, s, t, y)
    message = str(info.value)
    assert ("student_logits holds NaN or inf" in message) == (where != "teacher")
    assert ("teacher_logits holds NaN or inf" in message) == (where != "student")


def test_bad_labels_raise_with_their_range(path):
    s, t, y = batch("mixed", 4, 7, seed=6)
    y[1] = -3
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 7\); got values from -3 to"):
        run(path, s, t, y)


@pytest.mark.parametrize("epoch", ["200", True, None, float("nan"), -1, float("inf")],
                         ids=["str", "bool", "none", "nan", "negative", "inf"])
def test_bad_epoch_is_one_clear_error(path, epoch):
    s, t, y = batch("mixed", 2, 5, seed=7)
    error = TypeError if epoch is None or isinstance(epoch, (str, bool)) else ValueError
    with pytest.raises(error, match="epoch must be"):
        run(path, s, t, y, epoch=epoch)


@pytest.mark.parametrize("epoch", [0, 151, 151.0, np.int64(151), np.float32(151.5)],
                         ids=["zero", "int", "float", "np-int", "np-float"])
def test_real_epochs_are_accepted(epoch):
    s, t, y = batch("mixed", 2, 5, seed=8)
    terms = backends.sld_loss(torch.as_tensor(s), torch.as_tensor(t), torch.as_tensor(y), epoch=epoch)
    assert (float(terms.pseudo) > 0) == (epoch > GAMMA)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int16, np.uint8], ids=["int32", "int16", "uint8"])
def test_any_integer_label_dtype(path, label_dtype):
    s, t, y = batch("mixed", 5, 9, seed=9)
    got = run(path, s, t, y.astype(label_dtype))
    assert_close(got, core64(s, t, y), 1e-12)


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.uint8], ids=["int32", "uint8"])
def test_generic_core_takes_any_integer_labels(label_dtype):
    s, t, y = batch("mixed", 5, 9, seed=10)
    s_t = torch.as_tensor(s).requires_grad_(True)
    terms = sld_core.sld_loss(s_t, torch.as_tensor(t), torch.as_tensor(y).to(label_dtype), epoch=GAMMA + 1)
    terms.total.backward()
    want_terms, want_grad = core64(s, t, y)
    assert float(terms.total.detach()) == pytest.approx(want_terms["total"], rel=1e-12)
    np.testing.assert_allclose(s_t.grad.numpy(), want_grad, rtol=1e-10, atol=1e-14)


def test_caller_arrays_are_not_written(path):
    s, t, y = batch("mixed", 4, 9, seed=11)
    before = (s.copy(), t.copy(), y.copy())
    run(path, s, t, y)
    for a, b in zip((s, t, y), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numba_thread_split_gives_the_same_numbers(threads, monkeypatch):
    from backends import cpu_kernel

    monkeypatch.setattr(cpu_kernel, "PARALLEL_ELEMENTS", 0)  # split even this small batch
    s, t, y = batch("mixed", 9, 17, seed=12)
    cfg = sld_core.SLDConfig()
    grads, sums = [], []
    for n in (1, threads):
        grad = np.empty_like(s)
        sums.append(cpu_kernel.fused_sums(s, t, y, cfg, True, (0.1, 0.9, 0.9), grad, n))
        grads.append(grad)
    np.testing.assert_array_equal(grads[0], grads[1])  # rows are independent; sums in row order
    np.testing.assert_array_equal(sums[0], sums[1])


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_torch_cpu_kernel_hands_autograd_its_own_buffer(monkeypatch):
    monkeypatch.setattr(_select, "_forced", True)
    s, t, y = batch("mixed", 64, 100, seed=13)
    seen = []
    real = torch_sld._fused_numba

    def spy(*args):
        out = real(*args)
        seen.append(out[1].data_ptr())
        return out

    monkeypatch.setattr(torch_sld, "_fused_numba", spy)
    leaf = torch.as_tensor(s, dtype=torch.float32).requires_grad_(True)
    torch_sld.sld_loss_fused(leaf, torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(y),
                             epoch=GAMMA + 1).total.backward()
    assert seen == [leaf.grad.data_ptr()]  # the kernel wrote .grad itself: no copy on the way


def test_switch_and_thread_settings():
    with backends.use_kernels(False):
        assert backends.implementation(np.zeros((2, 3)), with_grad=True) == "eager"
        assert backends.implementation(torch.zeros(2, 3)) == "eager"
    assert backends.implementation(np.zeros((2, 3)), with_grad=True) == ("numba" if HAS_NUMBA else "eager")
    import jax.numpy as jnp

    assert backends.implementation(jnp.zeros((2, 3)), with_grad=True) == "core"
    backends.set_num_threads(3)
    try:
        assert backends.num_threads() == 3
    finally:
        backends.set_num_threads(None)
    assert backends.num_threads() == torch.get_num_threads()
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        backends.set_num_threads(0)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 2), (37, 300), (64, 100), (512, 1000), (3, 21841)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_triton_on_cuda(shape, dtype):
    if not torch.cuda.is_available() or not HAS_TRITON:
        pytest.skip("needs a CUDA device and triton")
    s, t, y = batch("mixed", *shape, seed=14)
    s_dev = torch.as_tensor(s, dtype=dtype, device="cuda").requires_grad_(True)
    assert backends.implementation(s_dev) == "triton"
    terms = backends.sld_loss(s_dev, torch.as_tensor(t, dtype=dtype, device="cuda"),
                              torch.as_tensor(y, device="cuda"), epoch=GAMMA + 1)
    terms.total.backward()
    rounded = [torch.as_tensor(a, dtype=dtype).double().numpy() for a in (s, t)]
    got = ({k: float(getattr(terms, k)) for k in TERMS}, s_dev.grad.double().cpu().numpy())
    assert_close(got, core64(*rounded, y), 1e-5 if dtype == torch.float32 else 1e-10)
