"""``sld reproduce --jobs N`` / ``--launcher slurm|local`` and harness.jobs: each run in a process of its
own, on a synthetic archive (64 train / 32 test images) with resnet8 for every model (test_reproduce's
``tiny_pair_config``, patched where harness.reproduce reads it; the children train the configs the
parent wrote into ``job.json``, so the patch reaches them). Every child runs one torch thread
(``OMP_NUM_THREADS=1``), so runs in different processes do the same arithmetic bit for bit."""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import harness.reproduce  # noqa: E402
from harness.config import ConfigError, load_config, with_overrides  # noqa: E402
from harness.jobs import (  # noqa: E402
    ArrayOptions,
    Job,
    JobOutcome,
    RunJob,
    job_command,
    parse_memory,
    parse_time,
    prepare_job,
    run_pool,
    submitit_executor,
)
from harness.recipes import teacher_config  # noqa: E402
from harness.runs import RunDir, RunState, read_metrics  # noqa: E402

from .test_reproduce import TINY, fake_run, tiny_pair_config  # noqa: E402
from .train_helpers import (  # noqa: E402
    assert_same_state,
    final_state,
    invoke,
    kill_tree,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    subprocess_env,
    without_timing,
    write_tiny_cifar,
    write_untrained_teacher,
)

PAIR = "resnet56-resnet20"
RUNS = ("kd/seed0", "sld/seed0")
ROOT = Path(__file__).resolve().parents[1]
FAULT_SCRIPT = Path(__file__).with_name("sld_with_fault.py")
GRID_SCRIPT = Path(__file__).with_name("sld_tiny_grid.py")


def grid_args(out: Path, runs: Path, data: Path, *extra: str, tiny: list[str] = TINY) -> list:
    return [
        "reproduce", "--pairs", PAIR, "--methods", "kd,sld", "--seeds", "1",
        "--out", out, "--runs-dir", runs, "--data-dir", data, *tiny, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32, seed=2)


