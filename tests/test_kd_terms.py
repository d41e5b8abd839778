"""The public KD terms (sld_core.kd): the multi-temperature KD term, the pseudo-teacher target and the
hard-label CE, against float64 references, and composed they give sld_loss's numbers and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sld_core import SLDConfig, cross_entropy, kd_loss, pseudo_teacher_logits, sld_loss, swap_logits
from tests.reference import ref_kl, ref_softmax, ref_terms
from tests.test_core import CONFIGS, TERMS, assert_same_home, random_batch
from tests.test_standardize import ref_standardize


def ref_kd_rows(student, target, temperatures, standardize=False) -> np.ndarray:
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if standardize:
        s, t = ref_standardize(s), ref_standardize(t)
    return np.array([
        math.fsum(temp**2 * ref_kl(ref_softmax(list(t[b]), temp), ref_softmax(list(s[b]), temp))
                  for temp in temperatures)
        for b in range(s.shape[0])
    ])


@pytest.mark.parametrize("standardize", [False, True], ids=["raw", "standardized"])
@pytest.mark.parametrize("temperatures", [4.0, (1, 2, 3, 4, 5, 6), (2.5,)], ids=["T4", "T1-6", "T2.5"])
def test_kd_loss_matches_reference(backend, temperatures, standardize):
    s, t, _ = random_batch(41, batch=7, classes=9)
    args = (backend.asarray(s), backend.asarray(t))
    temps = (temperatures,) if isinstance(temperatures, float) else temperatures
    expected = ref_kd_rows(s, t, temps, standardize)
    mean = kd_loss(*args, temperatures, standardize=standardize)
    rows = kd_loss(*args, temperatures, standardize=standardize, reduction="none")
    assert_same_home(mean, args[0], backend.xp)
    assert_same_home(rows, args[0], backend.xp)
    assert mean.shape == () and rows.shape == (7,)
    np.testing.assert_allclose(float(backend.to_numpy(mean)), expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(rows), expected, rtol=1e-12)


def test_kd_loss_of_equal_logits_is_zero_and_positive_otherwise():
    s, t, _ = random_batch(42)
    assert float(kd_loss(s, s, (1, 2, 3))) == 0.0
    assert float(kd_loss(s, t, (1, 2, 3))) > 0.0


def test_kd_loss_float32_and_half():
    torch = pytest.importorskip("torch")
    s, t, _ = random_batch(43, batch=8, classes=20)
    expected = ref_kd_rows(s.astype(np.float32), t.astype(np.float32), (1, 4)).mean()
    out32 = kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), (1, 4))
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(float(out32), expected, rtol=2e-6)
    s16, t16 = torch.tensor(s, dtype=torch.float16), torch.tensor(t, dtype=torch.float16)
    out16 = kd_loss(s16, t16, (1, 4))
    assert out16.dtype == torch.float32  # half precision is computed (and returned) in float32
    np.testing.assert_allclose(float(out16), ref_kd_rows(s16.double().numpy(), t16.double().numpy(),
                                                         (1, 4)).mean(), rtol=2e-6)


def test_cross_entropy_matches_reference(backend):
    s, _, y = random_batch(44, batch=9, classes=5)
    out = cross_entropy(backend.asarray(s), backend.asarray(y))
    assert_same_home(out, backend.asarray(s), backend.xp)
    expected = math.fsum(-math.log(ref_softmax(list(s[b]), 1.0)[y[b]]) for b in range(9)) / 9
    np.testing.assert_allclose(float(backend.to_numpy(out)), expected, rtol=1e-13)


def test_pseudo_teacher_is_the_swapped_student(backend):
    s, _, y = random_batch(45, batch=12, classes=4, ties=True)
    for detach in (False, True):
        out = pseudo_teacher_logits(backend.asarray(s), backend.asarray(y), detach=detach)
        assert_same_home(out, backend.asarray(s), backend.xp)
        np.testing.assert_array_equal(backend.to_numpy(out), swap_logits(s, y))


# --- composed, they are SLD ------------------------------------------------------------------------


def composed_sld(s, t, y, *, epoch, config: SLDConfig):
    """SLD written term by term with the public pieces, as a harness method would."""
    temps = config.temperatures
    target = swap_logits(t, y) if config.teacher_swap else t
    teacher = kd_loss(s, target, temps)
    if config.pseudo_teacher and epoch > config.gamma:
        pseudo = kd_loss(s, pseudo_teacher_logits(s, y, detach=config.detach_pseudo_teacher), temps)
    else:
        pseudo = 0.0 * teacher
    ce = cross_entropy(s, y)
    return {"total": config.ce_weight * ce + config.kd_weight * (teacher + pseudo), "ce": ce,
            "teacher": teacher, "pseudo": pseudo}


@pytest.mark.parametrize("epoch", [1, 151])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_composition_gives_sld_loss_numbers(backend, name, epoch):
    config = SLDConfig(**CONFIGS[name])
    s, t, y = random_batch(46 + epoch, batch=10, classes=8)
    args = (backend.asarray(s), backend.asarray(t), backend.asarray(y))
    terms = sld_loss(*args, epoch=epoch, config=config)
    composed = composed_sld(*args, epoch=epoch, config=config)
    reference = ref_terms(s, t, y, epoch=epoch, temperatures=config.temperatures, gamma=config.gamma,
                          ce_weight=config.ce_weight, kd_weight=config.kd_weight,
                          teacher_swap=config.teacher_swap, pseudo_teacher=config.pseudo_teacher)
    for key in TERMS:
        value = float(backend.to_numpy(composed[key]))
        # the swap after vs before log_softmax reorders one sum: equal to a few ulps
        np.testing.assert_allclose(value, float(backend.to_numpy(getattr(terms, key))), rtol=1e-13,
                                   atol=1e-15, err_msg=key)
        np.testing.assert_allclose(value, reference[key], rtol=1e-12, atol=1e-14, err_msg=key)
    assert reference["pseudo"] > 0 or epoch <= config.gamma or not config.pseudo_teacher


def test_kd_plus_pseudo_teacher_is_sld_without_the_teacher_swap():
    s, t, y = random_batch(47, batch=16, classes=10)
    temps = (1, 2, 3, 4, 5, 6)
    for epoch in (150, 151):
        kd_pseudo = kd_loss(s, t, temps) + (epoch > 150) * kd_loss(s, pseudo_teacher_logits(s, y), temps)
        terms = sld_loss(s, t, y, epoch=epoch, config=SLDConfig(teacher_swap=False))
        np.testing.assert_allclose(float(kd_pseudo), float(terms.teacher + terms.pseudo), rtol=1e-13)


@pytest.mark.parametrize("detach", [False, True], ids=["through-pseudo", "detached"])
def test_composition_gives_sld_loss_gradients(backend, detach):
    if backend.id in ("numpy", "array-api-strict", "cupy"):
        pytest.skip(f"{backend.id} has no autograd")
    config = SLDConfig(detach_pseudo_teacher=detach)
    s, t, y = random_batch(48, batch=8, classes=7)
    t_, y_ = backend.asarray(t), backend.asarray(y)

    def composed(x):
        return composed_sld(x, t_, y_, epoch=200, config=config)["total"]

    def reference(x):
        return sld_loss(x, t_, y_, epoch=200, config=config, check_targets=False).total

    if backend.id.startswith("torch"):
        grads = []
        for fn in (composed, reference):
            x = backend.asarray(s).requires_grad_(True)
            fn(x).backward()
            grads.append(x.grad)
    else:
        import jax

        grads = [jax.grad(fn)(backend.asarray(s)) for fn in (composed, reference)]
    assert_same_home(grads[0], backend.asarray(s), backend.xp)
    np.testing.assert_allclose(backend.to_numpy(grads[0]), backend.to_numpy(grads[1]), rtol=1e-11, atol=1e-14)


def test_detached_pseudo_teacher_is_cut_from_the_graph():
    torch = pytest.importorskip("torch")
    s, _, y = random_batch(49, batch=6, classes=5)
    x = torch.tensor(s, requires_grad=True)
    assert pseudo_teacher_logits(x, torch.tensor(y)).requires_grad
    assert not pseudo_teacher_logits(x, torch.tensor(y), detach=True).requires_grad


def test_detached_pseudo_teacher_has_no_gradient_in_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    s, _, y = random_batch(50, batch=6, classes=5)
    y_ = jnp.asarray(y)
    attached = jax.grad(lambda x: jnp.sum(pseudo_teacher_logits(x, y_, check_targets=False) ** 2))(
        jnp.asarray(s))
    detached = jax.grad(lambda x: jnp.sum(pseudo_teacher_logits(x, y_, detach=True, check_targets=False)
                                          ** 2))(jnp.asarray(s))
    np.testing.assert_allclose(np.asarray(attached), 2 * s, rtol=1e-15)  # a permutation: d sum(x^2) = 2x
    np.testing.assert_array_equal(np.asarray(detached), np.zeros_like(s))


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "t", "temperatures", "kwargs", "error", "message"),
    [
        (np.zeros((3, 4)), np.zeros((3, 5)), 4.0, {}, ValueError, "must have the same shape"),
        (np.zeros(4), np.zeros(4), 4.0, {}, ValueError, "student_logits must be 2-D"),
        (np.zeros((3, 4)), np.zeros((3, 4), dtype=int), 4.0, {}, TypeError, "real floating"),
        (np.zeros((3, 4)), np.zeros((3, 4)), (), {}, ValueError, "at least one temperature"),
        (np.zeros((3, 4)), np.zeros((3, 4)), (1, 0), {}, ValueError, "finite and positive"),
        (np.zeros((3, 4)), np.zeros((3, 4)), math.inf, {}, ValueError, "finite and positive"),
        (np.zeros((3, 4)), np.zeros((3, 4)), "4", {}, TypeError, "temperatures must be numbers"),
        (np.zeros((3, 4)), np.zeros((3, 4)), True, {}, TypeError, "temperatures must be numbers"),
        (np.zeros((3, 4)), np.zeros((3, 4)), 4.0, {"reduction": "sum"}, ValueError, "reduction must be one"),
    ],
)
def test_bad_input_gets_one_clear_error(s, t, temperatures, kwargs, error, message):
    with pytest.raises(error, match=message):
        kd_loss(s, t, temperatures, **kwargs)


def test_mixed_libraries_are_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        kd_loss(torch.zeros(3, 4), np.zeros((3, 4)), 4.0)


def test_pseudo_teacher_checks_its_labels():
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        pseudo_teacher_logits(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="student_logits must be 2-D"):
        pseudo_teacher_logits(np.zeros(4), np.array([0]))


def test_docstring_examples():
    import doctest

    import sld_core.kd

    result = doctest.testmod(sld_core.kd)
    assert result.attempted > 0 and result.failed == 0
