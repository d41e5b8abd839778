"""MLKD and LS-MLKD (sld_core.mlkd) against an independent float64 reference written in torch the way
the published code spells it (F.softmax / F.kl_div / torch.mm, the median with NumPy on the host), in
values and in autograd gradients; NumPy and JAX agree with torch."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sld_core import MLKDConfig, confidence_masks, kd_loss, mlkd_config_to_dict, mlkd_loss, numpy_median
from tests.test_core import assert_same_home

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the reference is written in torch; the median and config tests run without it
    torch = F = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (the reference is torch)")

KEYS = ("total", "ce", "kd", "cc", "bc")


def published_mlkd(sw, ss, tw, ts, y, *, temperature=4.0, ce_weight=0.1, kd_weight=0.9, logit_stand=False,
                   mask_per_row=False, strong_reads_strong=False):
    """The published distiller's arithmetic, spelled as it is there; ``mask_per_row`` is its
    commented-out ``reduce=False`` reading (per-row losses masked, then reduced) and
    ``strong_reads_strong`` feeds the strong view to all five strong terms."""

    def normalize(logit):
        mean = logit.mean(dim=-1, keepdims=True)
        stdv = logit.std(dim=-1, keepdims=True)
        return (logit - mean) / (1e-7 + stdv)

    def kd(a, b, t, reduce=True):
        a = normalize(a) if logit_stand else a
        b = normalize(b) if logit_stand else b
        loss = F.kl_div(F.log_softmax(a / t, dim=1), F.softmax(b / t, dim=1), reduction="none").sum(1)
        if reduce:
            loss = loss.mean()
        return loss * t**2

    def cc(a, b, t, reduce=True):
        pa, pb = F.softmax(a / t, dim=1), F.softmax(b / t, dim=1)
        squared = (torch.mm(pb.transpose(1, 0), pb) - torch.mm(pa.transpose(1, 0), pa)) ** 2
        return squared.sum() / a.shape[1] if reduce else squared / a.shape[1]

    def bc(a, b, t, reduce=True):
        pa, pb = F.softmax(a / t, dim=1), F.softmax(b / t, dim=1)
        squared = (torch.mm(pb, pb.transpose(1, 0)) - torch.mm(pa, pa.transpose(1, 0))) ** 2
        return squared.sum() / a.shape[0] if reduce else squared / a.shape[0]

    tw, ts = tw.detach(), ts.detach()
    pred_teacher_weak = F.softmax(tw, dim=1)
    confidence, _ = pred_teacher_weak.max(dim=1)
    mask = confidence.le(np.percentile(confidence.cpu().numpy().flatten(), 50)).bool()
    class_confidence = torch.sum(pred_teacher_weak, dim=0)
    class_mask = class_confidence.le(np.percentile(class_confidence.cpu().numpy().flatten(), 50)).bool()

    temps = (temperature, 3.0, 5.0, 2.0, 6.0)
    ce = ce_weight * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    if mask_per_row:
        kd_weak = sum(kd_weight * (kd(sw, tw, t, reduce=False) * mask).mean() for t in temps)
        loss_cc = sum(kd_weight * (cc(sw, tw, t, reduce=False).sum(1) * class_mask).sum() for t in temps)
        loss_bc = sum(kd_weight * (bc(sw, tw, t, reduce=False).sum(1) * mask).sum() for t in temps)
    else:
        kd_weak = sum(kd_weight * (kd(sw, tw, t) * mask).mean() for t in temps)
        loss_cc = sum(kd_weight * (cc(sw, tw, t) * class_mask).mean() for t in temps)
        loss_bc = sum(kd_weight * (bc(sw, tw, t) * mask).mean() for t in temps)
    views = [(ss, ts)] * 5 if strong_reads_strong else [(ss, ts)] * 3 + [(sw, tw)] * 2
    kd_strong = sum(kd_weight * kd(a, b, t) for (a, b), t in zip(views, temps))
    loss_kd = kd_weak + kd_strong
    return {"total": ce + loss_kd + loss_cc + loss_bc, "ce": ce, "kd": loss_kd, "cc": loss_cc, "bc": loss_bc,
            "mask": mask, "class_mask": class_mask}


def reference_kwargs(config: MLKDConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


CONFIGS = {
    "published": MLKDConfig(),
    "intended": MLKDConfig.intended(),
    "mask-per-row": MLKDConfig(mask_per_row=True),
    "strong-reads-strong": MLKDConfig(strong_reads_strong=True),
    "ls": MLKDConfig.logit_standardized(),
    "ls-intended": MLKDConfig.logit_standardized(mask_per_row=True, strong_reads_strong=True),
    "ls-base3-kd1": MLKDConfig.logit_standardized(base_temperature=3.0, kd_weight=1.0),
}

SHAPES = {"8x10": (8, 10), "7x9": (7, 9), "6x7": (6, 7), "1x5": (1, 5)}  # even/odd counts for both medians


def make_batch(kind: str, batch: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sw, ss, tw, ts = (rng.normal(scale=2.0, size=(batch, classes)) for _ in range(4))
    y = rng.integers(0, classes, size=batch)
    if kind == "ties":
        # Exact ties: two teacher columns repeated (equal class sums), and the row just above the
        # median of the sample confidences made a copy of the row at it (a tie on the median).
        tw[:, 1] = tw[:, 0]
        if batch > 1:
            confidence = (np.exp(tw) / np.exp(tw).sum(axis=1, keepdims=True)).max(axis=1)
            order = np.argsort(confidence, kind="stable")
            middle = (batch - 1) // 2
            tw[order[middle + 1]] = tw[order[middle]]
        sw = np.round(sw)
    elif kind == "all-correct":
        y = tw.argmax(axis=1)
    elif kind == "all-wrong":
        y = (tw.argmax(axis=1) + 1) % classes
    return sw, ss, tw, ts, y


def torch_batch(arrays_):
    sw, ss, tw, ts, y = arrays_
    return (*(torch.tensor(a, dtype=torch.float64) for a in (sw, ss, tw, ts)), torch.tensor(y))


@needs_torch
def test_ties_batch_has_ties_at_the_medians():
    sw, ss, tw, ts, y = make_batch("ties", 8, 10)
    ref = published_mlkd(*torch_batch((sw, ss, tw, ts, y)))
    assert int(ref["mask"].sum()) == 5  # the repeated confidence on the median is kept twice
    p = np.exp(tw) / np.exp(tw).sum(axis=1, keepdims=True)
    assert p.sum(axis=0)[0] == p.sum(axis=0)[1]


@needs_torch
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", ["mixed", "ties", "all-correct", "all-wrong"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_values_and_gradients_match_the_published_code(name, kind, shape):
    config = CONFIGS[name]
    sw, ss, tw, ts, y = torch_batch(make_batch(kind, *SHAPES[shape], seed=len(name) + len(kind)))
    ref_sw, ref_ss = sw.clone().requires_grad_(True), ss.clone().requires_grad_(True)
    ref = published_mlkd(ref_sw, ref_ss, tw, ts, y, **reference_kwargs(config))
    ref["total"].backward()

    my_sw, my_ss = sw.clone().requires_grad_(True), ss.clone().requires_grad_(True)
    my_tw, my_ts = tw.clone().requires_grad_(True), ts.clone().requires_grad_(True)
    terms = mlkd_loss(my_sw, my_ss, my_tw, my_ts, y, config=config)
    terms.total.backward()
    for key in KEYS:
        value = getattr(terms, key)
        assert_same_home(value, sw, None)
        assert value.shape == ()
        np.testing.assert_allclose(float(value.detach()), float(ref[key].detach()), rtol=1e-12, atol=1e-15,
                                   err_msg=key)
    np.testing.assert_allclose(my_sw.grad.numpy(), ref_sw.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(my_ss.grad.numpy(), ref_ss.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert my_tw.grad is None and my_ts.grad is None  # the teacher is not differentiated
    rows, classes = confidence_masks(tw)
    np.testing.assert_array_equal(rows.numpy(), ref["mask"].numpy())
    np.testing.assert_array_equal(classes.numpy(), ref["class_mask"].numpy())


@pytest.mark.parametrize("name", ["published", "intended", "ls"])
@needs_torch
def test_float32_matches_the_published_code_in_float32(name):
    config = CONFIGS[name]
    arrays32 = [a.float() for a in torch_batch(make_batch("mixed", 64, 100, seed=3))[:4]]
    y = torch_batch(make_batch("mixed", 64, 100, seed=3))[4]
    ref = published_mlkd(*arrays32, y, **reference_kwargs(config))
    terms = mlkd_loss(*arrays32, y, config=config)
    rows, classes = confidence_masks(arrays32[2])
    np.testing.assert_array_equal(rows.numpy(), ref["mask"].numpy())  # the same medians, on the device
    np.testing.assert_array_equal(classes.numpy(), ref["class_mask"].numpy())
    for key in KEYS:
        assert getattr(terms, key).dtype == torch.float32
        np.testing.assert_allclose(float(getattr(terms, key)), float(ref[key]), rtol=2e-5, atol=1e-7,
                                   err_msg=key)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@needs_torch
def test_half_precision_computes_in_float32(dtype_name):
    dtype = getattr(torch, dtype_name)
    batch = torch_batch(make_batch("mixed", 16, 20, seed=4))
    half = [a.to(dtype) for a in batch[:4]]
    terms = mlkd_loss(*half, batch[4])
    ref = published_mlkd(*(a.double() for a in half), batch[4])
    for key in KEYS:
        assert getattr(terms, key).dtype == torch.float32
        np.testing.assert_allclose(float(getattr(terms, key)), float(ref[key]), rtol=1e-5, atol=1e-7,
                                   err_msg=key)


# --- other libraries agree with torch --------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("name", ["published", "intended", "ls"])
def test_every_library_agrees_with_torch(backend, name):
    config = CONFIGS[name]
    raw = make_batch("mixed", 9, 8, seed=5)
    ref = published_mlkd(*torch_batch(raw), **reference_kwargs(config))
    args = [backend.asarray(a) for a in raw]
    terms = mlkd_loss(*args, config=config)
    for key in KEYS:
        assert_same_home(getattr(terms, key), args[0], backend.xp)
        np.testing.assert_allclose(float(backend.to_numpy(getattr(terms, key))), float(ref[key]), rtol=1e-12,
                                   atol=1e-15, err_msg=key)


@pytest.mark.parametrize("name", ["published", "intended", "ls-intended"])
@needs_torch
def test_jax_gradients_agree_with_torch(name):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    config = CONFIGS[name]
    raw = make_batch("mixed", 6, 7, seed=6)
    sw, ss, tw, ts, y = torch_batch(raw)
    sw.requires_grad_(True)
    ss.requires_grad_(True)
    published_mlkd(sw, ss, tw, ts, y, **reference_kwargs(config))["total"].backward()
    tw_j, ts_j, y_j = jnp.asarray(raw[2]), jnp.asarray(raw[3]), jnp.asarray(raw[4])
    grads = jax.grad(lambda a, b: mlkd_loss(a, b, tw_j, ts_j, y_j, config=config, check_targets=False).total,
                     argnums=(0, 1))(jnp.asarray(raw[0]), jnp.asarray(raw[1]))
    np.testing.assert_allclose(np.asarray(grads[0]), sw.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(grads[1]), ss.grad.numpy(), rtol=1e-10, atol=1e-14)
    teacher_grad = jax.grad(lambda t: mlkd_loss(jnp.asarray(raw[0]), jnp.asarray(raw[1]), t, ts_j, y_j,
                                                config=config, check_targets=False).total)(tw_j)
    np.testing.assert_array_equal(np.asarray(teacher_grad), np.zeros(raw[2].shape))  # stop_gradient


# --- the quirks, one by one, against the public pieces ---------------------------------------------


def plain_gram_loss(a, b, temperature, classes: bool) -> float:
    def softmax(z):
        e = np.exp(z / temperature - (z / temperature).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pa, pb = softmax(a), softmax(b)
    gap = (pb.T @ pb - pa.T @ pa) if classes else (pb @ pb.T - pa @ pa.T)
    return float((gap**2).sum() / (a.shape[1] if classes else a.shape[0]))


def test_published_terms_are_batch_losses_times_kept_fractions():
    sw, ss, tw, ts, y = make_batch("mixed", 7, 6, seed=7)
    config = MLKDConfig()
    terms = mlkd_loss(sw, ss, tw, ts, y, config=config)
    rows, classes = confidence_masks(tw)
    kept_rows, kept_classes = rows.mean(), classes.mean()
    assert kept_rows == 4 / 7 and kept_classes == 3 / 6  # odd count: the median row itself is kept
    temps = config.temperatures
    w = config.kd_weight
    weak = sum(w * kept_rows * float(kd_loss(sw, tw, t)) for t in temps)
    strong = sum(w * float(kd_loss(a, b, t)) for (a, b), t in zip([(ss, ts)] * 3 + [(sw, tw)] * 2, temps))
    np.testing.assert_allclose(float(terms.kd), weak + strong, rtol=1e-13)
    cc = sum(w * kept_classes * plain_gram_loss(sw, tw, t, classes=True) for t in temps)
    bc = sum(w * kept_rows * plain_gram_loss(sw, tw, t, classes=False) for t in temps)
    np.testing.assert_allclose(float(terms.cc), cc, rtol=1e-13)
    np.testing.assert_allclose(float(terms.bc), bc, rtol=1e-13)


@needs_torch
def test_strong_view_gets_no_cc_bc_and_only_three_kd_terms():
    """Quirks 2 and 3: the strong student logits receive gradient from CE and kd at T0, 3, 5 only."""
    sw, ss, tw, ts, y = torch_batch(make_batch("mixed", 8, 10, seed=8))
    for config, strong_temps in ((MLKDConfig(), (4.0, 3.0, 5.0)),
                                 (MLKDConfig(strong_reads_strong=True), (4.0, 3.0, 5.0, 2.0, 6.0))):
        x = ss.clone().requires_grad_(True)
        mlkd_loss(sw, x, tw, ts, y, config=config).total.backward()
        z = ss.clone().requires_grad_(True)
        expected = config.ce_weight * F.cross_entropy(z, y) + sum(
            config.kd_weight * kd_loss(z, ts, t) for t in strong_temps)
        expected.backward()
        np.testing.assert_allclose(x.grad.numpy(), z.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_intended_masks_drop_the_unkept_rows():
    sw, ss, tw, ts, y = make_batch("mixed", 8, 10, seed=9)
    config = MLKDConfig(mask_per_row=True, ce_weight=0.0)
    rows, _ = confidence_masks(tw)
    # Changing the student only in rows the mask drops changes the weak kd and bc terms not at all ...
    moved = sw.copy()
    moved[~rows] = 2.0 * moved[~rows][:, ::-1]  # a real change (a shift alone would not move softmax)
    a = mlkd_loss(sw, ss, tw, ts, y, config=dataclasses.replace(config, strong_reads_strong=True))
    b = mlkd_loss(moved, ss, tw, ts, y, config=dataclasses.replace(config, strong_reads_strong=True))
    np.testing.assert_allclose(float(a.kd), float(b.kd), rtol=1e-14)
    # ... while the published reading sees them (the mask only scales the batch loss).
    c = mlkd_loss(sw, ss, tw, ts, y, config=MLKDConfig(ce_weight=0.0, strong_reads_strong=True))
    d = mlkd_loss(moved, ss, tw, ts, y, config=MLKDConfig(ce_weight=0.0, strong_reads_strong=True))
    assert abs(float(c.kd) - float(d.kd)) > 1e-3


def test_ls_standardizes_only_the_kd_terms():
    sw, ss, tw, ts, y = make_batch("mixed", 8, 10, seed=10)
    ls = mlkd_loss(sw, ss, tw, ts, y, config=MLKDConfig(logit_stand=True))
    raw = mlkd_loss(sw, ss, tw, ts, y, config=MLKDConfig())
    assert float(ls.cc) == float(raw.cc) and float(ls.bc) == float(raw.bc) and float(ls.ce) == float(raw.ce)
    assert abs(float(ls.kd) - float(raw.kd)) > 1e-3
    # kd of standardized logits does not see a per-row shift and scale of the student
    shifted = mlkd_loss(3.0 * sw + 7.0, 2.0 * ss - 1.0, tw, ts, y, config=MLKDConfig(logit_stand=True))
    np.testing.assert_allclose(float(shifted.kd), float(ls.kd), rtol=1e-6)


# --- the median ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([np.float32, np.float64]).flatmap(
    lambda dtype: arrays(dtype, st.integers(1, 40),
                         elements=st.one_of(st.floats(0, 1, width=32), st.sampled_from([0.25, 0.5, 1e-30])))))
def test_numpy_median_is_numpy_percentile_to_the_bit(x):
    ours = numpy_median(x)
    theirs = np.percentile(x, 50)
    assert ours.dtype == x.dtype
    assert ours == theirs
    assert np.asarray(ours).tobytes() == np.asarray(theirs, dtype=x.dtype).tobytes()


def test_numpy_median_on_every_library(backend):
    for values in ([4.0, 1.0, 3.0, 2.0], [0.3, 0.1, 0.2], [0.7]):
        x = np.array(values, dtype=np.float32)
        out = numpy_median(backend.asarray(x))
        assert_same_home(out, backend.asarray(x), backend.xp)
        assert float(backend.to_numpy(out)) == float(np.percentile(x, 50))


def test_numpy_median_of_adjacent_floats_rounds_as_numpy_does():
    """The only case where the median changes a ``<=`` mask: the two middle values one ulp apart, where
    NumPy's interpolation rounds to the upper one (ties to even) and so keeps it."""
    for low in (np.float32(1.0), np.nextafter(np.float32(1.0), np.float32(2.0))):
        high = np.nextafter(low, np.float32(2.0))
        x = np.array([high, low], dtype=np.float32)
        assert numpy_median(x) == np.percentile(x, 50)
    assert numpy_median(x) == high  # 1 + 2 ulp, the upper value (1 + 1 ulp is odd)


