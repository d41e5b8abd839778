"""Runs that cannot lie: one process per run directory, every crash point repaired on resume, a record
history that survives a torn or lost ``metrics.jsonl``, a fingerprinted teacher, the resume remedies
that work, and full disks and unreadable checkpoints said plainly.

Real processes where processes matter: ``sld train`` runs as a subprocess that tests/sld_with_fault.py
stops (SIGSTOP) or kills (SIGKILL) at an exact step or write boundary; ``sld train --out DIR --resume``
(in this process) must then end with the weights, records, ``best.pt`` and summary of an uninterrupted
run, bit for bit (every process computes on one torch thread). The run: resnet8 with cross-entropy on
one view, 3 epochs of 75 synthetic images in batches of 32, lr 0.01; epochs 1 and 2 each set a new best
(the ``reference`` fixture checks that), so epoch 2 writes ``best.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import harness.runs as runs_module  # noqa: E402
from harness.commands._common import launch_command  # noqa: E402
from harness.runs import RunDir, RunState  # noqa: E402
from harness.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

from .train_helpers import (  # noqa: E402
    invoke,
    kill_tree,
    one_thread,  # noqa: F401 (autouse: the in-process runs compute like the one-thread subprocesses)
    read_metrics,
    run_process,
    run_sld,
    subprocess_env,
    without_timing,
    write_tiny_cifar,
    write_untrained_teacher,
)

FAULT_SCRIPT = Path(__file__).with_name("sld_with_fault.py")
EPOCHS = 3


def train_args(data: Path, out: Path, *, lr: str = "0.01") -> list[str]:
    return [
        "train", "--student", "resnet8", "--method", "ce", "--views", "1", "--data-dir", str(data),
        "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", "32", "--lr", lr,
        "--lr-milestones", "2", "--device", "cpu",
    ]  # fmt: skip


def squash(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=75, n_test=40)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    result = invoke(*train_args(data, out))
    assert result.exit_code == 0, result.output
    best = [r["best_test_top1"] for r in read_metrics(out)]
    assert best[1] > best[0], best  # epoch 2 sets a new best: the stale-best.pt case exists
    return out


@pytest.fixture(scope="module")
def stopped_after_2(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run stopped cleanly after epoch 2 (``--stop-after 2``): a run to resume."""
    out = tmp_path_factory.mktemp("partial") / "run"
    result = invoke(*train_args(data, out), "--stop-after", "2")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def partial(stopped_after_2: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped_after_2, out)
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    """Weights, records (but their timing), best.pt and summary equal the uninterrupted run's."""
    for name in ("last.pt", "best.pt"):
        got, want = load_checkpoint(out / name), load_checkpoint(reference / name)
        assert got["epoch"] == want["epoch"], name
        assert got.keys() == want.keys(), name
        for key, value in want["model"].items():
            assert torch.equal(got["model"][key], value), f"{name}: {key}"
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(reference))
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert summary.pop("out_dir") == str(out) and expected.pop("out_dir") == str(reference)
    assert summary == expected
    assert load_checkpoint(out / "best.pt")["epoch"] == summary["best_epoch"]  # what `sld eval best.pt` sees
    assert sorted(p.name for p in out.glob(".*.tmp")) == []


def start_with_fault(data: Path, out: Path, where: str, signal_name: str, nth: int) -> subprocess.Popen:
    command = [sys.executable, str(FAULT_SCRIPT), where, signal_name, str(nth), *train_args(data, out)]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )


def wait_until_stopped(proc: subprocess.Popen, timeout: float = 90) -> None:
    """Until ``proc`` is stopped (state T in /proc/PID/stat), i.e. it has reached the fault point."""
    deadline = time.monotonic() + timeout
    stat_file = Path(f"/proc/{proc.pid}/stat")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before the fault point:\n{proc.communicate()[0]}")
        if stat_file.read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.05)
    kill_tree(proc.pid)
    pytest.fail(f"did not reach the fault point in {timeout} s:\n{proc.communicate()[0]}")


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------------------------------------- lock


