"""The paper's methods in the harness: the method-name grammar, the published recipe of every name, and
each trainer method against the ``sld_core`` math it composes and against plain float64 references
(values and gradients, on mixed / tied / all-correct / all-wrong batches). Short training runs and the
CLI paths are in tests/test_method_runs.py."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import backends  # noqa: E402
import sld_core  # noqa: E402
from harness.config import (  # noqa: E402
    METHOD_CONFIGS,
    TEACHER_PROCESSINGS,
    ConfigError,
    DKDConfig,
    KDConfig,
    MLKDConfig,
    SLDConfig,
    with_overrides,
)
from harness.config import train_config_from_dict as config_from_dict  # noqa: E402
from harness.config import train_config_to_dict as config_to_dict  # noqa: E402
from harness.method_names import (  # noqa: E402
    NAMED_METHODS,
    canonical_name,
    label_of,
    method_label,
    parse_method,
)
from harness.pairs import PAIRS  # noqa: E402
from harness.recipes import logit_standardized, method_config, pair_config  # noqa: E402
from harness.train import methods  # noqa: E402
from tests.reference import numeric_grad, ref_softmax, ref_swap, ref_terms  # noqa: E402
from tests.test_kd_terms import ref_kd_rows  # noqa: E402
from tests.test_mlkd import published_mlkd  # noqa: E402
from tests.test_processing import ref_gap, ref_process, ref_top  # noqa: E402
from tests.train_helpers import invoke  # noqa: E402

KINDS = ("mixed", "ties", "all-correct", "all-wrong")


def batch(kind: str, seed: int = 0, rows: int = 8, classes: int = 10) -> tuple[np.ndarray, ...]:
    """Student and teacher logits (float64) and labels; ``all-correct`` / ``all-wrong`` say how the
    teacher *and* the student do (the student's correctness drives the pseudo-teacher)."""
    rng = np.random.default_rng(seed)
    if kind == "ties":  # small integers: tied maxima in many rows
        s = rng.integers(0, 3, size=(rows, classes)).astype(np.float64)
        t = rng.integers(0, 3, size=(rows, classes)).astype(np.float64)
        return s, t, rng.integers(0, classes, size=rows)
    s, t = rng.normal(scale=3.0, size=(rows, classes)), rng.normal(scale=3.0, size=(rows, classes))
    y = rng.integers(0, classes, size=rows)
    if kind in ("all-correct", "all-wrong"):
        y = t.argmax(axis=1) if kind == "all-correct" else (t.argmax(axis=1) + 1) % classes
        top = np.arange(rows), s.argmax(axis=1)
        s[np.arange(rows), y], s[top] = s[top], s[np.arange(rows), y].copy()  # the student's top is y
        if kind == "all-wrong":
            s[np.arange(rows), y] -= 10.0
    return s, t, y


def as_torch(*arrays: np.ndarray, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [torch.tensor(a) if a.dtype.kind == "i" else torch.tensor(a, dtype=dtype) for a in arrays]


def loss_of(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in terms.items() if k.startswith("loss"))


def value_and_grad(method, student, *args, **kwargs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    student = student.clone().requires_grad_(True)
    terms = method(student, *args, **kwargs)
    (grad,) = torch.autograd.grad(
        loss_of(terms) if any(k.startswith("loss") for k in terms) else terms["total"], student
    )
    return terms, grad


# ------------------------------------------------------------------------------------------------- names


GRAMMAR = {
    "kd": ("kd", {}, False),
    "ls-kd": ("kd", {}, True),
    "kd+pt": ("kd", {"pseudo_teacher": True}, False),
    "kd@swap": ("kd", {"teacher_processing": "swap"}, False),
    "sld-kd": ("kd", {"teacher_processing": "swap", "pseudo_teacher": True}, False),
    "ls-sld-dkd": ("dkd", {"teacher_processing": "swap", "pseudo_teacher": True}, True),
    "dkd@smooth-all+pt": (
        "dkd",
        {"teacher_processing": "label_smoothing", "processing_rows": "all", "pseudo_teacher": True},
        False,
    ),
    "mlkd@max-add": ("mlkd", {"teacher_processing": "max_addition"}, False),
    "sld": ("sld", {}, False),
    "sld@none": ("sld", {"teacher_processing": "none"}, False),
    "SLD@Cswap-GE0.3": (
        "sld",
        {"teacher_processing": "conditional_swap", "swap_threshold": 0.3, "swap_mode": "at_least"},
        False,
    ),
    "sld@cswap-ltinf": (
        "sld",
        {"teacher_processing": "conditional_swap", "swap_threshold": math.inf, "swap_mode": "below"},
        False,
    ),
    "ce": ("ce", {}, False),
}


@pytest.mark.parametrize("name", list(GRAMMAR))
def test_names_parse_to_a_base_and_switches(name: str) -> None:
    base, switches, ls = GRAMMAR[name]
    spec = parse_method(name)
    assert (spec.base, spec.switches(), spec.logit_stand) == (base, switches, ls)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mlkd2", "the base must be one of ce, kd, dkd, mlkd, sld"),
        ("sld-sld", "sld-X puts SLD's swap and pseudo-teacher on X, one of kd, dkd, mlkd"),
        ("sld+pt", "sld has the pseudo-teacher already"),
        ("ls-ce", "ce has no teacher"),
        ("kd@", "'@' must be followed by a teacher processing"),
        ("kd@max-add-all", "unknown teacher processing 'max-add-all'"),
        ("kd@blur", "unknown teacher processing 'blur'"),
        ("sld@cswap-lt-1", "cswap-ltG (gap < G) or cswap-geG"),
        ("sld@cswap-eq0.5", "cswap-ltG (gap < G) or cswap-geG"),
        ("kd+pt@swap", "the base must be one of"),
        ("", "a method name must be a non-empty string"),
    ],
)
def test_bad_names_say_what_is_wrong(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_method(name)


@pytest.mark.parametrize("name", list(NAMED_METHODS))
def test_named_methods_are_canonical_and_every_pair_recipe_carries_the_name(name: str) -> None:
    assert canonical_name(name) == name
    for pair in PAIRS:
        config = pair_config(pair, name)
        assert method_label(config) == name, pair
        assert config_from_dict(config_to_dict(config)) == config  # config.json round trip
        assert config.out_dir == f"runs/{pair}/{name}"


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from(["kd", "dkd", "mlkd", "sld"]),
    processing=st.sampled_from(TEACHER_PROCESSINGS),
    rows=st.sampled_from(["wrong", "all"]),
    threshold=st.sampled_from([0.0, 0.05, 0.25, 0.5, 0.75, 1.0, 2.5, math.inf]),
    mode=st.sampled_from(["below", "at_least"]),
    pseudo=st.booleans(),
    ls=st.booleans(),
)
def test_a_label_names_every_switch_it_encodes(base, processing, rows, threshold, mode, pseudo, ls) -> None:
    loss = METHOD_CONFIGS[base](
        teacher_processing=processing,
        processing_rows=rows,
        swap_threshold=threshold,
        swap_mode=mode,
        pseudo_teacher=pseudo or base == "sld",
        logit_stand=ls,
    )
    label = label_of(base, loss)
    assert canonical_name(label) == label
    spec = parse_method(label)
    again = spec.apply(METHOD_CONFIGS[base]())
    assert spec.base == base and spec.logit_stand == ls
    assert again.teacher_processing == processing and again.pseudo_teacher == loss.pseudo_teacher
    assert again.processing_params() == loss.processing_params()
    assert label_of(base, dataclasses.replace(again, logit_stand=ls)) == label


# ----------------------------------------------------------------------------------------------- recipes


def test_logit_standardization_rewrites_each_method_as_published() -> None:
    kd = pair_config("wrn40_2-wrn16_2", "ls-kd").loss  # LS logs: base 2, KD weight 9; LS cfg: CE 1
    assert (kd.temperature, kd.kd_weight, kd.ce_weight, kd.logit_stand) == (2.0, 9.0, 1.0, True)
    assert pair_config("vgg13-vgg8", "ls-kd").loss.temperature == 3.0
    kd = pair_config("resnet50-mobilenetv2", "ls-kd").loss
    assert (kd.temperature, kd.kd_weight) == (3.0, 1.0)
    dkd = pair_config("resnet32x4-resnet8x4", "ls-dkd").loss  # alpha, beta x 9, DKD beta 8, T = 2
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.ce_weight, dkd.warmup_epochs) == (
        9.0,
        72.0,
        2.0,
        1.0,
        20,
    )
    dkd = pair_config("wrn40_2-wrn16_2", "ls-dkd").loss  # log "dkd,wrn_40_2,wrn_16_2,2,12,2.0"
    assert (dkd.alpha, dkd.beta, dkd.temperature) == (12.0, 24.0, 2.0)
    mlkd = pair_config("wrn40_2-wrn16_2", "ls-mlkd").loss
    assert mlkd.core() == sld_core.MLKDConfig.logit_standardized()  # T0 2, KD 9, CE 1, LS on
    assert pair_config("vgg13-vgg8", "ls-mlkd").loss.kd_weight == 6.0  # log "mlkd,vgg13,vgg8,2,6"
    sld = pair_config("wrn40_2-wrn16_2", "ls-sld").loss
    assert sld == SLDConfig(logit_stand=True)  # no published LS-SLD: SLD's temperatures and weights
    custom = pair_config("vgg13-vgg8", "ls-kd", base_temperature=4, kd_weight=3)
    assert (custom.loss.temperature, custom.loss.kd_weight) == (4.0, 3.0)
    with pytest.raises(ConfigError, match="sld has no single temperature"):
        pair_config("vgg13-vgg8", "ls-sld", base_temperature=2)
    with pytest.raises(ConfigError, match="already logit-standardized"):
        logit_standardized(kd)
    with pytest.raises(ConfigError, match="parameters of logit standardization"):
        method_config("kd", kd_weight=9)


