"""Short training runs of every new method and switch (2 epochs, resnet8, a synthetic 64/32-image
CIFAR-100), the ``sld train`` flags of the switches, and ``sld reproduce --study`` (resumable)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import harness.reproduce  # noqa: E402
import harness.train.loop  # noqa: E402
from harness.config import DataConfig, OptimConfig, TrainConfig, load_config  # noqa: E402
from harness.method_names import method_label  # noqa: E402
from harness.recipes import method_config  # noqa: E402
from harness.reproduce import DEFAULT_GAMMAS, STUDIES, study_entries  # noqa: E402
from harness.runs import read_metrics  # noqa: E402
from harness.train.loop import train  # noqa: E402

from .test_reproduce import TINY, spy_train, tiny_pair_config  # noqa: E402
from .test_train_cli import TINY as ONE_EPOCH  # noqa: E402
from .train_helpers import (  # noqa: E402
    invoke,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    write_tiny_cifar,
    write_untrained_teacher,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32, seed=3)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_teacher(tmp_path_factory.mktemp("teacher") / "ckpt_epoch_240.pth", seed=7)


def tiny_run(name: str, tmp_path: Path, data_dir: Path, teacher_ckpt: Path, *, views: int) -> TrainConfig:
    base, loss = method_config(name)
    return TrainConfig(
        student="resnet8",
        teacher="resnet8",
        teacher_checkpoint=str(teacher_ckpt),
        method=base,
        loss=dataclasses.replace(loss, gamma=1),  # the pseudo-teacher joins in epoch 2
        optim=OptimConfig(epochs=2, batch_size=32, lr=0.05, lr_milestones=(1,)),
        data=DataConfig(data_dir=str(data_dir), download=False, views=views, eval_batch_size=64),
        out_dir=str(tmp_path / "run"),
        log_every=1,
    )


# name -> (views, the loss terms and diagnostics its records carry)
RUNS = {
    "mlkd": (2, {"loss_ce", "loss_kd", "loss_cc", "loss_bc"}),
    "ls-mlkd": (2, {"loss_ce", "loss_kd", "loss_cc", "loss_bc"}),
    "sld-mlkd": (2, {"loss_ce", "loss_kd", "loss_cc", "loss_bc", "loss_pseudo"}),
    "ls-kd": (1, {"loss_kd", "ce", "kl_teacher"}),
    "kd+pt": (1, {"loss_kd", "ce", "kl_teacher", "kl_pseudo"}),
    "ls-dkd": (1, {"loss_ce", "loss_dkd", "tckd", "nckd"}),
    "sld-dkd": (1, {"loss_ce", "loss_dkd", "tckd", "nckd", "pseudo_tckd", "pseudo_nckd"}),
    "dkd@smooth-all": (1, {"loss_ce", "loss_dkd", "tckd", "nckd"}),
    "ls-sld": (2, {"loss_sld", "ce", "kl_teacher", "kl_pseudo"}),
    "sld@max-add": (1, {"loss_sld", "ce", "kl_teacher", "kl_pseudo"}),
    "sld@cswap-lt0.5": (1, {"loss_sld", "ce", "kl_teacher", "kl_pseudo", "teacher_processed_rate"}),
    "sld@soft-add": (1, {"loss_sld", "ce", "kl_teacher", "kl_pseudo"}),
    "sld@double": (1, {"loss_sld", "ce", "kl_teacher", "kl_pseudo"}),
    "sld@halve": (1, {"loss_sld", "ce", "kl_teacher", "kl_pseudo"}),
    "sld@smooth": (1, {"loss_sld", "ce", "kl_teacher", "kl_pseudo"}),
    "kd@swap": (1, {"loss_kd", "ce", "kl_teacher"}),
    "dkd+pt": (1, {"loss_ce", "loss_dkd", "tckd", "nckd", "pseudo_tckd", "pseudo_nckd"}),
    "mlkd+pt": (2, {"loss_ce", "loss_kd", "loss_cc", "loss_bc", "loss_pseudo"}),
}
PSEUDO_KEYS = {"loss_pseudo", "kl_pseudo", "pseudo_tckd", "pseudo_nckd"}


@pytest.mark.parametrize("name", list(RUNS))
def test_two_epoch_run_of_each_new_method_has_sane_metrics(
    name: str, tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    views, terms = RUNS[name]
    config = tiny_run(name, tmp_path, data_dir, teacher_ckpt, views=views)
    result = train(config, CPU)
    records = read_metrics(Path(config.out_dir) / "metrics.jsonl")
    common = {
        "epoch",
        "loss",
        "lr",
        "teacher_swap_rate",
        "student_swap_rate",
        "train_top1",
        "test_top1",
        "test_top5",
        "test_loss",
        "best_test_top1",
        "epoch_time_s",
        "images_per_s",
    }
    for record in records:
        assert set(record) == common | terms
        assert all(math.isfinite(v) for v in record.values())
        assert record["loss"] == pytest.approx(
            sum(v for k, v in record.items() if k.startswith("loss_")), rel=1e-5
        )
        assert 0.0 <= record["test_top1"] <= record["test_top5"] <= 1.0
        if "teacher_processed_rate" in record:  # the conditional swap swaps a subset of the wrong rows
            assert 0.0 <= record["teacher_processed_rate"] <= record["teacher_swap_rate"]
    for key in terms & PSEUDO_KEYS:
        assert records[0][key] == 0.0 and records[1][key] > 0.0  # gamma = 1: on from epoch 2
    assert method_label(load_config(Path(config.out_dir) / "config.json")) == name
    assert result.epochs == 2 and result.best_top1 == max(r["test_top1"] for r in records)


# ----------------------------------------------------------------------------------------------- sld train


def train_args(tmp_path: Path, data_dir: Path, teacher_ckpt: Path, *flags: str) -> list:
    return [
        "train",
        "--student",
        "resnet8",
        "--teacher-model",
        "resnet8",
        "--teacher",
        teacher_ckpt,
        "--data-dir",
        data_dir,
        "--out",
        tmp_path / "run",
        "--views",
        "1",
        *ONE_EPOCH,
        *flags,
    ]


def test_conditional_swap_from_the_command_line(tmp_path: Path, data_dir: Path, teacher_ckpt: Path) -> None:
    flags = ["--teacher-processing", "conditional_swap", "--swap-threshold", "0.2", "--swap-mode", "at_least"]
    result = invoke(*train_args(tmp_path, data_dir, teacher_ckpt, *flags))
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "run" / "config.json")
    assert (config.loss.teacher_processing, config.loss.swap_threshold, config.loss.swap_mode) == (
        "conditional_swap",
        0.2,
        "at_least",
    )
    assert method_label(config) == "sld@cswap-ge0.2"
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert 0.0 <= record["teacher_processed_rate"] <= record["teacher_swap_rate"]
    assert "conditional" in result.output  # the epoch line shows its rate

    named = invoke(*train_args(tmp_path / "named", data_dir, teacher_ckpt, "--method", "sld@cswap-lt0.3"))
    assert named.exit_code == 0, named.output
    config = load_config(tmp_path / "named" / "run" / "config.json")
    assert (config.loss.swap_threshold, config.loss.swap_mode) == (0.3, "below")

    refused = invoke(*train_args(tmp_path / "no", data_dir, teacher_ckpt, "--swap-threshold", "0.2"))
    assert refused.exit_code == 1
    assert "--swap-threshold applies to --teacher-processing conditional_swap, not 'swap'" in refused.output


def test_switch_flags_and_logit_standardization_from_the_command_line(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    flags = [
        "--method",
        "dkd",
        "--teacher-processing",
        "swap",
        "--pseudo-teacher",
        "--gamma",
        "0",
        "--logit-stand",
        "--base-temp",
        "3",
        "--kd-weight",
        "2",
    ]
    result = invoke(*train_args(tmp_path, data_dir, teacher_ckpt, *flags))
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "run" / "config.json")
    assert method_label(config) == "ls-sld-dkd"
    assert (config.loss.alpha, config.loss.beta, config.loss.temperature, config.loss.gamma) == (
        2.0,
        16.0,
        3.0,
        0,
    )
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert record["pseudo_tckd"] > 0

    again = invoke("train", "--config", tmp_path / "run" / "config.json", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output  # --config replays the switches
    assert load_config(tmp_path / "again" / "config.json").loss == config.loss

    for flags, message in (
        (["--base-temp", "2"], "--base-temp and the LS weight are parameters of logit standardization"),
        (["--method", "dkd", "--kd-weight", "2"], "--kd-weight applies to method kd / mlkd / sld, not 'dkd'"),
        (["--logit-stand", "--base-temp", "2"], "sld has no single temperature"),
        (["--method", "ce", "--pseudo-teacher"], "--pseudo-teacher/--no-pseudo-teacher applies to method kd"),
        (["--method", "kd@max-add", "--processing-rows", "all"], "--processing-rows applies to"),
        (["--method", "sld-ce"], "sld-X puts SLD's swap and pseudo-teacher on X"),
    ):
        refused = invoke(*train_args(tmp_path / "no", data_dir, teacher_ckpt, *flags))
        assert refused.exit_code == 1, flags
        assert message in " ".join(refused.output.split()) and "Traceback" not in refused.output


# ----------------------------------------------------------------------------------------- sld reproduce


PAIR = "resnet56-resnet20"


def test_study_entries() -> None:
    names = [e.name for e in study_entries(["ablations"])]
    assert names[:7] == [
        "sld@none",
        "sld",
        "sld@soft-add",
        "sld@max-add",
        "sld@double",
        "sld@halve",
        "sld@smooth",
    ]
    assert {"sld@cswap-lt0.5", "sld@cswap-ge0.25", "kd+pt", "sld-dkd", "mlkd+pt", "sld-mlkd"} <= set(names)
    assert [n for n in names if n.startswith("sld_gamma")] == [
        f"sld_gamma{g}" for g in DEFAULT_GAMMAS if g != 150
    ]
    assert len(names) == len(set(names))  # "sld" once, though four studies hold it
    assert [e.name for e in study_entries(["main"])] == ["kd", "dkd", "mlkd", "ls-mlkd", "sld"]
    assert [e.name for e in study_entries([], ["kd@none", "sld-kd"])] == ["kd", "sld-kd"]
    assert set(STUDIES) == {"main", "processing", "conditional-swap", "pseudo-teacher", "gamma", "ablations"}
    with pytest.raises(ValueError, match="unknown study 'bogus'; valid studies: main, processing"):
        study_entries(["bogus"])


def test_reproduce_a_study_then_resume_nothing(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(harness.reproduce, "pair_config", tiny_pair_config)
    args = [
        "reproduce",
        "--study",
        "conditional-swap,gamma",
        "--thresholds",
        "0.5",
        "--gammas",
        "1,150",
        "--pairs",
        PAIR,
        "--seeds",
        "1",
        "--out",
        tmp_path / "out",
        "--runs-dir",
        tmp_path / "runs",
        "--data-dir",
        data_dir,
        *TINY,
    ]
    calls: list = []
    spy_train(monkeypatch, calls)
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    runs = ["sld", "sld@cswap-lt0.5", "sld@cswap-ge0.5", "sld_gamma1"]
    assert calls == [(str(tmp_path / "runs/teachers/resnet8"), False)] + [
        (str(tmp_path / "out" / PAIR / run / "seed0"), False) for run in runs
    ]
    assert load_config(tmp_path / "out" / PAIR / "sld_gamma1/seed0/config.json").loss.gamma == 1.0
    report = (tmp_path / "out" / "REPORT.md").read_text()
    for row in (
        "| sld [loss.gamma=1] |",
        "| sld [loss.gamma=150] |",
        "| sld@cswap-lt0.5 |",
        "| sld@cswap-ge0.5 |",
    ):
        assert f"| {PAIR} {row}" in report, row
    assert "## Published numbers compared with" in report
    described = "SLD: KD at T = 1..6 + swap + pseudo-teacher after epoch 150 (2 views)"
    assert f"- sld ({described}): no number for these pairs" in report  # none for resnet56-resnet20
    assert "- sld@cswap-lt0.5 (SLD swapping only where p[top] - p[target] < 0.5): none published" in report
    calls.clear()
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert calls == [] and second.output.count("skipped") == 4


def test_reproduce_refuses_unknown_studies_and_methods(tmp_path: Path) -> None:
    for flags, message in (
        (["--study", "bogus"], "unknown study 'bogus'"),
        (["--methods", "kd,sld@blur"], "unknown teacher processing 'blur'"),
        (["--study", "gamma", "--gammas", "x"], "--gammas takes comma-separated numbers"),
    ):
        result = invoke("reproduce", "--pairs", PAIR, "--out", tmp_path, *flags)
        assert result.exit_code == 1 and message in result.output, flags
        assert "Traceback" not in result.output


def test_reproduce_default_is_the_main_table(monkeypatch, tmp_path: Path) -> None:
    seen: list = []

    def grid(pairs, methods, seeds, out, overrides):
        seen.append(([*pairs], [m.name for m in methods]))
        raise SystemExit(0)

    monkeypatch.setattr(harness.reproduce, "grid_configs", grid)
    invoke("reproduce", "--out", tmp_path)
    invoke("reproduce", "--study", "pseudo-teacher", "--out", tmp_path)
    assert seen[0][1] == ["kd", "dkd", "mlkd", "ls-mlkd", "sld"] and len(seen[0][0]) == 12
    assert seen[1][0] == ["wrn40_2-wrn16_2"] and seen[1][1][:3] == ["kd", "kd+pt", "sld-kd"]


def test_study_runs_are_json_round_trips() -> None:
    for entry in study_entries(["ablations", "main"]):
        config = harness.reproduce.grid_configs([PAIR], [entry], 1, "out")[0]
        assert load_config_roundtrip(config) == config


def load_config_roundtrip(config: TrainConfig) -> TrainConfig:
    from harness.config import train_config_from_dict, train_config_to_dict

    return train_config_from_dict(json.loads(json.dumps(train_config_to_dict(config))))


def test_runs_from_before_the_switches_load_and_resume(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    """config.json and last.pt written when the swap was a bool (``teacher_swap`` / ``swap_teacher``)."""
    from harness.config import train_config_to_dict
    from harness.train.checkpoint import load_checkpoint, save_checkpoint

    config = tiny_run("sld", tmp_path, data_dir, teacher_ckpt, views=1)
    train(config, CPU, stop_after=1)
    run = Path(config.out_dir)
    old_loss = {
        "temperatures": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "gamma": 1,
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "teacher_swap": True,
        "pseudo_teacher": True,
        "detach_pseudo_teacher": False,
    }
    legacy = {**train_config_to_dict(config), "loss": old_loss}
    (run / "config.json").write_text(json.dumps(legacy))
    payload = load_checkpoint(run / "last.pt")
    save_checkpoint(run / "last.pt", {**payload, "config": legacy})
    assert load_config(run / "config.json") == config
    result = train(config, CPU, resume=True)  # the stored legacy config is the same run
    assert result.epochs == 2
    kd = {**train_config_to_dict(config), "method": "kd", "loss": {"temperature": 4.0, "swap_teacher": False}}
    (run / "config.json").write_text(json.dumps(kd))
    assert load_config(run / "config.json").loss.teacher_processing == "none"