@pytest.fixture(autouse=True)
def tiny_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet8 for every pair, one torch thread in every child process."""
    monkeypatch.setattr(harness.reproduce, "pair_config", tiny_pair_config)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@dataclass
class Grids:
    runs: Path
    jobs2: Path
    jobs1: Path
    local: Path
    results: dict  # out -> CliRunner result


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Grids:
    """One grid (teacher + kd + sld) with --jobs 2 (training the teacher as a job first), then the same
    grid with --jobs 1 and with --launcher local into other directories, reusing that teacher."""
    root = tmp_path_factory.mktemp("grids")
    g = Grids(root / "runs", root / "jobs2", root / "jobs1", root / "local", {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness.reproduce, "pair_config", tiny_pair_config)
        mp.setenv("OMP_NUM_THREADS", "1")
        for out, extra in (
            (g.jobs2, ["--jobs", "2"]),
            (g.jobs1, ["--jobs", "1"]),
            (g.local, ["--launcher", "local", "--array-parallelism", "2"]),
        ):
            g.results[out] = invoke(*grid_args(out, g.runs, data_dir, *extra))
    return g


@pytest.mark.slow
def test_jobs_2_trains_the_teacher_first_then_the_runs_in_processes_of_their_own(
    grids: Grids, data_dir: Path
) -> None:
    result = grids.results[grids.jobs2]
    assert result.exit_code == 0, result.output
    at = result.output.index
    assert at("started teacher resnet8") < at("done [1/1] teacher resnet8") < at("started " + PAIR)
    assert result.output.count("started " + PAIR) == 2
    teacher = RunDir(grids.runs / "teachers/resnet8")
    assert teacher.state() is RunState.DONE and "best test top-1" in teacher.log.read_text()
    assert load_config(teacher.config) == with_overrides(  # sld train-teacher's recipe, the grid's options
        teacher_config("resnet8", grids.runs),
        {
            "optim.epochs": 2,
            "optim.batch_size": 32,
            "data.data_dir": str(data_dir),
            "data.limit_train": 64,
            "data.limit_test": 32,
        },
    )
    for run in RUNS:
        directory = RunDir(grids.jobs2 / PAIR / run)
        assert directory.state() is RunState.DONE
        # The child trained exactly what the parent asked for, with the teacher it found.
        assert json.loads(directory.job_config.read_text()) == json.loads(directory.config.read_text())
        assert load_config(directory.config).teacher_checkpoint == str(teacher.best)
        log = directory.log.read_text()
        assert log.startswith("=== ") and "train --config" in log and "--device cpu" in log
        assert "[OMP_NUM_THREADS=1]" in log.splitlines()[0]
        assert "best test top-1" in log
    assert (grids.jobs2 / "REPORT.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("other", ["jobs1", "local"])
def test_every_launcher_gives_the_same_runs_bit_for_bit(grids: Grids, other: str) -> None:
    out = getattr(grids, other)
    result = grids.results[out]
    assert result.exit_code == 0, result.output
    assert "teacher run(s) first" not in result.output  # the teacher of the first grid was reused
    for run in RUNS:
        a, b = grids.jobs2 / PAIR / run, out / PAIR / run
        assert without_timing(read_metrics(b / "metrics.jsonl")) == without_timing(
            read_metrics(a / "metrics.jsonl")
        )
        assert_same_state(final_state(a), final_state(b))
    rows = lambda path: [line for line in path.read_text().splitlines() if line.startswith(f"| {PAIR} |")]  # noqa: E731
    assert rows(out / "REPORT.md") == rows(grids.jobs2 / "REPORT.md")


@pytest.mark.slow
def test_the_local_launcher_keeps_submitits_logs_beside_the_grid(grids: Grids) -> None:
    result = grids.results[grids.local]
    assert "submitted 2 run(s)" in result.output
    assert list((grids.local / "submitit").glob("*_log.out"))
    for run in RUNS:
        assert "best test top-1" in RunDir(grids.local / PAIR / run).log.read_text()


def test_a_rerun_trains_nothing(grids: Grids, data_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in grids.jobs2.rglob("*.pt")}
    result = invoke(*grid_args(grids.jobs2, grids.runs, data_dir, "--jobs", "2"))
    assert result.exit_code == 0, result.output
    assert "started" not in result.output and result.output.count("skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in grids.jobs2.rglob("*.pt")} == before


# ------------------------------------------------------------------------------------ failures, locks


def ready_teacher(runs: Path) -> Path:
    """An untrained teacher where ``sld train`` finds resnet8's: no teacher run needed."""
    return write_untrained_teacher(runs / "teachers/resnet8/best.pt")


