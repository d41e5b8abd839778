"""Interrupted runs, full disks and bad inputs, through the real command line.

Interruptions run ``sld train`` as a subprocess (tests/sld_with_fault.py sends the signal at an exact
step, epoch end or halfway through a checkpoint write), then ``sld train --out DIR --resume``; the
resumed run must end with the same weights and metrics as an uninterrupted one, bit for bit (every
process uses one torch thread). The run: resnet8 with cross-entropy on both views, 3 epochs of 75
synthetic images in batches of 32 (3 steps per epoch).
"""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import harness.train.checkpoint as checkpoint_module  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.train.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint  # noqa: E402

from .train_helpers import (  # noqa: E402
    assert_same_state,
    final_state,
    invoke,
    one_thread,  # noqa: F401 (autouse: the in-process runs (CliRunner) on one torch thread too)
    read_metrics,
    run_process,
    run_sld,
    without_timing,
    write_tiny_cifar,
)

FAULT_SCRIPT = Path(__file__).with_name("sld_with_fault.py")
EPOCHS = 3


def train_args(data: Path, out: Path) -> list[str]:
    return [
        "train",
        "--student",
        "resnet8",
        "--method",
        "ce",
        "--views",
        "2",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "32",
        "--lr",
        "0.01",
        "--lr-milestones",
        "2",
        "--device",
        "cpu",
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=75, n_test=40)


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_sld(*train_args(data, out))
    assert result.returncode == 0, result.stdout
    return out


def run_with_fault(data: Path, out: Path, where: str, signal_name: str, nth: int):
    command = [sys.executable, str(FAULT_SCRIPT), where, signal_name, str(nth), *train_args(data, out)]
    return run_process(command, timeout=60)


