"""``sld train`` on image folders end to end (tiny real JPEG files): the ImageNet layout streamed through
DataLoader workers, a folder of bare class sub-folders held on the device CIFAR-style, the class list
recorded in the run, a bit-identical resume, a torchvision-layout raw teacher, and ``sld eval`` on the
recorded data."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from harness.data.synthetic_images import write_image_folder  # noqa: E402
from harness.models import build_model  # noqa: E402

from .train_helpers import (  # noqa: E402
    SLD,
    assert_same_state,
    final_state,
    invoke,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    read_metrics,
    subprocess_env,
    without_timing,
    write_tiny_cifar,
)

SMALL = ["--image-size", "32", "--batch-size", "6", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    return write_image_folder(root, num_classes=3, train_per_class=4, val_per_class=2, size=(48, 40))


@pytest.fixture(scope="module")
def classes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    return write_image_folder(
        root, num_classes=3, train_per_class=5, val_per_class=2, size=(40, 40), layout="classes", seed=1
    )


def _train(*args: str) -> None:
    result = invoke("train", *args)
    assert result.exit_code == 0, result.output


def test_imagenet_layout_trains_records_classes_and_resumes_bit_identically(imagenet: Path, tmp_path: Path):
    common = ["--dataset", "imagenet", "--data-dir", str(imagenet), "--student", "resnet18", "--method", "ce",
              "--epochs", "2", *SMALL]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _train(*common, "--out", str(whole))
    _train(*common, "--out", str(parts), "--stop-after", "1")
    _train("--out", str(parts), "--resume")  # the run's own config.json, classes included

    records = read_metrics(whole)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0.0 <= r["test_top1"] <= 1.0 and r["loss"] > 0 for r in records)
    config = json.loads((whole / "config.json").read_text())
    assert config["data"]["dataset"] == "imagenet"
    assert config["data"]["classes"] == ["n00000000", "n00000001", "n00000002"]
    assert_same_state(final_state(whole), final_state(parts))
    assert without_timing(read_metrics(parts)) == without_timing(records)

    evaluated = invoke("eval", str(whole / "last.pt"), "--json", "-", "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.output)
    assert (result["dataset"], result["images"], result["top1"]) == ("imagenet", 6, records[-1]["test_top1"])


def test_a_changed_class_list_is_refused(imagenet: Path, tmp_path: Path):
    out = tmp_path / "run"
    _train("--dataset", "imagenet", "--data-dir", str(imagenet), "--student", "resnet18", "--method", "ce",
           "--epochs", "1", *SMALL, "--out", str(out))
    (imagenet / "train" / "n00000003").mkdir()  # a new class appears in the folder
    try:
        result = invoke("train", "--config", str(out / "config.json"), "--out", str(tmp_path / "replay"))
    finally:
        (imagenet / "train" / "n00000003").rmdir()
    assert result.exit_code == 1
    assert "n00000003" in result.output


def test_folder_of_classes_cifar_style_with_a_seeded_split(classes_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    _train("--dataset", "folder", "--data-dir", str(classes_folder), "--augment", "cifar", "--val-fraction",
           "0.3", "--student", "resnet8", "--method", "ce", "--epochs", "1", *SMALL, "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["augment"] == "cifar" and len(config["data"]["classes"]) == 3
    (record,) = read_metrics(out)
    assert 0.0 <= record["test_top1"] <= 1.0


def test_torchvision_layout_raw_teacher_distills(imagenet: Path, tmp_path: Path):
    torch.manual_seed(0)
    teacher = tmp_path / "resnet34-raw.pth"
    torch.save(build_model("resnet34", num_classes=3).state_dict(), teacher)  # raw, as torchvision saves
    out = tmp_path / "kd"
    _train("--dataset", "imagenet", "--data-dir", str(imagenet), "--student", "resnet18", "--teacher-model",
           "resnet34", "--teacher", str(teacher), "--method", "kd", "--epochs", "1", *SMALL,
           "--out", str(out))
    (record,) = read_metrics(out)
    assert record["kl_teacher"] > 0 and 0.0 <= record["teacher_swap_rate"] <= 1.0


def test_imagenet_teachers_are_looked_up_as_torchvision_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.runs import TeacherNotFoundError, find_teacher, torch_hub_dir

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TeacherNotFoundError) as error:
        find_teacher("resnet34", tmp_path / "runs")
    message = str(error.value)
    assert "https://download.pytorch.org/models/resnet34-333f7ec4.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    cached = torch_hub_dir() / "resnet34-333f7ec4.pth"
    cached.parent.mkdir(parents=True)
    torch.save(build_model("resnet34").state_dict(), cached)
    assert find_teacher("resnet34", tmp_path / "runs") == cached


def test_imagenet_pairs_carry_the_official_recipes() -> None:
    from harness.pairs import IMAGENET_PAIRS, PAIRS, get_pair
    from harness.recipes import pair_config

    assert list(IMAGENET_PAIRS) == ["resnet34-resnet18", "resnet50-mobilenetv1"] and len(PAIRS) == 12
    assert get_pair("resnet50-mobilenetv1").student == "mobilenet_v1"
    sld = pair_config("resnet34-resnet18", "sld")
    optim, data = sld.optim, sld.data
    assert (optim.epochs, optim.batch_size, optim.lr, optim.lr_milestones) == (100, 512, 0.2, (30, 60, 90))
    assert (optim.weight_decay, data.dataset, data.views, data.eval_batch_size) == (1e-4, "imagenet", 2, 128)
    assert (sld.loss.ce_weight, sld.loss.kd_weight, sld.loss.gamma) == (0.5, 0.5, 150)  # off in 100 epochs
    assert pair_config("resnet50-mobilenetv1", "sld").loss.ce_weight == 1.0
    kd = pair_config("resnet34-resnet18", "kd").loss
    assert (kd.temperature, kd.ce_weight, kd.kd_weight) == (1.0, 0.5, 0.5)
    dkd = pair_config("resnet50-mobilenetv1", "dkd").loss
    assert (dkd.ce_weight, dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs) == (1.0, 1.0, 2.0, 1.0, 1)
    mlkd = pair_config("resnet34-resnet18", "mlkd")
    assert (mlkd.optim.epochs, mlkd.loss.temperature, mlkd.data.views) == (100, 1.0, 2)
    assert get_pair("resnet34-resnet18").published.sld.value == 72.15


def test_reproduce_an_imagenet_pair_with_a_torchvision_teacher(
    imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    grid = ["reproduce", "--pairs", "resnet34-resnet18", "--methods", "sld", "--seeds", "1",
            "--epochs", "1", "--data-dir", str(imagenet), "--out", str(tmp_path / "grid"),
            "--runs-dir", str(tmp_path / "runs"),
            "--batch-size", "6", "--image-size", "32", "--workers", "0", "--device", "cpu"]
    missing = invoke(*grid)
    assert missing.exit_code == 1 and "resnet34-333f7ec4.pth" in missing.output  # fetched, never trained
    weights = tmp_path / "torch" / "hub" / "checkpoints" / "resnet34-333f7ec4.pth"
    weights.parent.mkdir(parents=True)
    torch.save(build_model("resnet34", num_classes=3).state_dict(), weights)
    result = invoke(*grid)
    assert result.exit_code == 0, result.output
    run = tmp_path / "grid" / "resnet34-resnet18" / "sld" / "seed0"
    (record,) = read_metrics(run)
    assert json.loads((run / "config.json").read_text())["teacher_checkpoint"] == str(weights)
    assert record["kl_teacher"] > 0
    assert "72.15" in (tmp_path / "grid" / "REPORT.md").read_text()  # the published number beside it
    mixed = invoke("reproduce", "--pairs", "resnet34-resnet18,resnet56-resnet20", "--methods", "sld")
    assert mixed.exit_code == 1 and "different data sets" in mixed.output


def _plugin_cli(tmp_path: Path) -> tuple[Callable[..., None], Path]:
    """A package ``tiny_zoo`` (``tiny_zoo:build``, a callable taking ``num_classes``) on the PYTHONPATH
    of new processes only, tiny CIFAR-layout data, and ``sld(*args)`` that runs the console script in a
    new process with it and asserts exit code 0: each process must rebuild the model from its spec."""
    plugins = tmp_path / "plugins"
    (plugins / "tiny_zoo").mkdir(parents=True)
    (plugins / "tiny_zoo" / "__init__.py").write_text(
        "import torch.nn as nn\n\n"
        "def build(num_classes=100):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n"
    )
    data = write_tiny_cifar(tmp_path / "data", n_train=40, n_test=20)
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]))

    def sld(*args: str) -> None:
        done = subprocess.run([SLD, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    return sld, data


def test_a_plug_in_student_survives_a_config_replay_in_a_new_process(tmp_path: Path) -> None:
    """A model given by import path is recorded in config.json and rebuilt from it by a new process."""
    sld, data = _plugin_cli(tmp_path)
    first, replay = tmp_path / "first", tmp_path / "replay"
    sld("train", "--student", "tiny_zoo:build", "--method", "ce", "--epochs", "1", "--batch-size", "20",
        "--data-dir", str(data), "--device", "cpu", "--out", str(first))
    assert json.loads((first / "config.json").read_text())["student"] == "tiny_zoo:build"
    sld("train", "--config", str(first / "config.json"), "--out", str(replay))
    assert_same_state(final_state(first), final_state(replay))  # same seed, same spec: the same model


def test_a_plug_in_student_run_resumes_in_a_new_process(tmp_path: Path) -> None:
    """``--student-model SPEC`` (the issue's spelling of ``--student``): a run stopped after epoch 1 is
    resumed by a new process from ``--out`` alone, and ends bit-identical to an uninterrupted run."""
    sld, data = _plugin_cli(tmp_path)
    common = ["train", "--student-model", "tiny_zoo:build", "--method", "ce", "--epochs", "2",
              "--batch-size", "20", "--data-dir", str(data), "--device", "cpu"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    sld(*common, "--out", str(whole))
    sld(*common, "--out", str(parts), "--stop-after", "1")
    assert [r["epoch"] for r in read_metrics(parts)] == [1]
    sld("train", "--out", str(parts), "--resume")  # the spec comes from the run's own last.pt
    assert json.loads((parts / "config.json").read_text())["student"] == "tiny_zoo:build"
    assert [r["epoch"] for r in read_metrics(parts)] == [1, 2]
    assert_same_state(final_state(whole), final_state(parts))
    assert without_timing(read_metrics(parts)) == without_timing(read_metrics(whole))


def test_student_model_is_the_student_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--student-model`` and ``--student`` build the same config, and ``--help`` shows both."""
    as_student = invoke("train", "--student", "resnet8", "--method", "ce", "--print-config")
    as_model = invoke("train", "--student-model", "resnet8", "--method", "ce", "--print-config")
    assert as_student.exit_code == 0 and as_model.exit_code == 0, as_student.output + as_model.output
    assert json.loads(as_model.stdout) == json.loads(as_student.stdout)
    assert json.loads(as_model.stdout)["student"] == "resnet8"
    monkeypatch.setenv("COLUMNS", "250")  # the help table unwrapped
    shown = invoke("train", "--help").output
    assert "--student,--student-model" in shown and "package.module:callable" in shown
