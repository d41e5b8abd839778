"""Experiment tracking and provenance: the csv, TensorBoard and W&B trackers (read back from their own
files), ``run.json``, and the test loss next to the accuracies; tiny CPU runs on a synthetic CIFAR."""

from __future__ import annotations

import csv
import glob
import json
import math
import shutil
import struct
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness.config import (  # noqa: E402
    CEConfig,
    ConfigError,
    DataConfig,
    OptimConfig,
    SLDConfig,
    TrainConfig,
    with_overrides,
)
from harness.models import build_model  # noqa: E402
from harness.runs import STEP_COLUMNS, RunDir  # noqa: E402
from harness.train.data import load_data  # noqa: E402
from harness.train.evaluate import evaluate  # noqa: E402
from harness.train.loop import train  # noqa: E402
from harness.train.provenance import git_commit  # noqa: E402
from harness.train.trackers import Tracker, Trackers, check_installed, make_trackers  # noqa: E402

from .train_helpers import (  # noqa: E402
    invoke,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    read_metrics,
    write_tiny_cifar,
    write_untrained_teacher,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32, seed=2)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", seed=7)


def tiny(out: Path, data_dir: Path, teacher_ckpt: Path, *, trackers: tuple[str, ...] = (), epochs: int = 2):
    return TrainConfig(
        student="resnet8",
        method="sld",
        loss=SLDConfig(gamma=1),
        teacher="resnet8",
        teacher_checkpoint=str(teacher_ckpt),
        optim=OptimConfig(epochs=epochs, batch_size=16, lr=0.05, lr_milestones=(1,)),
        data=DataConfig(data_dir=str(data_dir), download=False, views=1, eval_batch_size=16),
        out_dir=str(out),
        log_every=1,
        trackers=trackers,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of every offline W&B run file under ``run_dir/wandb``, decoded with W&B's
    own message classes. The file is W&B's 7-byte header then a LevelDB log: 32 KiB blocks of chunks,
    each a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) and its payload."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for name in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data = Path(name).read_bytes()
        assert data[:4] == b":W&B"
        position, pending, block = 7, b"", 32768
        while position + 7 <= len(data):
            if block - position % block < 7:  # a block's tail too short for a header is padding
                position += block - position % block
                continue
            _, length, kind = struct.unpack("<IHB", data[position:position + 7])
            if kind == 0:  # zero padding up to the end of the block
                position += block - position % block
                continue
            pending += data[position + 7:position + 7 + length]
            position += 7 + length
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append(record)
                pending = b""
    return records


