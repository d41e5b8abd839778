"""Logit standardization (sld_core.standardize) against a plain float64 reference, the published torch
spelling, finite-difference gradients, and its commuting with the swap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sld_core import standardize_logits, swap_logits
from tests.reference import numeric_grad, ref_swap
from tests.test_core import assert_same_home, random_batch


def ref_standardize(z, eps=1e-7) -> np.ndarray:
    """Row by row: mean, the unbiased (n - 1) standard deviation, eps added to it."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    n = z.shape[1]
    for b in range(z.shape[0]):
        row = list(z[b])
        mean = math.fsum(row) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in row) / (n - 1))
        out[b] = [(v - mean) / (eps + std) for v in row]
    return out


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_matches_reference(backend, scale):
    z, _, _ = random_batch(31, batch=9, classes=11, scale=scale)
    logits = backend.asarray(z)
    out = standardize_logits(logits)
    assert_same_home(out, logits, backend.xp)
    np.testing.assert_allclose(backend.to_numpy(out), ref_standardize(z), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(backend.to_numpy(logits), z)  # input untouched


def test_eps_is_added_to_the_std():
    z = np.array([[0.0, 1e-7, 2e-7]])  # std 1e-7: eps doubles the denominator
    np.testing.assert_allclose(standardize_logits(z), [[-0.5, 0.0, 0.5]], rtol=1e-9)
    np.testing.assert_allclose(standardize_logits(z, eps=0.0), [[-1.0, 0.0, 1.0]], rtol=1e-9)
    np.testing.assert_allclose(standardize_logits(z, eps=1e-7), ref_standardize(z), rtol=1e-12)


def test_constant_row_maps_to_zeros():
    out = standardize_logits(np.array([[3.0, 3.0, 3.0], [0.0, 1.0, 2.0]]))
    np.testing.assert_array_equal(out[0], [0.0, 0.0, 0.0])
    assert np.isfinite(out).all()


def test_matches_the_published_torch_spelling_in_float32():
    torch = pytest.importorskip("torch")
    z, _, _ = random_batch(32, batch=64, classes=100)
    logits = torch.tensor(z, dtype=torch.float32)
    published = (logits - logits.mean(dim=-1, keepdims=True)) / (1e-7 + logits.std(dim=-1, keepdims=True))
    out = standardize_logits(logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, published, rtol=4e-7, atol=4e-7)
    np.testing.assert_allclose(out.double().numpy(), ref_standardize(logits.double().numpy()), rtol=2e-6,
                               atol=1e-6)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32(dtype_name):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    z, _, _ = random_batch(33, batch=8, classes=30)
    half = torch.tensor(z, dtype=dtype)
    out = standardize_logits(half)
    assert out.dtype == dtype
    expected = torch.tensor(ref_standardize(half.double().numpy()))
    torch.testing.assert_close(out.double(), expected, rtol=torch.finfo(dtype).eps, atol=1e-6)


def test_half_precision_numpy():
    z, _, _ = random_batch(34, batch=4, classes=10)
    out = standardize_logits(z.astype(np.float16))
    assert out.dtype == np.float16
    np.testing.assert_allclose(out, ref_standardize(z.astype(np.float16)), rtol=1e-3, atol=1e-3)


# --- commutes with the swap ------------------------------------------------------------------------

distinct_rows = st.tuples(st.integers(1, 6), st.integers(2, 8)).flatmap(
    lambda shape: arrays(np.int64, shape, elements=st.integers(-10_000, 10_000), unique=True)
)


@settings(max_examples=200, deadline=None)
@given(distinct_rows, st.data(), st.sampled_from([1e-3, 1.0, 37.5]))
def test_commutes_with_the_swap(ints, data, scale):
    logits = ints.astype(np.float64) * scale
    batch, classes = logits.shape
    labels = np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))
    lhs = standardize_logits(swap_logits(logits, labels))
    rhs = swap_logits(standardize_logits(logits), labels)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-14, atol=1e-15)  # reordered sums: a few ulps at most
    np.testing.assert_array_equal(np.argmax(standardize_logits(logits), axis=1), np.argmax(logits, axis=1))
    np.testing.assert_allclose(lhs, ref_standardize(ref_swap(logits, labels)), rtol=1e-13, atol=1e-15)


# --- gradients -------------------------------------------------------------------------------------


def test_gradients_match_finite_differences(backend):
    if backend.id in ("numpy", "array-api-strict", "cupy"):
        pytest.skip(f"{backend.id} has no autograd")
    z, _, _ = random_batch(35, batch=4, classes=6)
    weights = np.random.default_rng(36).normal(size=z.shape)
    expected = numeric_grad(lambda x: float(np.sum(weights * ref_standardize(x))), z)
    if backend.id.startswith("torch"):
        logits = backend.asarray(z).requires_grad_(True)
        (standardize_logits(logits) * backend.asarray(weights)).sum().backward()
        grad = logits.grad
    else:
        import jax

        w = backend.asarray(weights)
        grad = jax.grad(lambda x: (standardize_logits(x) * w).sum())(backend.asarray(z))
    assert_same_home(grad, backend.asarray(z), backend.xp)
    np.testing.assert_allclose(backend.to_numpy(grad), expected, rtol=1e-6, atol=1e-9)


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "kwargs", "error", "message"),
    [
        (np.zeros(4), {}, ValueError, "logits must be 2-D"),
        (np.zeros((0, 4)), {}, ValueError, "empty batch"),
        (np.zeros((3, 1)), {}, ValueError, "at least 2 classes"),
        (np.zeros((3, 4), dtype=int), {}, TypeError, "real floating"),
        (np.zeros((3, 4)), {"eps": -1.0}, ValueError, "eps must be a finite number >= 0"),
        (np.zeros((3, 4)), {"eps": math.inf}, ValueError, "eps must be a finite number >= 0"),
    ],
)
def test_bad_input_gets_one_clear_error(logits, kwargs, error, message):
    with pytest.raises(error, match=message):
        standardize_logits(logits, **kwargs)


def test_docstring_examples():
    import doctest

    import sld_core.standardize

    result = doctest.testmod(sld_core.standardize)
    assert result.attempted > 0 and result.failed == 0
