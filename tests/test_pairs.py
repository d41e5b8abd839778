"""The pair registry, the published numbers and ``sld pairs``.

The expected values below are written out again by hand from the sources (the official SLD configs,
the mdistiller / CRD / Logit-Standardization READMEs), so a slip in the registry shows up here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.pairs import PAIRS, Pair, Recipe, get_pair
from harness.paper_results import CIFAR100_RESULTS, STUDENT_TOP1, TEACHER_TOP1, PublishedResult, Top1
from harness.recipes import pair_config
from tests.manifests import load_manifest

# configs/cifar100/sld/<config>.yaml of StephenEkaputra/Swapped-Logit-Distillation: SOLVER.LR
OFFICIAL_LR = {
    "resnet56-resnet20": 0.025,
    "resnet110-resnet32": 0.025,
    "resnet32x4-resnet8x4": 0.025,
    "wrn40_2-wrn16_2": 0.025,
    "wrn40_2-wrn40_1": 0.025,
    "vgg13-vgg8": 0.025,
    "wrn40_2-vgg8": 0.025,
    "resnet32x4-shufflenetv1": 0.009,
    "resnet32x4-shufflenetv2": 0.008,
    "wrn40_2-shufflenetv1": 0.01,
    "vgg13-mobilenetv2": 0.008,
    "resnet50-mobilenetv2": 0.008,
}

# (KD, SLD) as recorded; None = not found
PUBLISHED_KD_SLD = {
    "resnet56-resnet20": (70.66, None),
    "resnet110-resnet32": (73.08, 74.57),
    "resnet32x4-resnet8x4": (73.33, 77.69),
    "wrn40_2-wrn16_2": (74.92, 77.19),
    "wrn40_2-wrn40_1": (73.54, None),
    "vgg13-vgg8": (72.98, None),
    "wrn40_2-vgg8": (None, None),
    "resnet32x4-shufflenetv1": (74.07, None),
    "resnet32x4-shufflenetv2": (74.45, 78.82),
    "wrn40_2-shufflenetv1": (74.83, None),
    "vgg13-mobilenetv2": (67.37, None),
    "resnet50-mobilenetv2": (67.35, 71.48),
}


@pytest.fixture(scope="module")
def manifest_models() -> set[str]:
    return set(load_manifest("cifar"))  # tests/data/cifar_checkpoint_manifest.json; missing is a failure


def test_there_are_the_twelve_official_pairs() -> None:
    assert set(PAIRS) == set(OFFICIAL_LR)
    assert len(PAIRS) == 12


def test_names_are_unique_and_match_their_keys() -> None:
    assert all(pair.name == key for key, pair in PAIRS.items())
    assert len({(p.teacher, p.student) for p in PAIRS.values()}) == len(PAIRS)
    assert all(name == name.lower() and name.count("-") == 1 for name in PAIRS)


@pytest.mark.parametrize("name", list(PAIRS))
def test_models_are_in_the_checkpoint_manifest(name: str, manifest_models: set[str]) -> None:
    pair = PAIRS[name]
    assert pair.teacher in manifest_models
    assert pair.student in manifest_models


@pytest.mark.parametrize("name", list(PAIRS))
def test_recipe_matches_the_official_config(name: str) -> None:
    r = PAIRS[name].recipe
    assert r.lr == OFFICIAL_LR[name]
    assert (r.epochs, r.batch_size, r.momentum, r.weight_decay) == (240, 64, 0.9, 5e-4)
    assert (r.lr_decay_epochs, r.lr_decay_rate) == ((150, 180, 210), 0.1)
    assert (r.ce_weight, r.kd_weight, r.gamma, r.num_views) == (0.1, 0.9, 150, 2)
    assert r.temperatures == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert r.teacher_swap and not r.detach_pseudo_teacher
    small_student = PAIRS[name].student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"}
    assert r.baseline_lr == (0.01 if small_student else 0.05)


def test_teacher_checkpoint_follows_the_cifar_teachers_layout() -> None:
    pair = get_pair("resnet32x4-resnet8x4")
    assert pair.teacher_checkpoint_path("download_ckpts") == Path(
        "download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"
    )
    assert (
        get_pair("resnet50-mobilenetv2").teacher_checkpoint
        == "cifar_teachers/ResNet50_vanilla/ckpt_epoch_240.pth"
    )


def test_get_pair_is_case_insensitive() -> None:
    assert get_pair(" VGG13-MobileNetV2 ") is PAIRS["vgg13-mobilenetv2"]


def test_get_pair_error_lists_every_valid_name() -> None:
    with pytest.raises(ValueError, match="unknown pair 'resnet32x4-resnet20'") as info:
        get_pair("resnet32x4-resnet20")
    assert all(name in str(info.value) for name in PAIRS)


def test_get_pair_rejects_a_non_string() -> None:
    with pytest.raises(TypeError, match="pair name must be a str, got int"):
        get_pair(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(PAIRS))
def test_published_numbers_belong_to_the_pair(name: str) -> None:
    pair: Pair = PAIRS[name]
    pub: PublishedResult = pair.published
    assert pub is CIFAR100_RESULTS[name]
    assert (pub.teacher_model, pub.student_model) == (pair.teacher, pair.student)
    kd, sld = PUBLISHED_KD_SLD[name]
    assert (None if pub.kd is None else pub.kd.value) == kd
    assert (None if pub.sld is None else pub.sld.value) == sld
    # Every teacher and student of the 12 pairs has a published accuracy of its own.
    assert pub.teacher_top1 is not None and pub.student_top1 is not None
    assert pub.teacher_top1.value > pub.student_top1.value
    # Distillation helps in every published row, and SLD beats KD wherever both are given.
    for top1 in pub.methods().values():
        if top1 is not None:
            assert pub.student_top1.value < top1.value
            assert top1.source
    if pub.kd is not None and pub.sld is not None:
        assert pub.sld.value > pub.kd.value


def test_results_cover_exactly_the_pairs() -> None:
    assert set(CIFAR100_RESULTS) == set(PAIRS)
    assert {p.teacher for p in PAIRS.values()} == set(TEACHER_TOP1)
    assert {p.student for p in PAIRS.values()} == set(STUDENT_TOP1)


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="percentage"):
        Top1(101.0, "x")
    with pytest.raises(ValueError, match="learning rates must be positive"):
        Recipe(lr=0.0, baseline_lr=0.05)
    with pytest.raises(ValueError, match="lr_decay_epochs must be increasing"):
        Recipe(lr=0.025, baseline_lr=0.05, lr_decay_epochs=(180, 150))


def test_recipe_builds_the_matching_sld_config() -> None:
    sld_core = pytest.importorskip("sld_core")
    if not hasattr(sld_core, "SLDConfig"):
        pytest.skip("sld_core.SLDConfig is not there yet")
    cfg = get_pair("wrn40_2-wrn16_2").recipe.sld_config()
    assert tuple(cfg.temperatures) == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert (cfg.gamma, cfg.ce_weight, cfg.kd_weight) == (150, 0.1, 0.9)
    assert cfg.teacher_swap and cfg.pseudo_teacher and not cfg.detach_pseudo_teacher


# The MLKD release's configs/cifar100/*.yaml: SOLVER.LR (no config for wrn40_2-vgg8; SLD's 0.025 is used)
MLKD_LR = {
    name: (0.01 if PAIRS[name].student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"} else 0.025)
    for name in PAIRS
}

# LS README ("KD+Ours", "DKD+Ours"), written out again: (LS-KD, LS-DKD)
PUBLISHED_LS_KD_DKD = {
    "resnet56-resnet20": (71.43, 72.32),
    "resnet110-resnet32": (74.17, 74.29),
    "resnet32x4-resnet8x4": (76.62, 77.01),
    "wrn40_2-wrn16_2": (76.11, 76.39),
    "wrn40_2-wrn40_1": (74.37, 74.89),
    "vgg13-vgg8": (74.36, 74.81),
    "wrn40_2-vgg8": (None, None),
    "resnet32x4-shufflenetv1": (None, None),
    "resnet32x4-shufflenetv2": (75.56, 77.37),
    "wrn40_2-shufflenetv1": (None, None),
    "vgg13-mobilenetv2": (68.61, 69.98),
    "resnet50-mobilenetv2": (69.02, 70.45),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_logit_standardized_numbers_are_the_ls_readme_ones(name: str) -> None:
    pub = PAIRS[name].published
    got = tuple(None if t is None else t.value for t in (pub.ls_kd, pub.ls_dkd))
    assert got == PUBLISHED_LS_KD_DKD[name]
    # logit standardization lifts KD and DKD wherever the README gives both numbers
    for plain, ls in ((pub.kd, pub.ls_kd), (pub.dkd, pub.ls_dkd)):
        if plain is not None and ls is not None:
            assert ls.value > plain.value


def _rows(output: str, name: str) -> list[list[str]]:
    return [line.split()[1:] for line in output.splitlines() if line.split()[:1] == [name]]


@pytest.mark.parametrize("columns", ["200", "80"])
def test_sld_pairs_shows_every_pair(columns: str) -> None:
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, ["pairs"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output  # nothing cut, even at 80 columns
    for name, pair in PAIRS.items():
        recipe, published = _rows(result.output, name)  # the lr table, then the published numbers
        small = pair.student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"}
        assert recipe == [
            pair.teacher,
            pair.student,
            f"{OFFICIAL_LR[name]:g}",
            "0.01" if small else "0.05",
            f"{MLKD_LR[name]:g}",
        ]
        kd, sld = PUBLISHED_KD_SLD[name]
        ls_kd, ls_dkd = PUBLISHED_LS_KD_DKD[name]
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        assert published[0] == fmt(kd) and published[4] == fmt(sld)
        assert published[5:] == [fmt(ls_kd), fmt(ls_dkd)]
    assert "240 epochs (mlkd: 480)" in " ".join(result.output.split())


def test_sld_pairs_for_one_pair_lists_every_named_method() -> None:
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.method_names import NAMED_METHODS

    result = CliRunner().invoke(app, ["pairs", "--pair", "wrn40_2-wrn16_2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in NAMED_METHODS:
        (row,) = _rows(result.output, name)
        base = row[0]
        assert base in {"ce", "kd", "dkd", "mlkd", "sld"}
    # method, base, lr, epochs, views ... published (the seed's headline pair)
    assert _rows(result.output, "ls-mlkd")[0][:4] == ["mlkd", "0.025", "480", "2"]
    assert _rows(result.output, "ls-mlkd")[0][-1] == "76.95"
    assert _rows(result.output, "sld")[0][:4] == ["sld", "0.025", "240", "2"]
    assert _rows(result.output, "sld")[0][-1] == "77.19"
    assert _rows(result.output, "sld-dkd")[0][:4] == ["dkd", "0.05", "240", "1"]
    assert _rows(result.output, "sld-dkd")[0][-1] == "–"
    bad = CliRunner().invoke(app, ["pairs", "--pair", "resnet9-resnet8"])
    assert bad.exit_code == 1 and "unknown pair 'resnet9-resnet8'" in bad.output


# The seed's ImageNet rows (paper_results: KD, DKD, MLKD, LS-MLKD, SLD) and the official configs'
# CE/KD weights (configs/imagenet/*/sld.yaml), written out again by hand.
IMAGENET_ROWS = {
    "resnet34-resnet18": ["0.5/0.5", "71.03", "71.70", "71.90", "72.08", "72.15"],
    "resnet50-mobilenetv1": ["1/0.5", "70.50", "72.05", "73.01", "73.22", "73.27"],
}


@pytest.mark.parametrize("columns", ["200", "80"])
def test_sld_pairs_shows_the_imagenet_pairs_their_recipe_and_the_gamma_note(columns: str) -> None:
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, ["pairs"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for name, row in IMAGENET_ROWS.items():
        assert _rows(result.output, name) == [row], name
    text = " ".join(result.output.split())  # the notes, whatever the wrapping
    assert "ImageNet: 100 epochs, batch 512, lr 0.2 x0.1 after 30/60/90, wd 1e-4" in text
    assert "gamma stays the official 150, so in 100 epochs the pseudo-teacher never switches on" in text
    assert "the paper recommends 30: sld train --pair resnet34-resnet18 --gamma 30" in text


def test_the_imagenet_gamma_note_is_true_and_its_command_sets_gamma_30() -> None:
    from typer.testing import CliRunner

    from harness.cli import app

    listed = CliRunner().invoke(app, ["pairs", "--pair", "resnet34-resnet18"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    (sld,) = _rows(listed.output, "sld")
    assert sld[:4] == ["sld", "0.2", "100", "2"] and "pt>150" in sld and sld[-1] == "72.15"
    for name in IMAGENET_ROWS:
        config = pair_config(name, "sld")
        assert config.loss.gamma == 150 and config.optim.epochs == 100  # never on, as the official runs
    pytest.importorskip("torch")  # sld train
    command = ["train", "--pair", "resnet34-resnet18", "--gamma", "30", "--print-config"]
    printed = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["loss"]["gamma"] == 30