@pytest.mark.slow
def test_a_second_process_is_refused_while_a_run_holds_its_directory(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    holder = start_with_fault(data, out, "step", "SIGSTOP", 1)  # alive, before its first checkpoint
    try:
        wait_until_stopped(holder)
        before = files(out)
        in_use = f"{out} is in use by another sld process (PID {holder.pid})"
        # Without the lock this one trains to the end too, and the records of two configs interleave.
        second = run_sld(*train_args(data, out, lr="0.05"))
        assert second.returncode == 1, second.stdout
        assert in_use in squash(second.stdout) and "Traceback" not in second.stdout
        resumed = invoke("train", "--out", out, "--resume")
        assert resumed.exit_code == 1 and in_use in squash(resumed.output), resumed.output
        assert files(out) == before  # neither wrote a byte
    finally:
        kill_tree(holder.pid)  # kill -9
        holder.communicate()
    again = invoke(*train_args(data, out))  # the kernel dropped the lock with the process: none is stale
    assert again.exit_code == 0, again.output
    assert_same_run(out, reference)


@pytest.mark.slow
def test_under_torchrun_rank_0_takes_the_lock_and_every_rank_stops(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunDir(out).lock():  # this test process holds it
        result = run_process(launch_command([*train_args(data, out)], 2), timeout=180)
    assert result.returncode != 0, result.stdout
    assert f"error: {out} is in use by another sld process (PID {os.getpid()})" in squash(result.stdout)
    assert "[rank 1] error" not in result.stdout  # rank 1 stops because rank 0 failed, and says nothing
    assert not (out / "config.json").exists()


def test_nproc_checks_the_lock_before_launching(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunDir(out).lock():
        result = invoke(*train_args(data, out), "--nproc", "2")  # would re-exec under torchrun if it got far
    assert result.exit_code == 1
    assert f"error: {out} is in use by another sld process (PID {os.getpid()})" in squash(result.output)


def test_reproduce_starts_nothing_while_a_grid_run_is_locked(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    busy = grid / "resnet56-resnet20" / "kd" / "seed1"
    with RunDir(busy).lock():
        result = invoke(
            "reproduce", "--pairs", "resnet56-resnet20", "--methods", "kd", "--seeds", "2", "--out", grid,
            "--runs-dir", tmp_path / "runs", "--epochs", "1", "--device", "cpu",
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"{busy} is in use by another sld process (PID {os.getpid()})" in squash(result.output)
    assert not (tmp_path / "runs").exists()  # not even a teacher was trained
    assert sorted(p.name for p in grid.rglob("*") if p.is_file()) == [".lock"]


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.check_unlocked()  # no directory yet: unlocked, and nothing is created
    assert not run.path.exists()
    with run.lock():
        assert run.lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(runs_module.RunLockedError, match=rf"PID {os.getpid()}\b"):
            run.lock()  # a second descriptor conflicts even within one process (flock semantics)
        with pytest.raises(runs_module.RunLockedError):
            run.check_unlocked()
    run.check_unlocked()
    with run.lock():
        pass


# ---------------------------------------------------------------------------- kill -9 at every write

# name -> (fault point, n-th write of that file, whether last.pt exists afterwards). metrics.jsonl is
# written once at the start (empty), then after every epoch; best.pt after epochs 1 and 2.
BOUNDARIES = {
    "during-config.json-at-start": ("during-write:config.json", 1, False),
    "during-last.pt-of-epoch-2": ("during-write:last.pt", 2, True),
    "between-last.pt-and-best.pt-of-epoch-2": ("after-write:last.pt", 2, True),
    "during-best.pt-of-epoch-2": ("during-write:best.pt", 2, True),
    "between-best.pt-and-metrics-of-epoch-2": ("after-write:best.pt", 2, True),
    "during-metrics-of-epoch-2": ("during-write:metrics.jsonl", 3, True),
    "after-metrics-of-epoch-2": ("after-write:metrics.jsonl", 3, True),
    "during-summary.json": ("during-write:summary.json", 1, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BOUNDARIES))
def test_kill_9_at_any_write_boundary_resumes_to_a_consistent_run(
    case: str, data: Path, reference: Path, tmp_path: Path
) -> None:
    where, nth, has_checkpoint = BOUNDARIES[case]
    out = tmp_path / "run"
    command = [sys.executable, str(FAULT_SCRIPT), where, "SIGKILL", str(nth), *train_args(data, out)]
    killed = run_process(command, timeout=120)
    assert killed.returncode == -9, killed.stdout
    assert (out / "last.pt").exists() == has_checkpoint
    # Whatever exists is whole: the checkpoints load and metrics.jsonl has no torn line.
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():
            load_checkpoint(out / name)
    committed = load_checkpoint(out / "last.pt")["epoch"] if has_checkpoint else 0
    if (out / "metrics.jsonl").exists():
        assert len(read_metrics(out)) <= committed  # never a record whose checkpoint is not on disk
    if case == "between-last.pt-and-best.pt-of-epoch-2":  # the stale best.pt the issue describes
        last = load_checkpoint(out / "last.pt")
        assert (last["epoch"], last["best_epoch"], load_checkpoint(out / "best.pt")["epoch"]) == (2, 2, 1)
    if case == "during-summary.json":  # every epoch recorded, no summary: not done, so it is resumed
        assert RunDir(out).state() is RunState.PARTIAL

    resumed = invoke("train", "--out", out, "--resume") if has_checkpoint else invoke(*train_args(data, out))
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(out, reference)
    if case == "between-last.pt-and-best.pt-of-epoch-2":
        assert f"{out / 'best.pt'} held epoch 1 but the best epoch is 2" in squash(resumed.output)
    if case == "during-summary.json":
        assert "epoch 1/3" not in resumed.output  # finished without training again


# ------------------------------------------------------------------------------------ the record history


def test_a_torn_last_metrics_line_is_repaired_with_a_message_naming_the_file(
    partial: Path, reference: Path
) -> None:
    with (partial / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "loss": 1.2')  # what a crash halfway through appending a line leaves
    assert RunDir(partial).state() is RunState.PARTIAL  # `sld reproduce` sees a run to resume, no error
    resumed = invoke("train", "--out", partial, "--resume")
    assert resumed.exit_code == 0, resumed.output
    expected = f"{partial / 'metrics.jsonl'}: its last line was cut short (a crash while it was written)"
    assert f"{expected}; rewrote epochs 1-2 from {partial / 'last.pt'}" in squash(resumed.output)
    assert_same_run(partial, reference)


@pytest.mark.parametrize("damage", ["emptied", "deleted", "extra-record"])
def test_lost_or_extra_records_are_rebuilt_from_last_pt(damage: str, partial: Path, reference: Path) -> None:
    metrics = partial / "metrics.jsonl"
    if damage == "emptied":
        metrics.write_text("")
    elif damage == "deleted":
        metrics.unlink()
    else:  # a record past the checkpoint, as an older version wrote them before the checkpoint
        metrics.write_text(metrics.read_text() + json.dumps({"epoch": 3, "test_top1": 0.5}) + "\n")
    resumed = invoke("train", "--out", partial, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"rewrote epochs 1-2 from {partial / 'last.pt'}" in squash(resumed.output)
    assert_same_run(partial, reference)


def strip_history(checkpoint: Path) -> None:
    """Make ``checkpoint`` look like one of an older version: no copy of the records."""
    payload = torch.load(checkpoint, weights_only=True)
    del payload["history"]
    save_checkpoint(checkpoint, {k: v for k, v in payload.items() if k not in ("format", "version")})


def test_an_older_checkpoint_without_records_still_repairs_a_torn_tail(
    partial: Path, reference: Path
) -> None:
    strip_history(partial / "last.pt")
    with (partial / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "lo')
    resumed = invoke("train", "--out", partial, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "metrics.jsonl: dropped its last line, cut short by a crash" in squash(resumed.output)
    assert_same_run(partial, reference)


def test_an_older_checkpoint_without_records_refuses_to_lose_some(partial: Path) -> None:
    strip_history(partial / "last.pt")
    (partial / "metrics.jsonl").write_text("")
    refused = invoke("train", "--out", partial, "--resume")
    assert refused.exit_code == 1
    message = squash(refused.output)
    assert f"{partial / 'metrics.jsonl'} holds 0 record(s) but {partial / 'last.pt'} is at epoch 2" in message
    assert "the records of epochs 1-2 are lost" in message and "Traceback" not in refused.output


def test_metrics_are_rewritten_whole_never_appended(partial: Path) -> None:
    run = RunDir(partial)
    records = read_metrics(partial)
    run.write_metrics(records[:1])
    assert read_metrics(partial) == records[:1] and sorted(partial.glob(".*.tmp")) == []


# --------------------------------------------------------------------------------- the teacher's file


@pytest.fixture
def kd_run(data: Path, tmp_path: Path) -> tuple[list[str], Path, Path]:
    teacher = write_untrained_teacher(tmp_path / "teacher.pth", seed=1)
    out = tmp_path / "kd"
    args = [
        "train", "--student", "resnet8", "--teacher-model", "resnet8", "--teacher", str(teacher),
        "--method", "kd", "--views", "1", "--data-dir", str(data), "--out", str(out),
        "--epochs", "2", "--batch-size", "32", "--device", "cpu",
    ]  # fmt: skip
    first = invoke(*args, "--stop-after", "1")
    assert first.exit_code == 0, first.output
    return args, teacher, out


def test_a_replaced_teacher_is_refused_on_resume(kd_run: tuple[list[str], Path, Path]) -> None:
    args, teacher, out = kd_run
    original = teacher.read_bytes()
    recorded = json.loads((out / "teacher.json").read_text())["teacher_sha256"]
    assert recorded == hashlib.sha256(original).hexdigest()
    assert load_checkpoint(out / "last.pt")["teacher_sha256"] == recorded

    write_untrained_teacher(teacher, seed=2)  # another teacher at the same path
    now = hashlib.sha256(teacher.read_bytes()).hexdigest()
    for command in (["train", "--out", str(out), "--resume"], [*args, "--resume"]):
        refused = invoke(*command)
        assert refused.exit_code == 1, refused.output
        message = squash(refused.output)
        assert f"the teacher checkpoint {teacher} is not the file this run started with" in message
        assert f"(SHA-256 {recorded[:16]}... then, {now[:16]}... now)" in message
        assert "Traceback" not in refused.output
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # nothing was touched

    teacher.write_bytes(original)  # the original back: the run continues
    resumed = invoke("train", "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


def test_a_teacher_with_nan_weights_is_refused_when_it_loads(data: Path, tmp_path: Path) -> None:
    teacher = write_untrained_teacher(tmp_path / "nan.pth")
    state = torch.load(teacher, weights_only=True)
    state["model"]["fc.weight"][3, 5] = float("nan")
    torch.save(state, teacher)
    result = invoke(
        "train", "--student", "resnet8", "--teacher-model", "resnet8", "--teacher", teacher, "--method",
        "kd", "--data-dir", data, "--out", tmp_path / "kd", "--epochs", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1
    message = squash(result.output)
    assert f"teacher checkpoint {teacher} holds NaN or infinite values in 1 tensor(s) (fc.weight)" in message
    assert "learning rate" not in message and "Traceback" not in result.output


# ------------------------------------------------------------------------------------ resume remedies


def test_the_remedy_the_conflict_message_names_works(partial: Path, reference: Path) -> None:
    refused = invoke("train", "--out", partial, "--resume", "--lr", "0.5")
    assert refused.exit_code == 1
    remedy = f"`sld train --out {partial} --resume` continues it as it was started"
    assert "optim.lr: 0.01 -> 0.5" in squash(refused.output) and remedy in squash(refused.output)
    resumed = invoke("train", "--out", partial, "--resume")  # exactly the remedy
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(partial, reference)


def test_a_hand_edited_config_json_does_not_block_resume(partial: Path, reference: Path) -> None:
    config = json.loads((partial / "config.json").read_text())
    config["optim"]["lr"] = 0.5  # edited by hand after the run started
    (partial / "config.json").write_text(json.dumps(config))
    resumed = invoke("train", "--out", partial, "--resume")  # continues with last.pt's config
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((partial / "config.json").read_text())["optim"]["lr"] == 0.01  # what really ran
    assert_same_run(partial, reference)


def test_the_original_command_plus_resume_continues_the_run(
    data: Path, partial: Path, reference: Path
) -> None:
    resumed = invoke(*train_args(data, partial), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(partial, reference)


@pytest.fixture
def stopped_in_place(data: Path, tmp_path: Path) -> Path:
    """The reference run stopped after epoch 2 in its own directory: its ``config.json`` names it (a
    copy of ``partial``'s would name the directory it was copied from)."""
    out = tmp_path / "run"
    result = invoke(*train_args(data, out), "--stop-after", "2")
    assert result.exit_code == 0, result.output
    return out


def test_the_run_s_config_json_plus_resume_continues_the_run(stopped_in_place: Path, reference: Path) -> None:
    config = stopped_in_place / "config.json"
    assert json.loads(config.read_text())["out_dir"] == str(stopped_in_place)
    resumed = invoke("train", "--config", config, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(stopped_in_place, reference)


def test_an_edited_config_json_given_to_resume_is_refused_with_a_remedy_that_works(
    stopped_in_place: Path, reference: Path
) -> None:
    config = json.loads((stopped_in_place / "config.json").read_text())
    config["optim"]["lr"] = 0.5
    (stopped_in_place / "config.json").write_text(json.dumps(config))
    refused = invoke("train", "--config", stopped_in_place / "config.json", "--resume")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    remedy = f"`sld train --out {stopped_in_place} --resume` continues it as it was started"
    assert "optim.lr: 0.01 -> 0.5" in squash(refused.output) and remedy in squash(refused.output)
    resumed = invoke("train", "--out", stopped_in_place, "--resume")  # exactly the remedy
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(stopped_in_place, reference)


def test_a_copied_runs_config_json_given_to_resume_names_both_directories(
    partial: Path, stopped_after_2: Path, reference: Path
) -> None:
    config = partial / "config.json"  # a copy: it still names the directory it was copied from
    assert json.loads(config.read_text())["out_dir"] == str(stopped_after_2)
    refused = invoke("train", "--config", config, "--resume")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    said = f"add --out {partial} to resume this one, or --out {stopped_after_2} for the original"
    assert said in squash(refused.output)
    resumed = invoke("train", "--config", config, "--out", partial, "--resume")  # the first remedy
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(partial, reference)
    assert [r["epoch"] for r in read_metrics(stopped_after_2)] == [1, 2]  # the original is untouched


# --------------------------------------------------------------------------- full disks, broken files


@pytest.fixture
def full_disk_at(monkeypatch: pytest.MonkeyPatch):
    """``full_disk_at(name, nth)``: the n-th write of the run file ``name`` goes to /dev/full, whose
    every write fails with ENOSPC, the way a full disk fails it (torch's own error text included)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    real_create = runs_module._create_temp

    def arm(name: str, nth: int) -> None:
        count = 0

        def create(path: Path):
            nonlocal count
            if path.name == name:
                count += 1
                if count == nth:
                    return os.open("/dev/full", os.O_WRONLY), path.with_name(f".{path.name}.full.tmp")
            return real_create(path)

        monkeypatch.setattr(runs_module, "_create_temp", create)

    return arm


@pytest.mark.parametrize(("name", "nth", "kept"), [("last.pt", 2, 1), ("metrics.jsonl", 3, 2)])
def test_a_full_disk_says_so_and_names_the_file(
    name: str, nth: int, kept: int, full_disk_at, data: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    full_disk_at(name, nth)  # last.pt of epoch 2, or metrics.jsonl after epoch 2
    failed = invoke(*train_args(data, out))
    assert failed.exit_code == 1
    message = squash(failed.output)
    what = "checkpoint " if name.endswith(".pt") else ""
    assert f"error: could not write {what}{out / name}: no space left on device" in message
    assert "the previous file is untouched" in message
    assert "enforce fail" not in message and "unexpected pos" not in message and "Traceback" not in message
    assert load_checkpoint(out / "last.pt")["epoch"] == kept
    resumed = invoke("train", "--out", out, "--resume")  # space again: the run continues
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(out, reference)


def test_a_truncated_last_pt_says_that_best_pt_is_intact(partial: Path, reference: Path) -> None:
    last = partial / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    refused = invoke("train", "--out", partial, "--resume")
    assert refused.exit_code == 1
    message = squash(refused.output)
    assert f"{last}: not a readable torch checkpoint" in message
    intact = f"{partial / 'best.pt'} (epoch 2) is intact: copy it over last.pt to resume from epoch 2"
    assert intact in message
    shutil.copy(partial / "best.pt", last)  # the advice
    resumed = invoke("train", "--out", partial, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(partial, reference)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_follow_the_umask(umask: int, tmp_path: Path) -> None:
    previous = os.umask(umask)
    try:
        run = RunDir(tmp_path / "run")
        run.path.mkdir()
        save_checkpoint(run.last, {"model": {}})
        run.write_metrics([{"epoch": 1, "test_top1": 0.5}])
        run.write_summary({})
        with run.lock():
            pass
    finally:
        os.umask(previous)
    for path in (run.last, run.metrics, run.summary, run.lock_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
