"""The ``sld train``, ``train-teacher``, ``eval`` and ``models`` commands, on a synthetic archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from .train_helpers import (  # noqa: E402
    invoke,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    read_metrics,
    without_timing,
    write_tiny_cifar,
)

TINY = ["--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--limit-test", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32, seed=1)


def test_unknown_pair_lists_the_valid_ones_without_traceback() -> None:
    result = invoke("train", "--pair", "resnet32x4-resnet9")
    assert result.exit_code == 1
    assert "unknown pair 'resnet32x4-resnet9'" in result.output
    assert "resnet32x4-resnet8x4" in result.output and "Traceback" not in result.output


def test_unknown_model_lists_the_valid_ones() -> None:
    result = invoke("train-teacher", "--model", "resnet9")
    assert result.exit_code == 1
    assert "unknown model 'resnet9'" in result.output and "wrn_40_2" in result.output


def test_ablation_flag_of_another_method_is_refused() -> None:
    result = invoke("train", "--pair", "resnet32x4-resnet8x4", "--method", "kd", "--temperatures", "1,2")
    assert result.exit_code == 1
    assert "--temperatures applies to method sld, not 'kd'" in result.output
    result = invoke("train", "--pair", "resnet32x4-resnet8x4", "--method", "ce", "--gamma", "3")
    assert result.exit_code == 1
    assert "--gamma applies to method kd / dkd / mlkd / sld, not 'ce'" in result.output


def test_train_without_teacher_says_which_command_to_run(tmp_path: Path, data_dir: Path) -> None:
    result = invoke("train", "--pair", "resnet32x4-resnet8x4", "--runs-dir", tmp_path, "--data-dir", data_dir)
    assert result.exit_code == 1
    assert f"sld train-teacher --model resnet32x4 --runs-dir {tmp_path}" in result.output
    assert "download_ckpts" in result.output


def test_sync_bn_flag_reaches_the_trainer_which_needs_cuda(tmp_path: Path, data_dir: Path) -> None:
    result = invoke(
        "train-teacher",
        "--model",
        "resnet8",
        "--sync-bn",
        "--out",
        tmp_path / "t",
        "--data-dir",
        data_dir,
        *TINY,
    )
    assert result.exit_code == 1
    assert "sync_bn (--sync-bn) needs CUDA devices" in " ".join(result.output.split())


def test_teacher_then_student_then_eval(tmp_path: Path, data_dir: Path) -> None:
    runs = tmp_path / "runs"
    teacher = invoke("train-teacher", "--model", "resnet8", "--runs-dir", runs, "--data-dir", data_dir, *TINY)
    assert teacher.exit_code == 0, teacher.output
    assert (runs / "teachers/resnet8/best.pt").is_file()

    out = tmp_path / "student"
    student = invoke(
        "train",
        "--student",
        "resnet8",
        "--teacher-model",
        "resnet8",
        "--method",
        "sld",
        "--teacher-processing",
        "none",
        "--gamma",
        "0",
        "--temperatures",
        "1,4",
        "--runs-dir",
        runs,
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--views",
        "1",
        *TINY,
    )
    assert student.exit_code == 0, student.output
    config = json.loads((out / "config.json").read_text())
    assert config["teacher_checkpoint"] == str(runs / "teachers/resnet8/best.pt")  # found, not given
    assert config["loss"] == {
        "teacher_processing": "none",
        "swap_threshold": 0.5,
        "swap_mode": "below",
        "processing_rows": "wrong",
        "pseudo_teacher": True,
        "gamma": 0.0,
        "detach_pseudo_teacher": False,
        "logit_stand": False,
        "temperatures": [1.0, 4.0],
        "ce_weight": 0.1,
        "kd_weight": 0.9,
    }
    assert "teacher resnet8: test top-1" in student.output

    evaluated = invoke("eval", out / "best.pt", "--data-dir", data_dir, "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    assert "(resnet8): test top-1" in evaluated.output
    foreign = tmp_path / "ckpt_epoch_240.pth"  # mdistiller's layout: no model name inside
    torch.save({"model": torch.load(out / "best.pt", weights_only=True)["model"]}, foreign)
    unnamed = invoke("eval", foreign, "--data-dir", data_dir, "--device", "cpu")
    assert unnamed.exit_code == 1 and "does not say which model it holds; pass --model" in unnamed.output
    named = invoke("eval", foreign, "--model", "resnet8", "--data-dir", data_dir, "--device", "cpu")
    assert named.exit_code == 0 and evaluated.output.split(": ")[-1] == named.output.split(": ")[-1]
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("{}")
    failed = invoke("eval", garbage, "--data-dir", data_dir, "--device", "cpu")
    assert failed.exit_code == 1 and "garbage.pt: not a readable torch checkpoint" in failed.output


def test_config_file_repeats_a_run(tmp_path: Path, data_dir: Path) -> None:
    first = tmp_path / "first"
    result = invoke(
        "train-teacher",
        "--model",
        "resnet8",
        "--data-dir",
        data_dir,
        "--out",
        first,
        "--seed",
        "3",
        "--lr",
        "0.02",
        "--lr-milestones",
        "1",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    again = tmp_path / "again"
    result = invoke("train", "--config", first / "config.json", "--out", again)
    assert result.exit_code == 0, result.output
    one, two = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert one.pop("out_dir") == str(first) and two.pop("out_dir") == str(again)
    assert one == two and one["seed"] == 3 and one["optim"]["lr"] == 0.02
    metrics = [without_timing(read_metrics(d)) for d in (first, again)]
    assert len(metrics[0]) == 1 and metrics[0] == metrics[1]  # same config, same seed: the same run

    refused = invoke("train", "--config", first / "config.json", "--method", "kd")
    assert refused.exit_code == 1 and "--method kd conflicts with" in refused.output


def test_models_table() -> None:
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert "resnet8x4" in result.output and "1.23 M" in result.output  # 1,233,540 parameters