def test_mlkd_recipe_is_the_published_480_epoch_one() -> None:
    for name, pair in PAIRS.items():
        config = pair_config(name, "mlkd")
        small = pair.student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"}
        assert config.method == "mlkd" and config.loss == MLKDConfig()
        assert config.loss.core() == sld_core.MLKDConfig()  # T0 4, CE 0.1, KD 0.9, quirks on
        assert (config.optim.epochs, config.optim.lr_milestones, config.data.views) == (
            480,
            (150, 180, 210),
            2,
        )
        assert config.optim.lr == (0.01 if small else 0.025)
    with pytest.raises(ConfigError, match="data.views must be 2 for method 'mlkd'"):
        with_overrides(pair_config("vgg13-vgg8", "mlkd"), {"data.views": 1})


def test_switches_change_the_loss_only() -> None:
    for name, base in (("sld-dkd", "dkd"), ("kd+pt", "kd"), ("sld-mlkd", "mlkd"), ("sld@max-add", "sld")):
        with_switch, plain = pair_config("resnet56-resnet20", name), pair_config("resnet56-resnet20", base)
        assert (with_switch.optim, with_switch.data) == (plain.optim, plain.data)
    assert pair_config("resnet56-resnet20", "sld-dkd").loss == DKDConfig(
        beta=2.0, teacher_processing="swap", pseudo_teacher=True
    )
    sld = pair_config("resnet32x4-resnet8x4", "sld")
    assert sld.loss == SLDConfig() and sld.loss.core() == sld_core.SLDConfig()  # the fused path's config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"teacher_processing": "blur"}, "kd.teacher_processing must be one of"),
        ({"swap_threshold": -0.1}, "kd.swap_threshold must be a probability gap >= 0"),
        ({"swap_threshold": math.nan}, "kd.swap_threshold must be a probability gap >= 0"),
        ({"swap_mode": "above"}, "kd.swap_mode must be one of"),
        ({"processing_rows": "some"}, "kd.processing_rows must be one of"),
        ({"gamma": math.nan}, "kd.gamma must be a finite number"),
        ({"pseudo_teacher": 1}, "kd.pseudo_teacher must be true or false"),
    ],
)
def test_switch_values_are_checked(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KDConfig(**change)


# ----------------------------------------------------------------------------- the fused path is kept


@pytest.mark.parametrize("kind", KINDS)
def test_default_sld_and_kd_go_through_the_fused_path_bit_for_bit(kind, monkeypatch) -> None:
    s, t, y = as_torch(*batch(kind, seed=1))
    seen = []
    fused = backends.sld_loss

    def spy(*args, **kwargs):
        seen.append(kwargs["config"])
        return fused(*args, **kwargs)

    monkeypatch.setattr(backends, "sld_loss", spy)
    cases = [
        (methods.sld, SLDConfig(), sld_core.SLDConfig(), "loss_sld"),
        (
            methods.kd,
            KDConfig(),
            sld_core.SLDConfig(temperatures=(4.0,), pseudo_teacher=False, teacher_swap=False),
            "loss_kd",
        ),
        (
            methods.kd,
            KDConfig(teacher_processing="swap"),
            sld_core.SLDConfig(temperatures=(4.0,), pseudo_teacher=False),
            "loss_kd",
        ),
    ]
    for method, config, core, key in cases:
        seen.clear()
        for epoch in (1, 151):
            terms, grad = value_and_grad(method, s, t, y, epoch=epoch, config=config)
            student = s.clone().requires_grad_(True)
            direct = fused(student, t, y, epoch=epoch, config=core, check_targets=False)
            (direct_grad,) = torch.autograd.grad(direct.total, student)
            assert torch.equal(terms[key], direct.total) and torch.equal(grad, direct_grad)
            assert torch.equal(terms["kl_teacher"], direct.teacher)
        assert seen == [core] * 2  # the method's call at both epochs (the direct one bypasses the spy)


# ------------------------------------------------------------------------- composition == fused path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("detach", [False, True], ids=["pt-grad", "pt-detached"])
def test_kd_with_swap_and_pseudo_teacher_at_T1_to_6_composed_equals_the_fused_sld(kind, detach) -> None:
    s, t, y = as_torch(*batch(kind, seed=2))
    config = SLDConfig(detach_pseudo_teacher=detach)
    for epoch in (150, 151):  # the pseudo-teacher off, then on
        fused, fused_grad = value_and_grad(methods.sld, s, t, y, epoch=epoch, config=config)
        # the composition written out of sld_core's public pieces, plainly
        student = s.clone().requires_grad_(True)
        temps = (1, 2, 3, 4, 5, 6)
        pseudo = sld_core.pseudo_teacher_logits(student, y, detach=detach)
        by_hand = 0.1 * sld_core.cross_entropy(student, y) + 0.9 * (
            sld_core.kd_loss(student, sld_core.swap_logits(t, y), temps)
            + (epoch > 150) * sld_core.kd_loss(student, pseudo, temps)
        )
        (hand_grad,) = torch.autograd.grad(by_hand, student)
        composed, composed_grad = value_and_grad(
            methods.logit_kd_terms, s, t, y, epoch=epoch, config=config, composed=True
        )
        for total, grad in ((by_hand, hand_grad), (composed["total"], composed_grad)):
            torch.testing.assert_close(total, fused["loss_sld"], rtol=2e-6, atol=0)
            torch.testing.assert_close(grad, fused_grad, rtol=1e-5, atol=2e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "config",
    [
        KDConfig(teacher_processing="swap", pseudo_teacher=True, gamma=0),
        KDConfig(pseudo_teacher=True, gamma=0, detach_pseudo_teacher=True),
        SLDConfig(teacher_processing="none", gamma=0),
        SLDConfig(pseudo_teacher=False),
    ],
    ids=["sld-kd", "kd+pt-detached", "sld@none", "sld-without-pt"],
)
def test_composed_route_equals_the_fused_route_for_every_fusable_config(kind, config) -> None:
    s, t, y = as_torch(*batch(kind, seed=3))
    fused, fused_grad = value_and_grad(methods.logit_kd_terms, s, t, y, epoch=10, config=config)
    composed, composed_grad = value_and_grad(
        methods.logit_kd_terms, s, t, y, epoch=10, config=config, composed=True
    )
    # float32 both: a KL sums p (log p - log q) over the classes, so the inputs' rounding becomes a few
    # ulps of the result (more where the two distributions nearly agree).
    for key in ("total", "ce", "kl_teacher", "kl_pseudo"):
        torch.testing.assert_close(composed[key], fused[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(composed_grad, fused_grad, rtol=1e-5, atol=2e-7)


# ---------------------------------------------------------------- processing and LS vs float64 references


PROCESSINGS = {
    "none": ("none", {}),
    "soft-add": ("soft_addition", {}),
    "soft-add-all": ("soft_addition", {"rows": "all"}),
    "max-add": ("max_addition", {}),
    "double": ("double_target", {}),
    "halve-all": ("halve_target", {"rows": "all"}),
    "smooth": ("label_smoothing", {}),
    "smooth-all": ("label_smoothing", {"rows": "all"}),
    "cswap-lt0.3": ("conditional_swap", {"threshold": 0.3, "mode": "below"}),
    "cswap-ge0.3": ("conditional_swap", {"threshold": 0.3, "mode": "at_least"}),
}


def sld_config_for(token: str, **changes) -> SLDConfig:
    return dataclasses.replace(pair_config("wrn40_2-wrn16_2", f"sld@{token}").loss, **changes)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("token", list(PROCESSINGS))
def test_sld_with_another_teacher_processing_matches_float64_reference(kind, token) -> None:
    s, t, y = batch(kind, seed=4)
    name, params = PROCESSINGS[token]
    config = sld_config_for(token, gamma=5)
    for epoch in (5, 6):
        terms = methods.logit_kd_terms(*as_torch(s, t, y, dtype=torch.float64), epoch=epoch, config=config)
        expected = ref_terms(
            s, ref_process(t, y, name, **params), y, epoch=epoch, gamma=5, teacher_swap=False
        )
        assert terms["total"].dtype == torch.float64  # the composed route keeps float64
        for key, ref_key in (
            ("total", "total"),
            ("ce", "ce"),
            ("kl_teacher", "teacher"),
            ("kl_pseudo", "pseudo"),
        ):
            np.testing.assert_allclose(float(terms[key]), expected[ref_key], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("token", ["max-add", "smooth-all", "cswap-ge0.3"])
def test_sld_with_another_teacher_processing_has_the_reference_gradient(token) -> None:
    s, t, y = batch("mixed", seed=5, rows=4, classes=5)
    name, params = PROCESSINGS[token]
    processed = ref_process(t, y, name, **params)
    config = sld_config_for(token, gamma=0)
    _, grad = value_and_grad(methods.sld, *as_torch(s, t, y, dtype=torch.float64), epoch=1, config=config)
    expected = numeric_grad(
        lambda x: ref_terms(x, processed, y, epoch=1, gamma=0, teacher_swap=False)["total"], s
    )
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-6, atol=1e-8)


def ref_ls_kd(s, t, y, temperatures, *, ce_weight, kd_weight, pseudo: bool) -> float:
    """KD on standardized logits (the raw student for CE), the pseudo-teacher the swapped student."""
    ce = math.fsum(-math.log(ref_softmax(list(s[b]), 1.0)[int(y[b])]) for b in range(len(y))) / len(y)
    teacher = ref_kd_rows(s, t, temperatures, standardize=True).mean()
    pseudo_term = ref_kd_rows(s, ref_swap(s, y), temperatures, standardize=True).mean() if pseudo else 0.0
    return ce_weight * ce + kd_weight * (teacher + pseudo_term)


@pytest.mark.parametrize("kind", KINDS)
def test_logit_standardized_kd_and_sld_match_float64_reference(kind) -> None:
    s, t, y = batch(kind, seed=6)
    args = as_torch(s, t, y, dtype=torch.float64)
    kd = pair_config("wrn40_2-wrn16_2", "ls-kd").loss  # T 2, CE 1, KD 9
    got = methods.kd(*args, epoch=1, config=kd)["loss_kd"]
    np.testing.assert_allclose(
        float(got), ref_ls_kd(s, t, y, (2.0,), ce_weight=1.0, kd_weight=9.0, pseudo=False), rtol=1e-11
    )
    sld = dataclasses.replace(pair_config("wrn40_2-wrn16_2", "ls-sld").loss, gamma=0)
    got = methods.sld(*args, epoch=1, config=sld)["loss_sld"]
    expected = ref_ls_kd(s, ref_swap(t, y), y, (1, 2, 3, 4, 5, 6), ce_weight=0.1, kd_weight=0.9, pseudo=True)
    np.testing.assert_allclose(float(got), expected, rtol=1e-11)
    _, grad = value_and_grad(
        methods.kd, *as_torch(s[:3, :5], t[:3, :5], y[:3] % 5, dtype=torch.float64), epoch=1, config=kd
    )
    expected_grad = numeric_grad(
        lambda x: ref_ls_kd(x, t[:3, :5], y[:3] % 5, (2.0,), ce_weight=1.0, kd_weight=9.0, pseudo=False),
        s[:3, :5],
    )
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------- DKD


def torch_swap(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The swap as a gather with a per-row permutation, written plainly (differentiable)."""
    rows = []
    for b in range(z.shape[0]):
        order = list(range(z.shape[1]))
        top, label = int(z[b].argmax()), int(y[b])
        order[top], order[label] = label, top
        rows.append(z[b, order])
    return torch.stack(rows)


def mdistiller_dkd(
    s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float, beta: float
) -> torch.Tensor:
    """DKD spelled as mdistiller spells it (softmax, the target/other split, the -1000 mask), float64."""
    gt = F.one_hot(y, s.shape[1]).to(s.dtype)
    ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], dim=1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], dim=1)
    tckd = (bt * (bt.log() - bs.log())).sum() * temperature**2 / y.shape[0]
    log_q = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    p = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    nckd = (p * (p.clamp_min(1e-300).log() - log_q)).sum() * temperature**2 / y.shape[0]
    return alpha * tckd + beta * nckd


def zscore(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(dim=1, keepdim=True)) / (1e-7 + z.std(dim=1, keepdim=True))


DKD_VARIANTS = {
    "sld-dkd": ("sld-dkd", False),
    "dkd+pt": ("dkd+pt", False),
    "ls-dkd": ("ls-dkd", False),
    "ls-sld-dkd": ("ls-sld-dkd", False),
    "dkd@smooth": ("dkd@smooth", False),
    "sld-dkd-detached": ("sld-dkd", True),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", list(DKD_VARIANTS))
def test_dkd_with_switches_equals_a_hand_written_composition(kind, variant) -> None:
    name, detach = DKD_VARIANTS[variant]
    config = dataclasses.replace(
        pair_config("wrn40_2-wrn16_2", name).loss, gamma=3, detach_pseudo_teacher=detach
    )
    s_np, t_np, y_np = batch(kind, seed=7)
    s, t, y = as_torch(s_np, t_np, y_np)
    for epoch in (3, 4, 30):  # pseudo-teacher off / on; inside and after the warm-up
        terms, grad = value_and_grad(methods.dkd, s, t, y, epoch=epoch, config=config)
        student = torch.tensor(s_np, requires_grad=True)
        processing, params = {
            "sld-dkd": ("swap", {}),
            "ls-sld-dkd": ("swap", {}),
            "dkd@smooth": ("label_smoothing", {}),
        }.get(name, ("none", {}))
        teacher = torch.tensor(
            ref_process(t_np, y_np, processing, **params) if processing != "none" else t_np
        )
        a, b = (zscore(student), zscore(teacher)) if config.logit_stand else (student, teacher)
        distill = mdistiller_dkd(a, b, y, config.temperature, config.alpha, config.beta)
        if config.pseudo_teacher and epoch > 3:
            pseudo = torch_swap(a.detach() if detach else a, y)
            distill = distill + mdistiller_dkd(a, pseudo, y, config.temperature, config.alpha, config.beta)
        expected = config.ce_weight * F.cross_entropy(student, y) + min(epoch / 20, 1.0) * distill
        (expected_grad,) = torch.autograd.grad(expected, student)
        torch.testing.assert_close(loss_of(terms).double(), expected, rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=2e-6)
        if config.pseudo_teacher and epoch <= 3:
            assert float(terms["pseudo_tckd"]) == float(terms["pseudo_nckd"]) == 0.0


# -------------------------------------------------------------------------------------------------- MLKD


def mlkd_step(kind: str, seed: int = 8, rows: int = 8, classes: int = 10):
    rng = np.random.default_rng(seed)
    sw, ss, tw, ts = (rng.normal(scale=2.0, size=(rows, classes)) for _ in range(4))
    y = rng.integers(0, classes, size=rows)
    if kind == "all-correct":
        y = tw.argmax(axis=1)
    elif kind == "all-wrong":
        y = (tw.argmax(axis=1) + 1) % classes
    elif kind == "ties":
        tw[:, 1], sw = tw[:, 0], np.round(sw)
    return sw, ss, tw, ts, y


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mlkd", "ls-mlkd", "mlkd@swap", "ls-mlkd@max-add"])
def test_mlkd_through_the_trainer_is_sld_core_mlkd_loss_of_the_same_logits(kind, name) -> None:
    sw, ss, tw, ts, y = mlkd_step(kind)
    config = pair_config("wrn40_2-wrn16_2", name).loss
    student = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (sw, ss)]
    teacher = as_torch(tw, ts)
    labels = torch.tensor(y)
    terms = methods.METHODS["mlkd"](
        methods.StepLogits(tuple(student), tuple(teacher), labels), epoch=1, config=config
    )
    processing = {"mlkd@swap": ("swap", {}), "ls-mlkd@max-add": ("max_addition", {})}.get(name)
    if processing:  # the teacher's views processed as the reference rule says, then the core loss
        teacher = as_torch(*(ref_process(t, y, processing[0]) for t in (tw, ts)))
    core = sld_core.mlkd_loss(*student, *teacher, labels, config=config.core())
    assert set(terms) == {"loss_ce", "loss_kd", "loss_cc", "loss_bc"}
    for key, value in (
        ("loss_ce", core.ce),
        ("loss_kd", core.kd),
        ("loss_cc", core.cc),
        ("loss_bc", core.bc),
    ):
        torch.testing.assert_close(terms[key], value, rtol=1e-6, atol=0)
    grads = torch.autograd.grad(loss_of(terms), student)
    core_grads = torch.autograd.grad(core.total, student)
    for got, expected in zip(grads, core_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mlkd+pt", "sld-mlkd", "ls-sld-mlkd"])
def test_mlkd_pseudo_teacher_matches_float64_reference(kind, name) -> None:
    sw, ss, tw, ts, y = mlkd_step(kind, seed=9)
    config = dataclasses.replace(pair_config("wrn40_2-wrn16_2", name).loss, gamma=1)
    student = tuple(torch.tensor(a, requires_grad=True) for a in (sw, ss))  # float64 end to end
    step = methods.StepLogits(student, tuple(as_torch(tw, ts, dtype=torch.float64)), torch.tensor(y))
    before = methods.mlkd(step, epoch=1, config=config)["loss_pseudo"]
    after = methods.mlkd(step, epoch=2, config=config)
    assert float(before) == 0.0
    expected = config.kd_weight * sum(
        ref_kd_rows(v, ref_swap(v, y), config.temperatures, standardize=config.logit_stand).mean()
        for v in (sw, ss)
    )
    np.testing.assert_allclose(float(after["loss_pseudo"].detach()), expected, rtol=1e-11, atol=1e-13)
    if config.teacher_processing == "swap":  # and the rest of the loss sees the swapped teacher
        core = sld_core.mlkd_loss(
            *(torch.tensor(a) for a in (sw, ss, ref_swap(tw, y), ref_swap(ts, y))),
            torch.tensor(y),
            config=config.core(),
        )
        np.testing.assert_allclose(float(after["loss_kd"].detach()), float(core.kd), rtol=1e-12)


def test_mlkd_intended_switches_from_the_command_line_reach_the_trainer_loss(tmp_path) -> None:
    result = invoke(
        "train", "--pair", "wrn40_2-wrn16_2", "--method", "mlkd", "--set", "mlkd.mask_per_row=true",
        "--set", "mlkd.strong_reads_strong=true", "--runs-dir", tmp_path, "--print-config",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = config_from_dict(json.loads(result.stdout)).loss  # what config.json holds and --config reads
    assert config.core() == sld_core.MLKDConfig.intended()
    sw, ss, tw, ts, y = mlkd_step("mixed", seed=11)
    student = tuple(torch.tensor(a, requires_grad=True) for a in (sw, ss))  # float64 end to end
    step = methods.StepLogits(student, tuple(as_torch(tw, ts, dtype=torch.float64)), torch.tensor(y))
    terms = methods.METHODS["mlkd"](step, epoch=1, config=config)
    batch64 = [torch.tensor(a) for a in (sw, ss, tw, ts, y)]
    intended = published_mlkd(*batch64, mask_per_row=True, strong_reads_strong=True)
    published = published_mlkd(*batch64)
    assert 0 < int(intended["mask"].sum()) < len(y)  # some rows kept, some masked: the readings differ
    for key in ("kd", "cc", "bc"):
        value = float(terms[f"loss_{key}"].detach())
        np.testing.assert_allclose(value, float(intended[key]), rtol=1e-12, err_msg=key)
        assert abs(value - float(published[key])) > 1e-3 * abs(float(published[key])), key


def test_mlkd_needs_two_views_and_a_teacher() -> None:
    s, t, y = as_torch(*batch("mixed"))
    with pytest.raises(ValueError, match="mlkd needs a teacher and exactly two views"):
        methods.mlkd(methods.StepLogits((s,), (t,), y), epoch=1, config=MLKDConfig())


# ---------------------------------------------------------------------------------------- conditional swap


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_swap_rows_and_its_extremes(kind) -> None:
    s_np, t_np, y_np = batch(kind, seed=10, rows=32)
    s, t, y = as_torch(s_np, t_np, y_np)
    for threshold, mode in ((0.3, "below"), (0.3, "at_least"), (0.9, "below")):
        config = SLDConfig(teacher_processing="conditional_swap", swap_threshold=threshold, swap_mode=mode)
        rows = methods.processed_rows(config, t, y)
        expected = [
            ref_top(t_np[b]) != y_np[b] and (ref_gap(t_np[b], y_np[b]) < threshold) == (mode == "below")
            for b in range(32)
        ]
        assert rows.tolist() == expected
    assert methods.processed_rows(SLDConfig(), t, y) is None  # the swap's rows are teacher_swap_rate's
    everything = SLDConfig(teacher_processing="conditional_swap", swap_threshold=math.inf)
    nothing = SLDConfig(teacher_processing="conditional_swap", swap_threshold=0.0)
    for config, same_as in ((everything, SLDConfig()), (nothing, SLDConfig(teacher_processing="none"))):
        got = methods.sld(s, t, y, epoch=200, config=config)["loss_sld"]
        torch.testing.assert_close(
            got, methods.sld(s, t, y, epoch=200, config=same_as)["loss_sld"], rtol=2e-6, atol=0
        )


# ------------------------------------------------------------------------------------------- registry


def test_every_base_method_returns_differentiable_loss_terms_and_detached_diagnostics() -> None:
    s, t, y = as_torch(*batch("mixed", seed=11))
    for name in NAMED_METHODS:
        base, config = method_config(name)
        student = (s.clone().requires_grad_(True), (s + 0.5).requires_grad_(True))
        terms = methods.METHODS[base](
            methods.StepLogits(student, (t, t.flip(0)), y),
            epoch=200,
            config=dataclasses.replace(config, gamma=1) if base != "ce" else config,
        )
        grads = torch.autograd.grad(loss_of(terms), student)
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
        assert all(not v.requires_grad for k, v in terms.items() if not k.startswith("loss")), name