def partial_writes(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------- interruptions

# (fault point, signal, nth, exit code, epoch last.pt holds afterwards, phrase in the message)
INTERRUPTIONS = {
    "sigint-during-epoch-2": ("step", "SIGINT", 5, 130, 1, "interrupted by SIGINT during epoch 2/3"),
    "sigterm-between-epochs": ("epoch-end", "SIGTERM", 1, 143, 1, "interrupted by SIGTERM after epoch 1/3"),
    "sigint-while-writing-checkpoint": (
        "checkpoint-write",
        "SIGINT",
        2,
        130,
        2,
        "interrupted by SIGINT after epoch 2/3",
    ),
    "kill-9-during-epoch-2": ("step", "SIGKILL", 5, -9, 1, None),
    "kill-9-while-writing-checkpoint": ("checkpoint-write", "SIGKILL", 2, -9, 1, None),
}


@pytest.mark.parametrize("case", list(INTERRUPTIONS))
def test_interrupted_run_resumes_to_the_uninterrupted_weights(
    case: str, data: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    where, signal_name, nth, code, kept_epoch, phrase = INTERRUPTIONS[case]
    out = tmp_path / "run"
    stopped = run_with_fault(data, out, where, signal_name, nth)
    assert stopped.returncode == code, stopped.stdout
    if phrase is not None:  # a graceful stop: one clear line, no traceback, nothing half-written
        assert phrase in stopped.stdout and "Traceback" not in stopped.stdout
        assert f"{out / 'last.pt'} holds epoch {kept_epoch}" in stopped.stdout
        assert f"continue with: sld train --out {out} --resume" in stopped.stdout
        assert partial_writes(out) == []
    if case == "kill-9-while-writing-checkpoint":
        assert len(partial_writes(out)) == 1  # the torn temp file; last.pt itself is whole
        assert len(read_metrics(out)) == 1  # metrics.jsonl is written after the checkpoints it describes
    assert load_checkpoint(out / "last.pt")["epoch"] == kept_epoch

    resumed = run_sld("train", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stdout
    assert f"resuming after epoch {kept_epoch}" in " ".join(resumed.stdout.split())
    assert_same_state(final_state(out), final_state(uninterrupted))
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(uninterrupted))
    assert partial_writes(out) == []  # a torn write is cleared when the run resumes


def test_interrupt_before_the_first_checkpoint_says_to_start_again(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    stopped = run_with_fault(data, out, "step", "SIGINT", 2)
    assert stopped.returncode == 130, stopped.stdout
    assert "interrupted by SIGINT during epoch 1/3" in stopped.stdout
    assert "no epoch had finished" in stopped.stdout and "start it again without --resume" in stopped.stdout
    assert not (out / "last.pt").exists()
    refused = invoke("train", "--out", out, "--resume")
    assert refused.exit_code == 1 and "last.pt does not exist" in refused.output


# ------------------------------------------------------------------------------------------------ disk full


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    writes = 0

    def full_after_half(obj, f, *args, **kwargs) -> None:
        nonlocal writes
        writes += 1
        if writes < 3:  # epoch 1 writes last.pt (and best.pt); then the disk fills up
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_after_half)
    out = tmp_path / "run"
    result = invoke(*train_args(data, out))
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"error: could not write checkpoint {out / 'last.pt'}: no space left on device" in message
    assert "the previous file is untouched and the partial copy was removed" in message
    assert "Traceback" not in result.output
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # intact and loadable
    assert partial_writes(out) == []

    with pytest.raises(CheckpointWriteError) as raised:  # the library error keeps errno
        save_checkpoint(out / "last.pt", {"model": {}})
    assert raised.value.errno == errno.ENOSPC
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


# ------------------------------------------------------------------------------------------- wrong names

WRONG_NAMES = {
    "train --pair": (["train", "--pair", "resnet32x4-resnet9"], "unknown pair", "resnet32x4-resnet8x4"),
    "train --student": (["train", "--student", "resnet9", "--method", "ce"], "unknown model", "wrn_40_2"),
    "train --teacher-model": (
        ["train", "--student", "resnet8", "--teacher-model", "resnet9"],
        "unknown model",
        "resnet32x4",
    ),
    "train --method": (
        ["train", "--pair", "resnet32x4-resnet8x4", "--method", "fitnet"],
        "unknown method",
        "dkd",
    ),
    "train-teacher --model": (["train-teacher", "--model", "resnet9"], "unknown model", "wrn_40_2"),
    "eval --model": (["eval", "CHECKPOINT", "--model", "resnet9"], "unknown model", "wrn_40_2"),
    "demo --pair": (
        ["demo", "--cifar", "--pair", "resnet32x4-resnet9"],
        "unknown pair",
        "resnet32x4-resnet8x4",
    ),
    "reproduce --pairs": (
        ["reproduce", "--pairs", "resnet32x4-resnet9"],
        "unknown pair",
        "resnet32x4-resnet8x4",
    ),
    "reproduce --methods": (
        ["reproduce", "--pairs", "resnet32x4-resnet8x4", "--methods", "fitnet"],
        "unknown method",
        "sld",
    ),
}


@pytest.mark.parametrize("case", list(WRONG_NAMES))
def test_wrong_names_list_the_valid_ones(case: str, uninterrupted: Path, tmp_path: Path) -> None:
    args, problem, valid = WRONG_NAMES[case]
    args = [str(uninterrupted / "last.pt") if a == "CHECKPOINT" else a for a in args]
    result = invoke(*args, *(["--out", tmp_path / "out"] if args[0] == "reproduce" else []))
    assert result.exit_code == 1, result.output
    assert problem in result.output and valid in result.output, result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------ unusable checkpoints


@pytest.fixture
def bad_checkpoints(uninterrupted: Path, tmp_path: Path) -> dict[str, Path]:
    """Files that must each be refused with one clear line."""
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((uninterrupted / "last.pt").read_bytes()[:5000])
    other_model = tmp_path / "resnet14.pth"
    torch.save({"model": build_model("resnet14").state_dict()}, other_model)
    (tmp_path / "a_directory.pt").mkdir()
    return {
        "truncated": truncated,
        "other-model": other_model,
        "directory": tmp_path / "a_directory.pt",
        "missing": tmp_path / "missing.pt",
    }


# One reader (harness.models.read_checkpoint) words these for eval, --teacher and --resume alike.
EXPECTED = {
    "truncated": r"truncated.pt: not a readable torch checkpoint \(corrupt, truncated or another kind "
    r"of file; \w+Error\)",
    "other-model": r"resnet14.pth does not fit ResNet",
    "directory": r"a_directory.pt is a directory, not a checkpoint file",
    "missing": r"checkpoint not found: .*missing.pt",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_eval_refuses_unusable_checkpoints(kind: str, bad_checkpoints: dict, data: Path) -> None:
    result = invoke(
        "eval", bad_checkpoints[kind], "--model", "resnet8", "--data-dir", data, "--device", "cpu"
    )
    assert result.exit_code == 1, result.output
    assert re.search(EXPECTED[kind], " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["truncated", "other-model", "directory"])
def test_teacher_flag_refuses_unusable_checkpoints(
    kind: str, bad_checkpoints: dict, data: Path, tmp_path: Path
) -> None:
    args = ["train", "--student", "resnet8", "--teacher-model", "resnet8", "--method", "kd"]
    result = invoke(
        *args,
        "--teacher",
        bad_checkpoints[kind],
        "--data-dir",
        data,
        "--out",
        tmp_path / "kd",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert result.exit_code == 1, result.output
    assert re.search(EXPECTED[kind], " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["truncated", "other-model-state", "not-ours", "missing"])
def test_resume_refuses_unusable_checkpoints(kind: str, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    (out / "summary.json").unlink()
    stored = torch.load(out / "last.pt", weights_only=True)
    stored["epoch"] = 1  # a run to continue
    last = out / "last.pt"
    if kind == "truncated":
        last.write_bytes(last.read_bytes()[:5000])
        expected = r"last.pt: not a readable torch checkpoint"
    elif kind == "other-model-state":
        stored["model"] = build_model("resnet14").state_dict()
        torch.save(stored, last)
        expected = r"last.pt: .*does not fit ResNet:.*unexpected"
    elif kind == "not-ours":
        torch.save({"model": stored["model"]}, last)
        expected = r"last.pt: not an `sld train` checkpoint"
    else:
        last.unlink()
        expected = r"cannot resume: .*last.pt does not exist"
    result = invoke("train", "--out", out, "--resume")
    assert result.exit_code == 1, result.output
    assert re.search(expected, " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output
    json.loads((out / "config.json").read_text())  # the run directory is left as it was