# --------------------------------------------------------------------------------------- the trackers


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch):
    """W&B in offline mode (files under the run directory, no network), its per-process state reset
    after the test."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield wandb
    wandb.teardown()


def test_every_tracker_gets_every_record_and_the_step_scalars(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path, wandb_offline
) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    config = tiny(out, data_dir, teacher_ckpt, trackers=("csv", "tensorboard", "wandb"))
    train(config, "cpu")  # the device as a string: the Python API takes it too
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2]

    # csv: metrics.csv is metrics.jsonl, value for value (csv writes repr: exact floats)
    rows = read_csv(out / "metrics.csv")
    assert [{k: float(v) for k, v in row.items()} for row in rows] == [
        {k: float(v) for k, v in r.items()} for r in records
    ]
    steps = read_csv(out / "steps.csv")
    per_epoch = 64 // 16
    assert list(steps[0]) == list(STEP_COLUMNS)
    assert [int(s["step"]) for s in steps] == list(range(1, 2 * per_epoch + 1))  # log_every=1
    assert [int(s["epoch"]) for s in steps] == [1] * per_epoch + [2] * per_epoch
    for record in records:
        mine = [s for s in steps if int(s["epoch"]) == record["epoch"]]
        assert {float(s["lr"]) for s in mine} == {record["lr"]}
        # equal batches: the epoch's mean loss per image is the mean of its steps' losses
        assert np.mean([float(s["loss"]) for s in mine]) == pytest.approx(record["loss"], rel=1e-5)

    # TensorBoard: every number of every record at step = epoch; the steps at the global step
    epochs = tensorboard_scalars(out / "tensorboard" / "epochs")
    numbers = {k for k, v in records[0].items() if k != "epoch" and isinstance(v, float | int)}
    assert set(epochs) == {f"epoch/{k}" for k in numbers}
    for key in numbers:
        assert [s for s, _ in epochs[f"epoch/{key}"]] == [1, 2]
        assert [v for _, v in epochs[f"epoch/{key}"]] == pytest.approx([r[key] for r in records], rel=1e-6)
    step_events = tensorboard_scalars(out / "tensorboard" / "steps")
    assert [s for s, _ in step_events["step/loss"]] == [int(s["step"]) for s in steps]
    assert [v for _, v in step_events["step/loss"]] == pytest.approx([float(s["loss"]) for s in steps])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "epochs"))
    events.Reload()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert "config/text_summary" in events.Tags()["tensors"]

    # W&B (offline): the run's name, group, tags and config, and the logged history
    records_wb = wandb_records(out)
    run = next(r.run for r in records_wb if r.WhichOneof("record_type") == "run")
    assert (run.display_name, run.run_group) == ("resnet8/sld/seed0", "resnet8/sld")
    assert {"resnet8", "sld", "seed0", "views1"} <= set(run.tags)
    logged_config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert logged_config["optim"]["batch_size"] == 16 and logged_config["loss"]["gamma"] == 1
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records_wb
        if r.WhichOneof("record_type") == "history"
    ]
    by_epoch = [h for h in history if "epoch/test_top1" in h]
    assert [h["epoch"] for h in by_epoch] == [1, 2]
    assert [h["epoch/test_loss"] for h in by_epoch] == pytest.approx([r["test_loss"] for r in records])
    assert [h["global_step"] for h in history if "step/loss" in h] == [int(s["step"]) for s in steps]


def test_a_resumed_run_continues_its_trackers_without_doubling_anything(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    config = tiny(out, data_dir, teacher_ckpt, trackers=("csv", "tensorboard"), epochs=3)
    train(config, "cpu", stop_after=1)
    # What a session killed during epoch 2 leaves: its steps' rows and a torn last line.
    with (out / "steps.csv").open("a") as f:
        f.write("5,2,9.0,0.005\n6,2,9.")
    train(config, "cpu", resume=True)
    records = read_metrics(out)
    assert [int(r["epoch"]) for r in read_csv(out / "metrics.csv")] == [1, 2, 3]
    steps = read_csv(out / "steps.csv")
    assert [int(s["step"]) for s in steps] == list(range(1, 3 * 4 + 1))
    assert all(float(s["loss"]) != 9.0 for s in steps)
    epochs = tensorboard_scalars(out / "tensorboard" / "epochs")
    assert [s for s, _ in epochs["epoch/test_top1"]] == [1, 2, 3]
    assert [v for _, v in epochs["epoch/test_loss"]] == pytest.approx([r["test_loss"] for r in records])
    step_events = tensorboard_scalars(out / "tensorboard" / "steps")["step/loss"]
    assert [s for s, _ in step_events] == list(range(1, 13))

    info = json.loads((out / "run.json").read_text())
    assert [(s["status"], s["first_epoch"], s["last_epoch"]) for s in info["sessions"]] == [
        ("stopped", 1, 1),
        ("finished", 2, 3),
    ]
    assert info["started"] == info["sessions"][0]["started"]
    assert info["ended"] == info["sessions"][1]["ended"]


def test_a_run_that_fails_records_its_session_as_failed(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    class Boom(Exception):
        pass

    def fail(record: dict) -> None:
        raise Boom

    out = tmp_path / "run"
    with pytest.raises(Boom):
        train(tiny(out, data_dir, teacher_ckpt, trackers=("csv",)), "cpu", on_epoch_end=fail)
    info = json.loads((out / "run.json").read_text())
    (session,) = info["sessions"]
    assert (session["status"], session["last_epoch"], info["ended"]) == ("failed", 1, None)
    assert session["ended"] is not None
    assert len(read_csv(out / "metrics.csv")) == 1  # what was committed before the failure


def test_a_missing_tracker_package_names_the_extra(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("tensorboard", "torch.utils.tensorboard", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    for name in ("tensorboard", "wandb"):
        expected = f"--log {name} needs the {name} package: pip install 'swapped-logit-distillation[{name}]'"
        with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            make_trackers(["csv", name])
        with pytest.raises(ConfigError, match="needs the"):
            check_installed([name])
    check_installed(["csv"])
    result = invoke(
        "train-teacher", "--model", "resnet8", "--log", "csv,wandb", "--out", tmp_path / "t",
        "--data-dir", data_dir, "--epochs", "1", "--device", "cpu",
    )
    assert result.exit_code == 1
    assert "pip install 'swapped-logit-distillation[wandb]'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "t" / "last.pt").exists()


def test_wandb_without_a_login_says_how_to_log_or_go_offline(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # W&B keeps its settings per process: those of an earlier offline run must go
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings: no key anywhere
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(ConfigError, match="wandb login.*WANDB_MODE=offline"):
        train(tiny(tmp_path / "run", data_dir, teacher_ckpt, trackers=("wandb",)), "cpu")
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before the first epoch
    wandb.teardown()


def test_a_tracker_that_fails_mid_run_is_dropped_with_a_warning() -> None:
    from rich.console import Console

    calls: list[str] = []

    class Flaky(Tracker):
        name = "flaky"

        def start(self, meta) -> None:
            calls.append("start")

        def log_epoch(self, record) -> None:
            raise OSError("disk full")

        def log_step(self, step, epoch, scalars) -> None:
            calls.append(f"step {step}")

        def finish(self, ok) -> None:
            calls.append(f"finish {ok}")

    console = Console(record=True, width=200)
    trackers = Trackers([Flaky()], console=console)
    trackers.start(None)
    trackers.log_step(1, 1, {"loss": 1.0, "lr": 0.1})
    trackers.log_epoch({"epoch": 1})  # fails: dropped
    trackers.log_step(2, 1, {"loss": 1.0, "lr": 0.1})
    trackers.finish(ok=True)
    assert calls == ["start", "step 1"]
    assert "tracker flaky failed in log_epoch (OSError: disk full)" in console.export_text()


def test_unknown_trackers_are_refused_in_the_config_and_on_the_command_line() -> None:
    with pytest.raises(ConfigError, match="trackers must name each of"):
        TrainConfig(student="resnet8", method="ce", loss=CEConfig(), trackers=("mlflow",))
    result = invoke("train-teacher", "--model", "resnet8", "--log", "csv,mlflow", "--print-config")
    assert result.exit_code == 1 and "--log takes comma-separated csv, tensorboard, wandb" in result.output
    result = invoke("train-teacher", "--model", "resnet8", "--log", "tensorboard,csv", "--print-config")
    assert result.exit_code == 0 and json.loads(result.stdout)["trackers"] == ["tensorboard", "csv"]


# ------------------------------------------------------------------------------------------ provenance


def test_run_json_records_what_reproducing_the_run_needs(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    out = tmp_path / "run"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    train(tiny(out, data_dir, teacher_ckpt, epochs=1), torch.device("cpu"))
    after = datetime.now(timezone.utc)
    info = RunDir(out).read_run_info()
    (session,) = info["sessions"]
    started, ended = (datetime.fromisoformat(session[k]) for k in ("started", "ended"))
    assert started.utcoffset().total_seconds() == 0 and before <= started <= ended <= after
    assert (info["started"], info["ended"]) == (session["started"], session["ended"])
    assert (session["status"], session["first_epoch"], session["last_epoch"]) == ("finished", 1, 1)
    assert session["packages"]["torch"] == torch.__version__
    assert session["packages"]["numpy"] == np.__version__
    assert session["device"] == "cpu" and session["device_name"] and session["world_size"] == 1
    git = shutil.which("git")
    head = (
        subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        if git
        else None
    )
    if head is not None and head.returncode == 0:
        assert session["git_commit"] == head.stdout.strip()
        assert isinstance(session["git_dirty"], bool)
    else:
        assert (session["git_commit"], session["git_dirty"]) == ("unknown", None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_test_loss"] == read_metrics(out)[-1]["test_loss"]


def test_git_commit_is_unknown_outside_the_checkout_that_holds_the_code(tmp_path: Path) -> None:
    assert git_commit.__wrapped__(tmp_path) == ("unknown", None)  # no repository at all
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    inner = tmp_path / "venv" / "site-packages"
    inner.mkdir(parents=True)
    # Code installed inside another repository (a venv in a checkout) must not take its commit.
    assert git_commit.__wrapped__(inner) == ("unknown", None)


# ------------------------------------------------------------------------------------------- test loss


def test_the_test_loss_is_the_mean_cross_entropy_of_the_test_set(data_dir: Path) -> None:
    config = DataConfig(data_dir=str(data_dir), download=False, eval_batch_size=8)
    data = load_data(config, torch.device("cpu"), batch_size=16, seed=0)
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=100).eval()
    top1, top5, loss = evaluate(model, data, "test")
    # float64 reference, written out: log-sum-exp minus the label's logit, averaged over the images
    double = build_model("resnet8", num_classes=100).double().eval()
    double.load_state_dict(model.state_dict())
    total = hits1 = hits5 = 0.0
    count = 0
    with torch.no_grad():
        for x, y in data.eval_batches("test", rank=0, world_size=1):
            z = double(x.double())
            top = z.max(dim=1, keepdim=True).values
            log_sum = top[:, 0] + torch.log(torch.exp(z - top).sum(dim=1))
            total += float((log_sum - z[torch.arange(len(y)), y]).sum())
            order = torch.argsort(z, dim=1, descending=True)
            hits1 += float((order[:, 0] == y).sum())
            hits5 += float((order[:, :5] == y[:, None]).any(dim=1).sum())
            count += len(y)
    assert count == data.eval_size("test") == 32
    assert loss == pytest.approx(total / count, rel=1e-5)
    assert (top1, top5) == (hits1 / count, hits5 / count)
    assert math.isfinite(loss) and loss > 0


def test_the_epoch_record_and_the_console_show_the_test_loss(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    from rich.console import Console

    console = Console(record=True, width=300)
    config = with_overrides(tiny(tmp_path / "run", data_dir, teacher_ckpt, epochs=1), {"log_every": 50})
    result = train(config, "cpu", console=console)
    (record,) = read_metrics(tmp_path / "run")
    keys = list(record)
    assert keys.index("test_loss") == keys.index("test_top5") + 1  # next to the accuracies
    assert result.last_test_loss == record["test_loss"]
    text = console.export_text()
    assert f"loss {record['test_loss']:.4f}, best" in text