@needs_torch
def test_numpy_median_is_not_torch_median():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(numpy_median(x)) == 2.5 and float(torch.median(x)) == 2.0


def test_numpy_median_rejects_bad_shapes():
    for bad in (np.zeros((2, 2)), np.zeros(0)):
        with pytest.raises(ValueError, match="non-empty 1-D"):
            numpy_median(bad)


# --- config ----------------------------------------------------------------------------------------


def test_config_defaults_are_the_published_recipe():
    config = MLKDConfig()
    assert (config.temperature, config.ce_weight, config.kd_weight) == (4.0, 0.1, 0.9)
    assert config.temperatures == (4.0, 3.0, 5.0, 2.0, 6.0)
    assert not (config.logit_stand or config.mask_per_row or config.strong_reads_strong)
    ls = MLKDConfig.logit_standardized()
    assert (ls.temperature, ls.ce_weight, ls.kd_weight, ls.logit_stand) == (2.0, 1.0, 9.0, True)
    assert ls.temperatures == (2.0, 3.0, 5.0, 2.0, 6.0)  # 2 twice at base temperature 2
    intended = MLKDConfig.intended(temperature=3)
    assert intended.mask_per_row and intended.strong_reads_strong and intended.temperature == 3.0


def test_config_is_frozen_and_serializable():
    config = MLKDConfig.logit_standardized(base_temperature=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.temperature = 5.0  # type: ignore[misc]
    assert MLKDConfig(**mlkd_config_to_dict(config)) == config


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": 0}, ValueError, "temperature must be finite and positive"),
        ({"temperature": math.inf}, ValueError, "temperature must be finite and positive"),
        ({"temperature": "4"}, TypeError, "temperature must be a number"),
        ({"ce_weight": -0.1}, ValueError, "ce_weight must be finite and non-negative"),
        ({"kd_weight": math.nan}, ValueError, "kd_weight must be finite and non-negative"),
        ({"logit_stand": 1}, TypeError, "logit_stand must be True or False"),
        ({"mask_per_row": "yes"}, TypeError, "mask_per_row must be True or False"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        MLKDConfig(**kwargs)


# --- bad input -------------------------------------------------------------------------------------


@needs_torch
def test_bad_input_gets_one_clear_error():
    sw, ss, tw, ts, y = make_batch("mixed", 4, 5)
    with pytest.raises(ValueError, match=r"student_strong must have the shape of student_weak \(4, 5\)"):
        mlkd_loss(sw, ss[:3], tw, ts, y)
    with pytest.raises(ValueError, match="teacher_strong must have the shape"):
        mlkd_loss(sw, ss, tw, ts[:, :4], y)
    with pytest.raises(ValueError, match="teacher_weak must be 2-D"):
        mlkd_loss(sw, ss, tw[0], ts, y)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        mlkd_loss(sw, ss, tw, ts, np.array([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="targets must be 1-D"):
        mlkd_loss(sw, ss, tw, ts, y[:3])
    with pytest.raises(TypeError, match="one array library"):
        mlkd_loss(torch.tensor(sw), ss, tw, ts, y)
    t = [torch.tensor(a) for a in (sw, ss, tw, ts)]
    with pytest.raises(ValueError, match="teacher_weak is on meta"):
        mlkd_loss(t[0], t[1], torch.zeros(4, 5, dtype=torch.float64, device="meta"), t[3], torch.tensor(y))


def test_docstring_examples():
    import doctest

    import sld_core.mlkd

    result = doctest.testmod(sld_core.mlkd)
    assert result.attempted > 0 and result.failed == 0