def test_a_failed_run_is_reported_with_its_log_and_the_others_finish(tmp_path: Path, data_dir: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    ready_teacher(runs)
    broken = fake_run(out / PAIR / "kd/seed0", epochs=2, recorded=0)  # a config.json, no records
    (broken / "last.pt").write_bytes(b"not a checkpoint")  # so it is partial: resumed, and fails
    result = invoke(*grid_args(out, runs, data_dir, "--jobs", "2"))
    assert result.exit_code == 1, result.output
    log = broken / "train.log"
    assert "--resume" in log.read_text().splitlines()[0]
    assert f"{PAIR}/kd/seed0: failed (exit 1): error: " in result.output
    assert f"log: {log}" in result.output
    assert "1 run(s) did not finish" in result.output
    assert RunDir(out / PAIR / "sld/seed0").state() is RunState.DONE
    report = (out / "REPORT.md").read_text()
    assert f"| {PAIR} | sld |" in report
    assert f"- `{broken}`: {PAIR}/kd/seed0: failed (exit 1)" in report


def test_the_runs_of_a_failed_teacher_are_not_started(tmp_path: Path, data_dir: Path) -> None:
    out, runs, bad_data = tmp_path / "out", tmp_path / "runs", tmp_path / "bad-data"
    bad_data.mkdir()
    (bad_data / "cifar-100-python.tar.gz").write_bytes(b"not an archive")  # fails its checksum, no download
    result = invoke(*grid_args(out, runs, bad_data, "--jobs", "2"))
    assert result.exit_code == 1, result.output
    assert "teacher resnet8: failed (exit 1)" in result.output
    assert f"{PAIR}/kd/seed0: not started: its teacher failed" in result.output
    assert not (out / PAIR / "kd/seed0").exists() and not (out / PAIR / "sld/seed0/job.json").exists()


def test_a_locked_run_directory_stops_the_grid_before_anything_starts(tmp_path: Path, data_dir: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    ready_teacher(runs)
    with RunDir(out / PAIR / "sld/seed0").lock():
        result = invoke(*grid_args(out, runs, data_dir, "--jobs", "2"))
    assert result.exit_code == 1
    assert f"{out / PAIR / 'sld/seed0'} is in use by another sld process (PID {os.getpid()})" in result.output
    assert not list(out.rglob("job.json")) and not list(out.rglob("train.log"))


# ---------------------------------------------------------------------------------------- Ctrl-C


def wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def interrupt_when(proc: subprocess.Popen, condition, timeout: float, what: str) -> str:  # noqa: ANN001
    """Wait for ``condition``, send ``proc`` the SIGINT a Ctrl-C in its terminal sends (to the launcher
    only), and return its output once it exits; the process tree is killed if anything fails first."""
    try:
        wait_for(condition, timeout, what)
        os.kill(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    return output


def records(run: Path) -> int:
    try:
        return len(read_metrics(run / "metrics.jsonl"))
    except Exception:  # not written yet, or written between our reads
        return 0


@pytest.mark.slow
def test_ctrl_c_stops_every_run_cleanly_and_the_same_command_continues(
    tmp_path: Path, data_dir: Path
) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    ready_teacher(runs)
    tiny = [*TINY]
    tiny[tiny.index("--epochs") + 1] = "6"
    grid = grid_args(out, runs, data_dir, "--jobs", "2", tiny=tiny)
    args = [sys.executable, str(GRID_SCRIPT), *map(str, grid)]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(), cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip
    output = interrupt_when(
        proc, lambda: all(records(out / PAIR / r) >= 1 for r in RUNS), 120, "both runs' first epoch"
    )
    assert proc.returncode == 130, output
    assert "interrupted by SIGINT: stopped 2 run(s) cleanly" in output and "Traceback" not in output
    for run in RUNS:
        directory = RunDir(out / PAIR / run)
        directory.check_unlocked()  # the child has exited
        assert directory.state() is RunState.PARTIAL
        epochs = records(directory.path)
        assert 1 <= epochs < 6
        assert torch.load(directory.last, weights_only=False)["epoch"] == epochs
        log = directory.log.read_text()
        assert "interrupted by SIGINT" in log and "stopped cleanly, nothing half-written" in log
        assert "KeyboardInterrupt" not in log  # one SIGINT each, never the second (hard) one
    again = invoke(*grid_args(out, runs, data_dir, "--jobs", "2", tiny=tiny))
    assert again.exit_code == 0, again.output
    for run in RUNS:
        assert RunDir(out / PAIR / run).state() is RunState.DONE
        assert "--resume" in RunDir(out / PAIR / run).log.read_text().split("=== ")[-1].splitlines()[0]
        assert [r["epoch"] for r in read_metrics(out / PAIR / run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------ submitit


def small_job(root: Path, data: Path, epochs: int = 2) -> tuple[Job, object]:
    config = with_overrides(
        tiny_pair_config(PAIR, "kd"),
        {
            "optim.epochs": epochs,
            "optim.batch_size": 32,
            "data.data_dir": str(data),
            "data.limit_train": 64,
            "data.limit_test": 32,
            "teacher_checkpoint": str(ready_teacher(root / "runs")),
            "out_dir": str(root / "run"),
        },
    )
    return prepare_job(config, "kd"), config


@pytest.mark.slow
def test_a_requeued_job_resumes_from_its_last_pt(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitit = pytest.importorskip("submitit")
    job, config = small_job(tmp_path, data_dir)
    # After epoch 1 the run sends its watcher the cluster's preemption warning (SIGUSR2), once.
    monkeypatch.setenv("SLD_FAULT_ONCE", str(tmp_path / "fired"))
    fault = (sys.executable, str(FAULT_SCRIPT), "epoch-end", "parent:SIGUSR2", "1")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=60)  # far away: the warning is a preemption, not a timeout
    handle = executor.submit(RunJob(job, device="cpu", command=fault))
    outcome = handle.result()
    assert isinstance(outcome, JobOutcome) and outcome.ok
    attempts = job.log.read_text().split("=== ")[1:]
    assert len(attempts) == 2
    assert "--resume" not in attempts[0].splitlines()[0] and "--resume" in attempts[1].splitlines()[0]
    assert "interrupted by SIGTERM" in attempts[0]  # the watcher stopped it cleanly before requeueing
    assert "resuming after epoch" in attempts[1] and "best test top-1" in attempts[1]
    watcher = (handle.stdout() or "") + (handle.stderr() or "")
    assert "this job is preempted" in watcher and "Requeued job" in watcher
    assert [r["epoch"] for r in read_metrics(job.run_dir / "metrics.jsonl")] == [1, 2]
    # Bit for bit the run that nobody interrupted (in this process, one thread).
    reference = tmp_path / "reference"
    from harness.train.loop import train

    train(with_overrides(config, {"out_dir": str(reference)}), "cpu")
    assert without_timing(read_metrics(job.run_dir / "metrics.jsonl")) == without_timing(
        read_metrics(reference / "metrics.jsonl")
    )
    assert_same_state(final_state(job.run_dir), final_state(reference))


def test_a_run_job_pickles_without_its_process_and_checkpoints_into_itself(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    work = RunJob(Job(tmp_path / "run", "x"), device="cuda", nproc=2, threads=4)
    work._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        resubmission = work.__submitit_checkpoint__()
        assert work._proc.wait(timeout=10) == -signal.SIGTERM  # the run was told to stop
        copy = pickle.loads(pickle.dumps(resubmission.function))
    finally:
        if work._proc.poll() is None:
            work._proc.kill()
    assert resubmission.function is work and resubmission.args == () and copy._proc is None
    assert (copy.job, copy.device, copy.nproc, copy.threads) == (work.job, "cuda", 2, 4)


def fake_slurm(bin_dir: Path, capture: Path) -> None:
    """``srun`` and ``sbatch`` stand-ins: sbatch keeps the script it is given and answers as SLURM does."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" "{capture}"\necho "Submitted batch job 4242"\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_slurm_array_asks_for_the_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    from submitit.core.utils import DelayedSubmission

    capture = tmp_path / "sbatch.sh"
    fake_slurm(tmp_path / "bin", capture)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    options = ArrayOptions(
        partition="gpu", time_min=parse_time("1:30:00"), gpus_per_run=2, cpus_per_run=16,
        mem_gb=parse_memory("64G"), array_parallelism=2,
    )  # fmt: skip
    executor = submitit_executor(tmp_path / "submitit", "slurm", options)
    jobs = [Job(tmp_path / f"run{i}", f"run{i}") for i in range(3)]
    handles = executor.submit_array([RunJob(j, nproc=2, threads=options.threads) for j in jobs])
    assert [h.job_id for h in handles] == ["4242_0", "4242_1", "4242_2"]
    sbatch = capture.read_text().splitlines()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64GB",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --array=0-2%2",
        "#SBATCH --signal=USR2@90",  # the warning that makes the job checkpoint and requeue
        "#SBATCH --job-name=sld",
    ):
        assert line in sbatch
    submitted = DelayedSubmission.load(handles[1].paths.submitted_pickle).function
    assert (submitted.job, submitted.nproc, submitted.threads) == (jobs[1], 2, 8)


def test_launcher_slurm_without_submitit_names_the_extra(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without it gives
    result = invoke(*grid_args(tmp_path / "out", tmp_path / "runs", data_dir, "--launcher", "slurm"))
    assert result.exit_code == 1
    assert "--launcher slurm needs submitit, which is not installed: pip install " in result.output
    assert "swapped-logit-distillation[slurm]" in result.output and "Traceback" not in result.output


def test_launcher_slurm_off_a_cluster_says_so(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    result = invoke(*grid_args(tmp_path / "out", tmp_path / "runs", data_dir, "--launcher", "slurm"))
    assert result.exit_code == 1
    assert "--launcher slurm: no SLURM on this machine" in result.output


# ------------------------------------------------------------------------------------- cheap pieces


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--partition", "gpu"], "--partition belong to --launcher slurm/local"),
        (["--time", "10", "--mem", "1G"], "--time, --mem belong to --launcher slurm/local"),
        (["--launcher", "local", "--jobs", "2"], "--jobs/--devices run the grid on this machine"),
        (["--launcher", "pbs"], "--launcher must be one of slurm, local; got 'pbs'"),
        (["--launcher", "local", "--partition", "gpu"], "--partition is a SLURM option"),
        (["--jobs", "1", "--devices", "cpu,cpu"], "--jobs 1 leaves some of the 2 --devices idle"),
        (["--jobs", "2", "--devices", "0"], "cuda"),  # no GPU here: the device check's own message
        (["--launcher", "local", "--time", "1:2:3:4"], "--time takes MM, MM:SS, HH:MM:SS"),
    ],
)
def test_launch_flags_that_do_not_fit_give_one_line(
    tmp_path: Path, data_dir: Path, extra: list[str], message: str
) -> None:
    args = grid_args(tmp_path / "out", tmp_path / "runs", data_dir, *extra)
    if "--devices" in extra:
        args.remove("--device")
        args.remove("cpu")
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_devices_and_device_together_are_refused(tmp_path: Path, data_dir: Path) -> None:
    result = invoke(*grid_args(tmp_path / "out", tmp_path / "runs", data_dir, "--devices", "cpu"))
    assert result.exit_code == 1
    assert "give --devices (a list for --jobs) or --device, not both" in result.output


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("90:30", 91), ("4:00:00", 240), ("0:00:01", 1), ("1-12", 2160), ("2-0:30", 2910),
     ("1-00:00:30", 1441)],
)  # fmt: skip
def test_parse_time_reads_sbatchs_formats(text: str, minutes: int) -> None:
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "1:2:3:4", "4h", "0", "0:00", "-5"])
def test_parse_time_refuses_other_text(text: str) -> None:
    with pytest.raises(ConfigError, match="--time"):
        parse_time(text)


@pytest.mark.parametrize(
    ("text", "gb"),
    [("32G", 32.0), ("32GB", 32.0), ("512M", 0.5), ("2048", 2.0), ("1T", 1024.0), ("1.5g", 1.5)],
)
def test_parse_memory_reads_sbatchs_sizes(text: str, gb: float) -> None:
    assert parse_memory(text) == gb


@pytest.mark.parametrize("text", ["", "G", "32X", "0G", "-1G"])
def test_parse_memory_refuses_other_text(text: str) -> None:
    with pytest.raises(ConfigError, match="--mem"):
        parse_memory(text)


def test_array_options_check_their_values() -> None:
    assert ArrayOptions(cpus_per_run=10, gpus_per_run=4).threads == 2
    assert ArrayOptions(cpus_per_run=3, gpus_per_run=0).threads == 3
    assert ArrayOptions().threads is None
    with pytest.raises(ConfigError, match="array_parallelism must be an integer >= 1; got 0"):
        ArrayOptions(array_parallelism=0)
    with pytest.raises(ConfigError, match="gpus_per_run must be an integer >= 0"):
        ArrayOptions(gpus_per_run=-1)


def test_job_command_follows_the_run_directory(tmp_path: Path) -> None:
    job = Job(tmp_path / "run", "run")
    base = [sys.executable, "-m", "harness", "train", "--config", str(tmp_path / "run/job.json")]
    assert job_command(job) == base  # new
    fake_run(job.run_dir, epochs=3, recorded=1)
    resumed = [*base, "--resume", "--device", "cuda:1", "--nproc", "2"]
    assert job_command(job, device="cuda:1", nproc=2) == resumed
    fake_run(job.run_dir, epochs=3, recorded=3)
    (job.run_dir / "summary.json").write_text("{}")
    assert job_command(job) is None  # done


def fake_sld(tmp_path: Path) -> tuple[str, ...]:
    """A stand-in for ``python -m harness``: records its start, end, device and threads; sleeps; exits
    with the code in the run's ``exit`` file (0 without one)."""
    script = tmp_path / "fake_sld.py"
    script.write_text(
        "import json, os, sys, time\n"
        "config = sys.argv[sys.argv.index('--config') + 1]\n"
        "run = os.path.dirname(config)\n"
        "device = sys.argv[sys.argv.index('--device') + 1] if '--device' in sys.argv else None\n"
        "start = time.monotonic()\n"
        "time.sleep(0.4)\n"
        "print('error: this run fails' if os.path.exists(run + '/exit') else 'fine')\n"
        "with open(os.path.join(os.path.dirname(run), 'trace.jsonl'), 'a') as f:\n"
        "    f.write(json.dumps({'run': os.path.basename(run), 'device': device, 'start': start,\n"
        "        'end': time.monotonic(), 'threads': os.environ.get('OMP_NUM_THREADS')}) + '\\n')\n"
        "sys.exit(int(open(run + '/exit').read()) if os.path.exists(run + '/exit') else 0)\n"
    )
    return (sys.executable, str(script))


def test_the_pool_keeps_its_slots_and_devices_and_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS")
    jobs = [Job(tmp_path / "runs" / f"r{i}", f"r{i}") for i in range(5)]
    for job in jobs:
        job.run_dir.mkdir(parents=True)
    (jobs[2].run_dir / "exit").write_text("3")
    outcomes = run_pool(jobs, slots=2, devices=["cuda:0", "cuda:1"], threads=7, command=fake_sld(tmp_path))
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done", "done"]
    assert outcomes[2].returncode == 3 and outcomes[2].reason == "error: this run fails"
    assert outcomes[2].describe() == f"r2: failed (exit 3): error: this run fails; log: {jobs[2].log}"
    trace = [json.loads(line) for line in (tmp_path / "runs/trace.jsonl").read_text().splitlines()]
    assert sorted(t["run"] for t in trace) == [j.label for j in jobs]
    assert {t["threads"] for t in trace} == {"7"}
    assert {t["device"] for t in trace} == {"cuda:0", "cuda:1"}
    assert {t["device"] for t in trace if t["run"] in ("r0", "r1")} == {"cuda:0", "cuda:1"}
    at_once = max(sum(u["start"] <= t["start"] < u["end"] for u in trace) for t in trace)
    assert at_once == 2  # two at a time, never three


def test_the_pool_divides_the_cores_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("harness.jobs.available_cores", lambda: 8)
    jobs = [Job(tmp_path / "runs" / f"r{i}", f"r{i}") for i in range(2)]
    for job in jobs:
        job.run_dir.mkdir(parents=True)
    run_pool(jobs, slots=2, command=fake_sld(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    run_pool(jobs[:1], slots=2, command=fake_sld(tmp_path))
    trace = [json.loads(line) for line in (tmp_path / "runs/trace.jsonl").read_text().splitlines()]
    assert [t["threads"] for t in trace] == ["4", "4", "3"]
    assert {t["device"] for t in trace} == {None}  # no --device: the trainer's default


def test_the_pool_refuses_no_slots(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one slot; got 0"):
        run_pool([], slots=0)


def test_a_signal_is_passed_on_once_and_nothing_new_starts(tmp_path: Path) -> None:
    """The pool in a process of its own, one slot, three jobs: SIGINT while the first runs reaches it
    exactly once, the other two never start, and the pool ends with JobsInterrupted (exit 130)."""
    child = tmp_path / "child.py"
    child.write_text(
        "import os, signal, sys, time\n"
        "run = os.path.dirname(sys.argv[sys.argv.index('--config') + 1])\n"
        "got = []\n"
        "signal.signal(signal.SIGINT, lambda s, f: got.append(s))\n"
        "open(run + '/started', 'w').close()\n"
        "deadline = time.monotonic() + 30\n"
        "while not got and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "time.sleep(0.5)  # a second signal would arrive meanwhile\n"
        "open(run + '/signals', 'w').write(str(len(got)))\n"
        "sys.exit(130)\n"
    )
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from harness.jobs import Job, JobsInterrupted, run_pool\n"
        f"root = Path({str(tmp_path)!r})\n"
        "jobs = [Job(root / f'r{i}', f'r{i}') for i in range(3)]\n"
        "for job in jobs:\n"
        "    job.run_dir.mkdir()\n"
        "try:\n"
        f"    run_pool(jobs, slots=1, command=(sys.executable, {str(child)!r}))\n"
        "except JobsInterrupted as exc:\n"
        "    print(json.dumps([[o.job.label, o.status] for o in exc.outcomes]))\n"
        "    print(exc)\n"
        "    sys.exit(exc.exit_code)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=subprocess_env(PYTHONPATH=str(ROOT)), start_new_session=True,
    )  # fmt: skip
    output = interrupt_when(proc, lambda: (tmp_path / "r0/started").exists(), 60, "the first job to start")
    assert proc.returncode == 130, output
    statuses = json.loads(next(line for line in output.splitlines() if line.startswith("[[")))
    assert statuses == [["r0", "stopped"], ["r1", "not started"], ["r2", "not started"]]
    assert "interrupted by SIGINT: stopped 1 run(s) cleanly (r0;" in output and "2 not started" in output
    assert (tmp_path / "r0/signals").read_text() == "1"
    assert not (tmp_path / "r1/started").exists() and not (tmp_path / "r1/train.log").exists()


def test_parse_setups_of_the_throughput_bench() -> None:
    from harness.bench.jobs import Setup, parse_setups

    assert parse_setups("inproc, 1,2x1") == [Setup(None), Setup(1), Setup(2, 1)]
    with pytest.raises(ValueError, match="a setup is inproc or N, optionally xT"):
        parse_setups("1,two")


@pytest.mark.slow
def test_the_throughput_bench_times_each_setup(tmp_path: Path) -> None:
    from harness.bench.jobs import Setup, grid_throughput, tiny_grid

    configs = tiny_grid(tmp_path, runs=2, epochs=1, method="kd", train_images=32, test_images=16)
    results = grid_throughput(configs, [Setup(None, 1), Setup(2)], rounds=1, root=tmp_path)
    assert [(r.setup, r.runs, len(r.rounds)) for r in results] == [(Setup(None, 1), 2, 1), (Setup(2), 2, 1)]
    assert all(r.runs_per_hour > 0 and r.runs_per_hour == r.rounds[0] for r in results)
    for name in ("inprocx1", "jobs_2"):
        for seed in (0, 1):
            assert RunDir(tmp_path / "round0" / name / f"seed{seed}").state() is RunState.DONE
