"""One line where a traceback or a misleading hint was: bad devices (one red line, like every other bad
option; ``train(config, "cpu")`` takes a string), a non-finite loss that says what to blame (the student,
the teacher, or the method's settings), and the word that ``--amp fp16`` on the CPU is slow."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import harness.train.loop as loop  # noqa: E402
from harness.config import CEConfig, ConfigError, DataConfig, OptimConfig, TrainConfig  # noqa: E402
from harness.train.device import float16_slowdown  # noqa: E402
from harness.train.loop import train  # noqa: E402

from .train_helpers import (  # noqa: E402
    invoke,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    write_tiny_cifar,
    write_untrained_teacher,
)


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32)


# ------------------------------------------------------------------------------------------- devices

# --device value -> (what this machine pretends to have, the message after "error: --device VALUE")
DEVICES = {
    "cuda-on-a-cpu-build": ("cuda", "cpu-build", "cuda: this torch is a CPU-only build"),
    "cuda-without-a-gpu": ("cuda", "no-gpu", "cuda: no CUDA device is visible"),
    "cuda:3-on-a-1-gpu-box": ("cuda:3", "one-gpu", "cuda:3: this machine has 1 CUDA device(s), cuda:0 to"),
    "banana": ("banana", "cpu-build", "'banana': not a device torch knows; use cpu, cuda, cuda:N"),
    "cuda:x": ("cuda:x", "cpu-build", "'cuda:x': not a device torch knows"),
    "mps": ("mps", "cpu-build", "mps: no mps device is available here; use --device cpu"),
    "meta": ("meta", "cpu-build", "meta: sld does not train on 'meta' devices"),
}


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """``machine(kind)``: torch sees a CPU-only build, a CUDA build without a GPU, or one GPU."""

    def pretend(kind: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: kind == "one-gpu")
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if kind == "one-gpu" else 0)
        monkeypatch.setattr(torch.version, "cuda", None if kind == "cpu-build" else "12.4")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    return pretend


@pytest.mark.parametrize("command", ["train", "reproduce"])
@pytest.mark.parametrize("case", list(DEVICES))
def test_a_bad_device_is_one_red_line(case: str, command: str, machine, tmp_path: Path) -> None:
    device, kind, expected = DEVICES[case]
    machine(kind)
    if command == "train":
        args = ["train", "--student", "resnet8", "--method", "ce", "--out", tmp_path / "out"]
    else:
        args = ["reproduce", "--pairs", "resnet56-resnet20", "--out", tmp_path / "grid"]
    result = invoke(*args, "--device", device, "--data-dir", tmp_path / "no-data")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert squash(lines[0]).startswith(f"error: --device {expected}"), result.output


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    config = TrainConfig(
        student="resnet8",
        method="ce",
        loss=CEConfig(),
        optim=OptimConfig(epochs=1, batch_size=32),
        data=DataConfig(data_dir=str(data), download=False, views=1),
        out_dir=str(out),
    )
    return dataclasses.replace(config, **changes)


def test_train_takes_a_device_string(data: Path, tmp_path: Path) -> None:
    result = train(tiny_config(data, tmp_path / "run"), "cpu")
    assert result.epochs == 1
    with pytest.raises(ConfigError, match=r"^device 'banana': not a device torch knows"):
        train(tiny_config(data, tmp_path / "other"), "banana")
    assert not (tmp_path / "other").exists()


# -------------------------------------------------------------------------------- a non-finite loss


def kd_args(data: Path, out: Path, teacher: Path, *extra: str) -> list[str]:
    return [
        "train", "--student", "resnet8", "--teacher-model", "resnet8", "--teacher", str(teacher),
        "--data-dir", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32", "--views", "1",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def test_an_absurd_temperature_is_blamed_not_the_learning_rate(data: Path, tmp_path: Path) -> None:
    teacher = write_untrained_teacher(tmp_path / "t.pth")
    result = invoke(*kd_args(data, tmp_path / "run", teacher, "--method", "sld", "--temperatures", "1e-40"))
    assert result.exit_code == 1
    message = squash(result.output)
    assert "non-finite loss (NaN/inf) at epoch 1, step 1/2" in message
    assert "The student's and the teacher's logits were finite, so the loss itself overflowed" in message
    assert "check them (loss.temperatures=(1e-40,))" in message
    assert "Lower the learning rate" not in message


def test_a_teacher_whose_logits_overflow_is_blamed(data: Path, tmp_path: Path) -> None:
    teacher = write_untrained_teacher(tmp_path / "t.pth")
    state = torch.load(teacher, weights_only=True)
    state["model"]["fc.weight"].fill_(3e38)  # finite weights, logits past float32's range
    torch.save(state, teacher)
    result = invoke(*kd_args(data, tmp_path / "run", teacher, "--method", "kd"))
    assert result.exit_code == 1
    message = squash(result.output)
    assert "The teacher's logits were not finite (its weights are checked when it loads)" in message
    assert "Lower the learning rate" not in message


def test_a_diverging_student_is_told_to_lower_the_learning_rate(data: Path, tmp_path: Path) -> None:
    result = invoke(
        "train", "--student", "resnet8", "--method", "ce", "--data-dir", data, "--out", tmp_path / "run",
        "--epochs", "1", "--batch-size", "32", "--views", "1", "--device", "cpu", "--lr", "1e30",
    )  # fmt: skip
    assert result.exit_code == 1
    message = squash(result.output)
    assert "The student's logits were not finite: it diverged. Lower the learning rate" in message


# ----------------------------------------------------------------------------------------- fp16 on CPU


@pytest.mark.parametrize(("amp", "slowdown", "warned"), [("fp16", 14.0, True), ("fp16", 0.9, False),
                                                        ("off", 14.0, False)])
def test_fp16_on_a_cpu_that_emulates_it_comes_with_a_warning(
    amp: str, slowdown: float, warned: bool, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether this CPU emulates float16 is measured at the start (float16_slowdown); pretend both kinds.
    monkeypatch.setattr(loop, "float16_slowdown", lambda: slowdown)
    result = invoke(
        "train", "--student", "resnet8", "--method", "ce", "--data-dir", data, "--out", tmp_path / "run",
        "--epochs", "1", "--batch-size", "32", "--views", "1", "--device", "cpu", "--amp", amp,
        "--limit-train", "32", "--limit-test", "16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = "warning: --amp fp16 on this CPU: a float16 convolution ran 14x slower than float32"
    assert (warning in squash(result.output)) == warned


def test_the_float16_probe_measures_without_touching_the_seeded_streams() -> None:
    before = torch.get_rng_state()
    slowdown = float16_slowdown()
    assert math.isfinite(slowdown) and slowdown > 0
    assert torch.equal(torch.get_rng_state(), before)
