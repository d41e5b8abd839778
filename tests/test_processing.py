"""Teacher processing (sld_core.processing) against plain float64 references, on every usable array
library, plus hypothesis properties of each rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sld_core
from sld_core import (
    TEACHER_PROCESSORS,
    conditional_swap,
    conditional_swap_mask,
    label_smoothing,
    process_teacher,
    swap_logits,
)
from tests.reference import numeric_grad, ref_softmax, ref_swap
from tests.test_core import assert_same_home, random_batch

# --- plain references ------------------------------------------------------------------------------


def ref_top(row) -> int:
    row = list(row)
    return row.index(max(row))  # first index on ties


def ref_gap(row, label) -> float:
    p = ref_softmax(list(row), 1.0)
    return p[ref_top(row)] - p[int(label)]


def ref_process(z, y, name, **params) -> np.ndarray:
    """Each rule written row by row, in float64."""
    z = np.asarray(z, dtype=np.float64)
    out = z.copy()
    rows = params.get("rows", "wrong")
    num_classes = z.shape[1]
    for b in range(z.shape[0]):
        label = int(y[b])
        wrong = ref_top(z[b]) != label
        selected = wrong or rows == "all"
        if name == "swap" or (name == "conditional_swap" and wrong):
            if name == "conditional_swap":
                threshold = params["threshold"]
                below = threshold >= 1 or ref_gap(z[b], label) < threshold
                if below != (params.get("mode", "below") == "below"):
                    continue
            out[b] = ref_swap(z[b : b + 1], y[b : b + 1])[0]
        elif name == "soft_addition" and selected:
            out[b, label] = z[b, label] + params.get("fraction", 0.1) * z[b, label]
        elif name == "max_addition":
            out[b, label] = max(z[b])
        elif name == "double_target" and selected:
            out[b, label] = 2 * z[b, label]
        elif name == "halve_target" and selected:
            out[b, label] = z[b, label] / 2
        elif name == "label_smoothing" and selected:
            eps = params.get("epsilon", 0.1)
            for c in range(num_classes):
                out[b, c] = math.log((1 - eps) * (c == label) + eps / num_classes)
    return out


CASES = {
    "none": {},
    "swap": {},
    "conditional_swap-below": {"threshold": 0.3},
    "conditional_swap-at_least": {"threshold": 0.3, "mode": "at_least"},
    "conditional_swap-inf": {"threshold": math.inf},
    "soft_addition": {},
    "soft_addition-all": {"rows": "all", "fraction": 0.25},
    "max_addition": {},
    "double_target": {},
    "double_target-all": {"rows": "all"},
    "halve_target": {},
    "halve_target-all": {"rows": "all"},
    "label_smoothing": {},
    "label_smoothing-all": {"rows": "all", "epsilon": 0.3},
}


def case_name(case: str) -> str:
    return case.split("-")[0]


def test_registry_names_every_rule():
    assert set(TEACHER_PROCESSORS) == {case_name(c) for c in CASES}
    assert TEACHER_PROCESSORS["swap"] is swap_logits


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(backend, case, ties):
    z, _, y = random_batch(21, batch=24, classes=6, ties=ties)
    logits, targets = backend.asarray(z), backend.asarray(y)
    before = backend.to_numpy(logits).copy()
    out = process_teacher(logits, targets, case_name(case), **CASES[case])
    assert_same_home(out, logits, backend.xp)
    expected = ref_process(z, y, case_name(case), **CASES[case])
    # Every rule is one rounding away from the float64 reference (most are exact).
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(backend.to_numpy(logits), before)  # input untouched


def test_the_data_has_both_kinds_of_row():
    for ties in (False, True):
        z, _, y = random_batch(21, batch=24, classes=6, ties=ties)
        wrong = np.array([ref_top(r) != label for r, label in zip(z, y)])
        assert wrong.any() and not wrong.all()
        gaps = np.array([ref_gap(r, label) for r, label in zip(z, y)])[wrong]
        assert (gaps < 0.3).any() and (gaps >= 0.3).any()  # the conditional swap splits the wrong rows


@pytest.mark.parametrize("case", list(CASES))
def test_float32_keeps_dtype_and_matches(backend, case):
    z, _, y = random_batch(22, batch=16, classes=7)
    z32 = z.astype(np.float32)
    logits = backend.asarray(z32)
    out = process_teacher(logits, backend.asarray(y), case_name(case), **CASES[case])
    assert_same_home(out, logits, backend.xp)
    expected = ref_process(z32, y, case_name(case), **CASES[case])
    # computed in float32 (soft addition rounds twice): within two float32 units of the float64 value
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=2 * 2**-23, atol=0)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_half_precision_torch_computes_in_float32(case, dtype_name):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    z, _, y = random_batch(23, batch=16, classes=7)
    half = torch.tensor(z, dtype=dtype)
    out = process_teacher(half, torch.tensor(y), case_name(case), **CASES[case])
    assert out.dtype == dtype
    # float32 arithmetic on the exact half values, then one rounding to the half dtype
    expected = torch.tensor(ref_process(half.double().numpy(), y, case_name(case), **CASES[case]))
    expected = expected.float().to(dtype)
    # within one unit of the half dtype (float32 arithmetic may round the other way once)
    torch.testing.assert_close(out, expected, rtol=torch.finfo(dtype).eps, atol=0)


def test_half_precision_numpy():
    z, _, y = random_batch(24, batch=8, classes=5)
    out = process_teacher(z.astype(np.float16), y, "soft_addition")
    assert out.dtype == np.float16
    expected = ref_process(z.astype(np.float16).astype(np.float64), y, "soft_addition")
    np.testing.assert_array_equal(out, expected.astype(np.float32).astype(np.float16))


# --- properties ------------------------------------------------------------------------------------

finite_logits = arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(2, 7)),
    elements=st.floats(-50, 50, allow_nan=False, width=64),
)


def draw_labels(data, logits):
    batch, classes = logits.shape
    return np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))


@settings(max_examples=150, deadline=None)
@given(finite_logits, st.data(), st.sampled_from(["soft_addition", "max_addition", "double_target",
                                                  "halve_target"]), st.sampled_from(["wrong", "all"]))
def test_target_rules_touch_only_the_target_column_of_the_rows_they_claim(logits, data, name, rows):
    labels = draw_labels(data, logits)
    params = {} if name == "max_addition" else {"rows": rows}
    out = np.asarray(process_teacher(logits, labels, name, **params))
    for row_in, row_out, label in zip(logits, out, labels):
        others = np.arange(logits.shape[1]) != label
        np.testing.assert_array_equal(row_out[others], row_in[others])
        wrong = ref_top(row_in) != label
        if not wrong and (rows == "wrong" or name == "max_addition"):
            np.testing.assert_array_equal(row_out, row_in)
        if name == "max_addition":
            assert row_out[label] == row_in.max()
        if name == "double_target" and (wrong or rows == "all"):
            assert row_out[label] == 2 * row_in[label]
        if name == "halve_target" and (wrong or rows == "all"):
            assert row_out[label] == row_in[label] / 2


@settings(max_examples=150, deadline=None)
@given(finite_logits, st.data(), st.floats(0.01, 1.0), st.sampled_from(["wrong", "all"]),
       st.floats(1.0, 8.0))
def test_label_smoothing_is_the_smoothed_label_at_t1(logits, data, eps, rows, temperature):
    labels = draw_labels(data, logits)
    out = np.asarray(label_smoothing(logits, labels, epsilon=eps, rows=rows))
    assert np.isfinite(out).all()
    classes = logits.shape[1]
    for row_in, row_out, label in zip(logits, out, labels):
        if rows == "wrong" and ref_top(row_in) == label:
            np.testing.assert_array_equal(row_out, row_in)
            continue
        smoothed = (1 - eps) * (np.arange(classes) == label) + eps / classes
        p = ref_softmax(list(row_out), 1.0)
        assert math.fsum(p) == pytest.approx(1.0, abs=1e-15)
        np.testing.assert_allclose(p, smoothed, rtol=1e-14)
        # At T > 1 the distribution is the flatter smoothed**(1/T), renormalized; still finite.
        flat = smoothed ** (1 / temperature)
        np.testing.assert_allclose(ref_softmax(list(row_out), temperature), flat / flat.sum(), rtol=1e-13)


@settings(max_examples=200, deadline=None)
@given(finite_logits, st.data(), st.floats(0.0, 1.2))
def test_conditional_swap_changes_only_rows_under_the_threshold(logits, data, threshold):
    labels = draw_labels(data, logits)
    below = np.asarray(conditional_swap(logits, labels, threshold=threshold))
    at_least = np.asarray(conditional_swap(logits, labels, threshold=threshold, mode="at_least"))
    swapped = np.asarray(swap_logits(logits, labels))
    for b, label in enumerate(labels):
        gap = ref_gap(logits[b], label)
        assume(abs(gap - threshold) > 1e-12)  # a rounding-level tie with the threshold is not the point
        wrong = ref_top(logits[b]) != label
        chosen_below = wrong and (threshold >= 1 or gap < threshold)
        np.testing.assert_array_equal(below[b], swapped[b] if chosen_below else logits[b])
        np.testing.assert_array_equal(at_least[b], logits[b] if chosen_below else swapped[b])
        assert sorted(below[b]) == sorted(logits[b])  # a permutation of the row
    mask_below = np.asarray(conditional_swap_mask(logits, labels, threshold=threshold))
    mask_at_least = np.asarray(conditional_swap_mask(logits, labels, threshold=threshold, mode="at_least"))
    # The two modes split the wrong rows between them.
    np.testing.assert_array_equal(mask_below | mask_at_least, np.asarray(sld_core.swap_mask(logits, labels)))
    assert not (mask_below & mask_at_least).any()


@settings(max_examples=100, deadline=None)
@given(finite_logits, st.data())
def test_conditional_swap_limits(logits, data):
    labels = draw_labels(data, logits)
    swapped = np.asarray(swap_logits(logits, labels))
    for threshold in (1.0, 2.5, math.inf):
        below = np.asarray(conditional_swap(logits, labels, threshold=threshold))
        np.testing.assert_array_equal(below, swapped)
        np.testing.assert_array_equal(
            np.asarray(conditional_swap(logits, labels, threshold=threshold, mode="at_least")), logits
        )
    np.testing.assert_array_equal(np.asarray(conditional_swap(logits, labels, threshold=0.0)), logits)
    np.testing.assert_array_equal(
        np.asarray(conditional_swap(logits, labels, threshold=0, mode="at_least")), swapped
    )


def test_conditional_swap_threshold_one_swaps_rows_whose_gap_rounds_to_one():
    z = np.array([[0.0, 800.0, 1.0]])  # p_y underflows: the gap is 1.0 in float64, < 1 in exact arithmetic
    y = np.array([0])
    assert ref_softmax(list(z[0]), 1.0)[0] == 0.0
    np.testing.assert_array_equal(conditional_swap(z, y, threshold=1.0), [[800.0, 0.0, 1.0]])
    np.testing.assert_array_equal(conditional_swap(z, y, threshold=1.0, mode="at_least"), z)


def test_soft_addition_moves_a_negative_target_down():
    out = process_teacher(np.array([[-2.0, 1.0], [0.0, 1.0]]), np.array([0, 0]), "soft_addition")
    np.testing.assert_allclose(out, [[-2.2, 1.0], [0.0, 1.0]], rtol=1e-15)


# --- autograd --------------------------------------------------------------------------------------


def _grad_case(backend, case):
    if backend.id in ("numpy", "array-api-strict", "cupy"):
        pytest.skip(f"{backend.id} has no autograd")
    z, _, y = random_batch(25, batch=6, classes=5)  # distinct values: every rule is smooth here
    weights = np.random.default_rng(26).normal(size=z.shape)
    name, params = case_name(case), CASES[case]

    def reference(x):
        return float(np.sum(weights * ref_process(x, y, name, **params)))

    return z, y, weights, name, params, numeric_grad(reference, z)


@pytest.mark.parametrize("case", list(CASES))
def test_autograd_flows_through(backend, case):
    z, y, weights, name, params, expected = _grad_case(backend, case)
    if backend.id.startswith("torch"):
        logits = backend.asarray(z).requires_grad_(True)
        out = process_teacher(logits, backend.asarray(y), name, **params)
        assert out.requires_grad
        (out * backend.asarray(weights)).sum().backward()
        grad = logits.grad
    else:
        import jax

        y_j, w_j = backend.asarray(y), backend.asarray(weights)
        grad = jax.grad(lambda x: (process_teacher(x, y_j, name, check_targets=False, **params)
                                   * w_j).sum())(backend.asarray(z))
    assert_same_home(grad, backend.asarray(z), backend.xp)
    np.testing.assert_allclose(backend.to_numpy(grad), expected, rtol=1e-6, atol=1e-8)


# --- bad input -------------------------------------------------------------------------------------

Z = np.zeros((3, 4))
Y = np.array([0, 1, 2])


@pytest.mark.parametrize(
    ("name", "params", "error", "message"),
    [
        ("nope", {}, ValueError, r"unknown teacher processing 'nope'; choose one of \["),
        ("swap", {"threshold": 0.5}, TypeError, r"'swap' takes the parameters \['check_targets'\]"),
        ("conditional_swap", {}, TypeError, r"needs the parameter\(s\) \['threshold'\]"),
        ("conditional_swap", {"threshold": -0.1}, ValueError, "must be >= 0"),
        ("conditional_swap", {"threshold": math.nan}, ValueError, "threshold must be a number, not nan"),
        ("conditional_swap", {"threshold": "0.5"}, TypeError, "threshold must be a number; got '0.5'"),
        ("conditional_swap", {"threshold": 0.5, "mode": "above"}, ValueError, "mode must be one of"),
        ("soft_addition", {"rows": "some"}, ValueError, r"rows must be one of \('wrong', 'all'\)"),
        ("soft_addition", {"fraction": math.inf}, ValueError, "fraction must be finite"),
        ("max_addition", {"rows": "all"}, TypeError, "'max_addition' takes the parameters"),
        ("label_smoothing", {"epsilon": 0.0}, ValueError, r"epsilon must lie in \(0, 1\]"),
        ("label_smoothing", {"epsilon": 1.5}, ValueError, r"epsilon must lie in \(0, 1\]"),
        ("halve_target", {"rows": "correct"}, ValueError, "rows must be one of"),
    ],
)
def test_bad_parameters_get_one_clear_error(name, params, error, message):
    with pytest.raises(error, match=message):
        process_teacher(Z, Y, name, **params)


@pytest.mark.parametrize("name", list(TEACHER_PROCESSORS))
def test_bad_arrays_are_rejected_by_every_rule(name):
    params = {"threshold": 0.5} if name == "conditional_swap" else {}
    with pytest.raises(ValueError, match="must be 2-D"):
        process_teacher(np.zeros(4), Y, name, **params)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        process_teacher(Z, np.array([0, 1, 4]), name, **params)
    with pytest.raises(TypeError, match="integer dtype"):
        process_teacher(Z, np.array([0.0, 1.0, 2.0]), name, **params)
    with pytest.raises(TypeError, match="real floating"):
        process_teacher(np.zeros((3, 4), dtype=int), Y, name, **params)


def test_docstring_examples():
    import doctest

    import sld_core.processing

    result = doctest.testmod(sld_core.processing)
    assert result.attempted > 0 and result.failed == 0
