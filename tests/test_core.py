"""sld_core against independent float64 references, on every usable array library."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sld_core
from sld_core import SLDConfig, sld_loss, sld_loss_and_grad, swap_logits, swap_mask
from tests.reference import numeric_grad, ref_swap, ref_terms

TERMS = ("total", "ce", "teacher", "pseudo")


def random_batch(seed: int, batch: int = 8, classes: int = 10, *, ties: bool = False, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    if ties:  # small integers: many rows with tied maxima
        s = rng.integers(0, 3, size=(batch, classes)).astype(np.float64)
        t = rng.integers(0, 3, size=(batch, classes)).astype(np.float64)
    else:
        s = rng.normal(scale=scale, size=(batch, classes))
        t = rng.normal(scale=scale, size=(batch, classes))
    y = rng.integers(0, classes, size=batch)
    return s, t, y


def as_float(x) -> float:
    return float(np.asarray(x))


def assert_same_home(result, like, xp, dtype=None):
    """No silent fall back to another library, device or dtype."""
    import array_api_compat

    assert array_api_compat.array_namespace(result) is array_api_compat.array_namespace(like)
    assert array_api_compat.device(result) == array_api_compat.device(like)
    assert result.dtype == (like.dtype if dtype is None else dtype)


# --- swap -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_swap_matches_reference(backend, ties):
    xp = backend.xp
    s, _, y = random_batch(1, batch=32, classes=5, ties=ties)
    logits = backend.asarray(s)
    before = backend.to_numpy(logits).copy()
    out = swap_logits(logits, backend.asarray(y))
    assert_same_home(out, logits, xp)
    np.testing.assert_array_equal(backend.to_numpy(out), ref_swap(s, y))
    np.testing.assert_array_equal(backend.to_numpy(logits), before)  # input untouched


def test_swap_mask_and_rows(backend):
    s, _, y = random_batch(2, batch=64, classes=4, ties=True)
    mask = backend.to_numpy(swap_mask(backend.asarray(s), backend.asarray(y)))
    expected = np.array([list(row).index(max(row)) != label for row, label in zip(s, y)])
    np.testing.assert_array_equal(mask, expected)
    assert expected.any() and not expected.all()  # the data exercises both kinds of row


def test_swap_all_correct_and_all_wrong(backend):
    s = np.array([[5.0, 1.0, 0.0], [0.0, 4.0, 1.0]])
    right = np.array([0, 1])
    wrong = np.array([2, 0])
    np.testing.assert_array_equal(
        backend.to_numpy(swap_logits(backend.asarray(s), backend.asarray(right))), s
    )
    np.testing.assert_array_equal(
        backend.to_numpy(swap_logits(backend.asarray(s), backend.asarray(wrong))),
        [[0.0, 1.0, 5.0], [4.0, 0.0, 1.0]],
    )


finite_rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(2, 7)),
    elements=st.floats(-1e6, 1e6, allow_nan=False, width=64),
)


@settings(max_examples=200, deadline=None)
@given(finite_rows, st.data())
def test_swap_properties(logits, data):
    labels = np.array(
        data.draw(st.lists(st.integers(0, logits.shape[1] - 1), min_size=logits.shape[0],
                           max_size=logits.shape[0]))
    )
    out = np.asarray(swap_logits(logits, labels))
    for row_in, row_out, label in zip(logits, out, labels):
        assert sorted(row_in) == sorted(row_out)  # a permutation of the row
        assert np.count_nonzero(row_in != row_out) <= 2  # at most two entries move
        assert row_out[label] == row_in.max()  # the target now holds the row maximum
        if np.argmax(row_in) == label:
            np.testing.assert_array_equal(row_in, row_out)  # correct rows untouched
    np.testing.assert_array_equal(np.asarray(swap_logits(out, labels)), out)  # idempotent


# --- loss values ----------------------------------------------------------------------------------

CONFIGS = {
    "official": {},
    "no-teacher-swap": {"teacher_swap": False},
    "no-pseudo": {"pseudo_teacher": False},
    "custom": {"temperatures": (2.0, 4.0), "gamma": 3, "ce_weight": 1.0, "kd_weight": 0.5},
}


def ref_kwargs(config: SLDConfig) -> dict:
    return {k: getattr(config, k) for k in ("temperatures", "gamma", "ce_weight", "kd_weight",
                                            "teacher_swap", "pseudo_teacher")}


@pytest.mark.parametrize("epoch", [1, 151, 240])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_matches_reference_float64(backend, name, epoch):
    config = SLDConfig(**CONFIGS[name])
    s, t, y = random_batch(3 + epoch)
    args = (backend.asarray(s), backend.asarray(t), backend.asarray(y))
    terms = sld_loss(*args, epoch=epoch, config=config)
    expected = ref_terms(s, t, y, epoch=epoch, **ref_kwargs(config))
    for key in TERMS:
        value = getattr(terms, key)
        assert_same_home(value, args[0], backend.xp)
        assert value.shape == ()
        np.testing.assert_allclose(as_float(backend.to_numpy(value)), expected[key], rtol=1e-12,
                                   atol=1e-12, err_msg=key)
    assert expected["pseudo"] == 0 or epoch > config.gamma


def test_loss_float32_matches_reference(backend):
    s, t, y = random_batch(4, batch=16, classes=100)
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    args = (backend.asarray(s32), backend.asarray(t32), backend.asarray(y))
    terms = sld_loss(*args, epoch=200)
    expected = ref_terms(s32, t32, y, epoch=200)  # the reference sees the same float32 values
    for key in TERMS:
        assert getattr(terms, key).dtype == args[0].dtype
        np.testing.assert_allclose(as_float(backend.to_numpy(getattr(terms, key))), expected[key],
                                   rtol=2e-5, atol=1e-6, err_msg=key)


def test_pseudo_teacher_closed_form():
    """KL(swap(q) || q) = (q_m - q_y)(s_m - s_y)/T per row: the identity the fast paths rely on."""
    s, t, y = random_batch(5, batch=32, classes=7)
    config = SLDConfig(temperatures=(3.0,), gamma=0, ce_weight=0.0, kd_weight=1.0)
    pseudo = float(sld_loss(s, t, y, epoch=1, config=config).pseudo)
    q = np.exp(s / 3) / np.exp(s / 3).sum(axis=1, keepdims=True)
    m = s.argmax(axis=1)
    rows = np.arange(32)
    closed = 9 * np.mean((q[rows, m] - q[rows, y]) * (s[rows, m] - s[rows, y]) / 3)
    np.testing.assert_allclose(pseudo, closed, rtol=1e-12)


def test_ties_follow_first_index():
    s = np.array([[1.0, 3.0, 3.0, 0.0]])
    t = np.array([[2.0, 2.0, 0.0, 2.0]])
    y = np.array([3])
    terms = sld_loss(s, t, y, epoch=151)
    expected = ref_terms(s, t, y, epoch=151)
    for key in TERMS:
        np.testing.assert_allclose(float(getattr(terms, key)), expected[key], rtol=1e-12)
    np.testing.assert_array_equal(swap_logits(t, y), [[2.0, 2.0, 0.0, 2.0]])  # tie: index 0 is top
    np.testing.assert_array_equal(swap_logits(s, y), [[1.0, 0.0, 3.0, 3.0]])


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_huge_logits_stay_finite(backend, scale):
    s, t, y = random_batch(6, batch=8, classes=10)
    for dtype in (np.float32, np.float64):
        args = (backend.asarray((s * scale).astype(dtype)), backend.asarray((t * scale).astype(dtype)),
                backend.asarray(y))
        terms, grad = sld_loss_and_grad(*args, epoch=200)
        assert all(np.isfinite(as_float(backend.to_numpy(v))) for v in terms.as_dict().values())
        assert np.isfinite(backend.to_numpy(grad)).all()


# --- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("detach", [False, True], ids=["through-pseudo", "detached"])
@pytest.mark.parametrize("epoch", [1, 151])
def test_closed_form_gradient_matches_finite_differences(detach, epoch):
    config = SLDConfig(detach_pseudo_teacher=detach)
    s, t, y = random_batch(7, batch=4, classes=6)
    terms, grad = sld_loss_and_grad(s, t, y, epoch=epoch, config=config)
    expected = ref_terms(s, t, y, epoch=epoch)
    np.testing.assert_allclose(float(terms.total), expected["total"], rtol=1e-12)
    if detach:
        # The pseudo-teacher's target is a constant: differentiate with it frozen at the swap of s.
        frozen = ref_swap(s, y)

        def total(x):
            return (ref_terms(x, t, y, epoch=epoch, pseudo_teacher=False)["total"]
                    + 0.9 * _frozen_pseudo(frozen, x, epoch, config))
    else:

        def total(x):
            return ref_terms(x, t, y, epoch=epoch)["total"]

    np.testing.assert_allclose(grad, numeric_grad(total, s), rtol=1e-6, atol=1e-9)


def _frozen_pseudo(target_logits, student, epoch, config):
    """sum_T T^2 mean_b KL(softmax(target/T) || softmax(student/T)) with a fixed target."""
    from tests.reference import ref_kl, ref_softmax

    if epoch <= config.gamma:
        return 0.0
    batch = student.shape[0]
    return sum(
        temp**2 * ref_kl(ref_softmax(list(target_logits[b]), temp), ref_softmax(list(student[b]), temp))
        / batch
        for temp in config.temperatures
        for b in range(batch)
    )


@pytest.mark.parametrize("detach", [False, True], ids=["through-pseudo", "detached"])
def test_closed_form_gradient_matches_autograd(backend, detach):
    if backend.id == "array-api-strict" or backend.id == "numpy" or backend.id == "cupy":
        pytest.skip(f"{backend.id} has no autograd")
    config = SLDConfig(detach_pseudo_teacher=detach)
    s, t, y = random_batch(8, batch=16, classes=12)
    args = (backend.asarray(s), backend.asarray(t), backend.asarray(y))
    terms, grad = sld_loss_and_grad(*args, epoch=200, config=config)
    assert_same_home(grad, args[0], backend.xp)
    if backend.id.startswith("torch"):
        student = args[0].clone().requires_grad_(True)
        sld_loss(student, args[1], args[2], epoch=200, config=config).total.backward()
        auto = student.grad
    else:
        import jax

        auto = jax.grad(lambda x: sld_loss(x, args[1], args[2], epoch=200, config=config,
                                           check_targets=False).total)(args[0])
    np.testing.assert_allclose(backend.to_numpy(grad), backend.to_numpy(auto), rtol=1e-10, atol=1e-13)


def test_detach_changes_only_the_gradient():
    s, t, y = random_batch(9)
    attached, g_attached = sld_loss_and_grad(s, t, y, epoch=200)
    detached, g_detached = sld_loss_and_grad(s, t, y, epoch=200,
                                             config=SLDConfig(detach_pseudo_teacher=True))
    assert float(attached.total) == pytest.approx(float(detached.total), rel=1e-15)
    assert not np.allclose(g_attached, g_detached)
    _, g_early = sld_loss_and_grad(s, t, y, epoch=100)
    _, g_early_detached = sld_loss_and_grad(s, t, y, epoch=100, config=SLDConfig(detach_pseudo_teacher=True))
    np.testing.assert_array_equal(g_early, g_early_detached)  # no pseudo-teacher before gamma


# --- half precision -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_torch_computes_in_float32(dtype_name):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    s, t, y = random_batch(10, batch=8, classes=20)
    s_half = torch.tensor(s, dtype=dtype)
    t_half = torch.tensor(t, dtype=dtype)
    terms, grad = sld_loss_and_grad(s_half, t_half, torch.tensor(y), epoch=200)
    assert grad.dtype == dtype
    expected = ref_terms(s_half.double().numpy(), t_half.double().numpy(), y, epoch=200)
    for key in TERMS:
        assert getattr(terms, key).dtype == torch.float32
        np.testing.assert_allclose(float(getattr(terms, key)), expected[key], rtol=1e-5, err_msg=key)
    _, grad64 = sld_loss_and_grad(s_half.double(), t_half.double(), torch.tensor(y), epoch=200)
    # Computed in float32, then rounded once to the half dtype: within one unit of its precision.
    np.testing.assert_allclose(grad.double().numpy(), grad64.numpy(), rtol=torch.finfo(dtype).eps, atol=1e-6)


def test_half_precision_numpy():
    s, t, y = random_batch(11, batch=8, classes=20)
    terms, grad = sld_loss_and_grad(s.astype(np.float16), t.astype(np.float16), y, epoch=200)
    assert grad.dtype == np.float16 and terms.total.dtype == np.float32


# --- schedule and config --------------------------------------------------------------------------


def test_schedule():
    assert not sld_core.pseudo_teacher_active(150, 150)
    assert sld_core.pseudo_teacher_active(151, 150)
    assert sld_core.linear_warmup(5, 20) == 0.25
    assert sld_core.linear_warmup(40, 20) == 1.0
    assert sld_core.linear_warmup(3, 0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperatures": ()}, "at least one temperature"),
        ({"temperatures": (1, 0)}, "finite and positive"),
        ({"temperatures": (1, -2)}, "finite and positive"),
        ({"temperatures": (float("inf"),)}, "finite and positive"),
        ({"temperatures": (float("nan"),)}, "finite and positive"),
        ({"ce_weight": -1}, "ce_weight"),
        ({"kd_weight": float("nan")}, "kd_weight"),
        ({"gamma": float("nan")}, "gamma"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SLDConfig(**kwargs)


def test_config_is_frozen_and_serializable():
    config = SLDConfig(temperatures=[2, 4])
    assert config.temperatures == (2.0, 4.0)
    with pytest.raises(AttributeError):
        config.gamma = 3  # type: ignore[misc]
    assert SLDConfig(**sld_core.config_to_dict(config)) == config


# --- bad input ------------------------------------------------------------------------------------

GOOD_S = np.zeros((4, 5))
GOOD_Y = np.array([0, 1, 2, 3])


@pytest.mark.parametrize(
    ("s", "t", "y", "error", "message"),
    [
        (np.zeros(5), np.zeros(5), GOOD_Y, ValueError, "must be 2-D"),
        (GOOD_S, np.zeros((4, 6)), GOOD_Y, ValueError, "same shape"),
        (GOOD_S, GOOD_S, np.array([[0, 1, 2, 3]]), ValueError, "targets must be 1-D"),
        (GOOD_S, GOOD_S, np.array([0, 1, 2]), ValueError, "targets must be 1-D"),
        (GOOD_S, GOOD_S, np.array([0.0, 1.0, 2.0, 3.0]), TypeError, "integer dtype"),
        (GOOD_S, GOOD_S, np.array([0, 1, 2, 5]), ValueError, r"\[0, 5\).*to 5"),
        (GOOD_S, GOOD_S, np.array([-1, 1, 2, 3]), ValueError, r"\[0, 5\).*-1"),
        (np.zeros((4, 1)), np.zeros((4, 1)), np.zeros(4, dtype=int), ValueError, "at least 2 classes"),
        (np.zeros((0, 5)), np.zeros((0, 5)), np.zeros(0, dtype=int), ValueError, "empty batch"),
        (np.zeros((4, 5), dtype=int), np.zeros((4, 5)), GOOD_Y, TypeError, "real floating"),
    ],
)
def test_bad_input_gets_one_clear_error(s, t, y, error, message):
    for fn in (sld_loss, sld_loss_and_grad):
        with pytest.raises(error, match=message):
            fn(s, t, y, epoch=1)


def test_label_check_can_be_skipped():
    s, t, _ = random_batch(12, batch=4, classes=5)
    with pytest.raises(ValueError, match="targets must lie"):
        swap_logits(s, np.array([0, 1, 2, 7]))
    # Hot loops skip the range check (no device sync); out-of-range labels are then the caller's job.
    assert swap_logits(s, np.array([0, 1, 2, 3]), check_targets=False).shape == (4, 5)


@pytest.mark.parametrize("where", ["student", "teacher", "both", "student-and-labels"])
def test_non_finite_logits_raise_one_line_on_the_generic_core(backend, where):
    s, t, y = random_batch(13, batch=4, classes=5)
    if where != "teacher":
        s[2, 3] = np.nan
    if where in ("teacher", "both"):
        t[1, 0] = -np.inf
    if where == "student-and-labels":
        y[0] = 5
    args = (backend.asarray(s), backend.asarray(t), backend.asarray(y))
    for fn, switch in ((sld_loss, {}), (sld_loss_and_grad, {}), (sld_loss, {"check_targets": True})):
        with pytest.raises(ValueError) as info:  # on by default in the library
            fn(*args, epoch=1, **switch)
        message = str(info.value)
        assert "\n" not in message
        assert ("student_logits holds NaN or inf" in message) == (where != "teacher")
        assert ("teacher_logits holds NaN or inf" in message) == (where in ("teacher", "both"))
        assert ("targets must lie in [0, 5); got values from" in message) == (where == "student-and-labels")


def test_unchecked_out_of_range_labels_are_clamped_on_the_generic_core(backend):
    # check_targets=False: nothing is read out of bounds; the numbers are those of the clipped labels.
    s, t, y = random_batch(14, batch=5, classes=7)
    bad = y.copy()
    bad[0], bad[1], bad[2] = -1, 7, 10**6
    clipped = np.clip(bad, 0, 6)
    args = (backend.asarray(s), backend.asarray(t), backend.asarray(bad))
    expected = ref_terms(s, t, clipped, epoch=151)
    terms = sld_loss(*args, epoch=151, check_targets=False)
    closed, grad = sld_loss_and_grad(*args, epoch=151, check_targets=False)
    for key in TERMS:
        for got in (getattr(terms, key), getattr(closed, key)):
            np.testing.assert_allclose(as_float(backend.to_numpy(got)), expected[key], rtol=1e-12, atol=1e-12,
                                       err_msg=key)
    assert_same_home(grad, args[0], backend.xp)
    want = numeric_grad(lambda x: ref_terms(x, t, clipped, epoch=151)["total"], s)
    np.testing.assert_allclose(backend.to_numpy(grad), want, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(backend.to_numpy(args[2]), bad)  # the caller's labels are not clamped


@pytest.mark.parametrize(
    ("epoch", "error"),
    [("200", TypeError), (True, TypeError), (None, TypeError), (float("nan"), ValueError), (-1, ValueError),
     (-0.5, ValueError), (float("inf"), ValueError)],
    ids=["str", "bool", "none", "nan", "negative", "negative-float", "inf"],
)
def test_bad_epoch_is_one_clear_error_on_the_generic_core(backend, epoch, error):
    s, t, y = random_batch(15, batch=2, classes=5)
    args = (backend.asarray(s), backend.asarray(t), backend.asarray(y))
    for fn in (sld_loss, sld_loss_and_grad):
        with pytest.raises(error, match="epoch must be"):
            fn(*args, epoch=epoch)


def test_mixed_libraries_are_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        sld_loss(torch.zeros(4, 5), torch.zeros(4, 5), GOOD_Y, epoch=1)


def test_mixed_devices_are_rejected():
    torch = pytest.importorskip("torch")
    s = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="meta"):
        sld_loss(s, torch.zeros(4, 5, device="meta"), torch.tensor(GOOD_Y), epoch=1)


# --- isolation ------------------------------------------------------------------------------------


def test_import_pulls_in_no_framework():
    code = (
        "import sys, sld_core, numpy as np\n"
        "sld_core.sld_loss(np.zeros((2, 3)), np.ones((2, 3)), np.array([0, 2]), epoch=200)\n"
        "print(sorted(m for m in ('torch', 'cupy', 'jax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["sld_core.swap", "sld_core.loss"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# --- parity with the official formulation ---------------------------------------------------------


def _batch_kind(kind: str):
    s, t, y = random_batch(13, batch=16, classes=9, ties=(kind == "ties"))
    if kind == "all-correct":
        y = s.argmax(axis=1)
        t = t.copy()
        t[np.arange(16), y] = t.max(axis=1) + 1.0  # the teacher is right too: no swap anywhere
    elif kind == "all-wrong":
        y = (s.argmax(axis=1) + 1) % 9
        t = t.copy()
        t[np.arange(16), y] = t.min(axis=1) - 1.0  # and the teacher is wrong on every row
    return s, t, y


@pytest.mark.parametrize("detach", [False, True], ids=["through-pseudo", "detached"])
@pytest.mark.parametrize("kind", ["mixed", "ties", "all-correct", "all-wrong"])
def test_parity_with_official_formulation(kind, detach):
    """Against the clone + index-swap + F.kl_div formulation of the official code, differentiated by
    torch autograd (harness/bench/reference.py), in float64."""
    torch = pytest.importorskip("torch")
    from harness.bench.reference import reference_sld_loss_and_grad

    s, t, y = _batch_kind(kind)
    config = SLDConfig(detach_pseudo_teacher=detach)
    ref_terms_, ref_grad = reference_sld_loss_and_grad(torch.tensor(s), torch.tensor(t), torch.tensor(y),
                                                       epoch=200, config=config)
    terms, grad = sld_loss_and_grad(s, t, y, epoch=200, config=config)
    for key in TERMS:
        np.testing.assert_allclose(float(getattr(terms, key)), float(ref_terms_[key]), rtol=1e-12,
                                   atol=1e-14, err_msg=key)  # F.kl_div of equal rows leaves ~1e-15
    np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=1e-10, atol=1e-15)
    if kind == "all-correct":
        assert float(terms.pseudo) == 0.0  # exactly: unchanged entries cancel to the bit
    if kind == "all-wrong":
        assert float(terms.pseudo) > 0.0
