"""Many runs at once: a pool of ``sld train`` processes on this machine (``sld reproduce --jobs N``), or
one SLURM job array through submitit (``--launcher slurm``; ``--launcher local`` is submitit's local
executor, which the tests use).

A :class:`Job` is one run directory. :func:`prepare_job` writes the config to train into its
``job.json``; the job's process is ``sld train --config RUN/job.json`` (:func:`job_command`), with
``--resume`` when ``last.pt`` holds a partial run and nothing at all when the run is done, so every run
stays what ``sld train`` makes of it: resumable, locked by the process that trains it, written whole
(:mod:`harness.runs`). Its output goes to ``RUN/train.log``, appended, one header line per attempt. A
run that fails is reported with its log (:class:`JobOutcome`) and the others go on.

* :func:`run_pool`: at most ``slots`` processes at once, slot ``i`` on ``devices[i % len(devices)]``,
  each with ``OMP_NUM_THREADS`` = cores // slots (unless the environment sets it). SIGINT/SIGTERM are
  passed on to every running process once (each stops at its next step boundary and exits 130/143 with
  its ``last.pt`` intact; a second Ctrl-C is passed on too and stops them at once), nothing new starts,
  and :class:`JobsInterrupted` says what stopped.
* :class:`RunJob`: the submitit job of one run, checkpointable: on preemption or timeout submitit calls
  ``__submitit_checkpoint__``, which stops the run cleanly and requeues the same job, and the requeued
  job resumes from ``last.pt``. :func:`submitit_executor` and :func:`run_array` submit and watch the
  array.

No torch here: the launcher and the submitit job that watches a run stay light; the training happens in
the child process.

    >>> jobs = [prepare_job(config, label=config.out_dir) for config in configs]  # doctest: +SKIP
    >>> outcomes = run_pool(jobs, slots=2, devices=["cpu"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError, TrainConfig
from harness.runs import RunDir, RunDirError, RunState
from harness.train.interrupt import TrainingInterrupted

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "SLD_COMMAND",
    "ArrayOptions",
    "Job",
    "JobFailed",
    "JobOutcome",
    "JobsInterrupted",
    "RunJob",
    "available_cores",
    "job_command",
    "parse_memory",
    "parse_time",
    "prepare_job",
    "run_array",
    "run_pool",
    "submitit_executor",
]

SLD_COMMAND = (sys.executable, "-m", "harness")  # the sld command line of this interpreter
_POLL_S = 0.1  # how often the pool looks at its processes (a child's start alone takes seconds)
_ARRAY_POLL_S = 2.0  # how often a submitted array is looked at (SLURM's sacct is rate-limited anyway)
_STOP_GRACE_S = 60.0  # how long a stopped run may take to reach its step boundary before it is killed
_INTERRUPT_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)  # how a run stopped by a signal exits
# Requeues after a timeout before submitit gives up on a run (preemptions are not counted): a run that
# needs more slots than this at --time is still making progress, and each slot resumes from last.pt.
MAX_TIMEOUT_REQUEUES = 20
_TAIL_BYTES = 4096


@dataclass(frozen=True)
class Job:
    """One run to train in a process of its own: its directory and how messages name it."""

    run_dir: Path
    label: str

    @property
    def log(self) -> Path:
        """``RUN/train.log``: the output of every attempt."""
        return RunDir(self.run_dir).log


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended. ``status``: ``done`` (trained to the end, or already finished), ``failed``,
    ``stopped`` (by a signal passed on to it: resumable) or ``not started``."""

    job: Job
    status: str
    returncode: int | None = None
    seconds: float = 0.0
    reason: str = ""  # failed / not started: the last line the run printed, or why it did not start

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def describe(self) -> str:
        """One line: the run, what happened, the log to read."""
        if self.ok:
            return f"{self.job.label}: {self.reason or f'done in {self.seconds:.1f} s'}"
        code = f" (exit {self.returncode})" if self.returncode is not None else ""
        reason = f": {self.reason}" if self.reason else ""
        log = f"; log: {self.job.log}" if self.job.log.is_file() else ""
        return f"{self.job.label}: {self.status}{code}{reason}{log}"


class JobFailed(RuntimeError):
    """A run's process exited with an error (what a submitit job raises; the message names the log)."""


class JobsInterrupted(TrainingInterrupted):
    """SIGINT/SIGTERM stopped a batch of runs; :attr:`outcomes` says what became of each. The CLI exits
    130 / 143 with the message, as for one interrupted run."""

    def __init__(self, message: str, *, signal_name: str, outcomes: Sequence[JobOutcome]) -> None:
        dirs = [str(o.job.run_dir) for o in outcomes] or ["."]
        super().__init__(message, signal_name=signal_name, out_dir=os.path.commonpath(dirs), last_epoch=0)
        self.outcomes = list(outcomes)


def prepare_job(config: TrainConfig, label: str) -> Job:
    """Write ``config`` into its run directory's ``job.json`` and return the job that trains it.

    Example
    -------
    >>> job = prepare_job(config, "resnet56-resnet20/kd/seed0")  # doctest: +SKIP
    >>> job_command(job)  # doctest: +SKIP
    ['.../python', '-m', 'harness', 'train', '--config', 'runs/.../kd/seed0/job.json']
    """
    run = RunDir(config.out_dir)
    run.write_job_config(config)
    return Job(run.path, label)


def job_command(
    job: Job, *, command: Sequence[str] = SLD_COMMAND, device: str | None = None, nproc: int = 1
) -> list[str] | None:
    """The command line that takes ``job`` to its end from where its directory stands: ``sld train
    --config RUN/job.json``, plus ``--resume`` for a partial run, ``--device`` and ``--nproc`` (more than
    one GPU per run); None for a finished run.

    Raises
    ------
    harness.runs.RunDirError, ConfigError
        The directory's files cannot be read (the message names the file).
    """
    run = RunDir(job.run_dir)
    state = run.state()
    if state is RunState.DONE:
        return None
    args = [*command, "train", "--config", str(run.job_config)]
    if state is RunState.PARTIAL:
        args.append("--resume")
    if device is not None:
        args += ["--device", device]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    return args


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # the user's own setting wins, as with --nproc
    return env


def _start(
    job: Job, args: list[str], env: dict[str, str], preexec: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` with its output appended to the job's log, after a header line.

    The child gets a session of its own, so that a Ctrl-C in the terminal reaches only the launcher,
    which passes exactly one SIGINT on (a second one would stop the run at once, mid-epoch)."""
    log_path = job.log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        threads = env.get("OMP_NUM_THREADS")
        extra = f" [OMP_NUM_THREADS={threads}]" if threads else ""
        log.write(f"=== {datetime.now():%Y-%m-%d %H:%M:%S} {shlex.join(args)}{extra}\n".encode())
        log.flush()
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
        )


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (what ``sld train`` prints last is its one-line error)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ended(job: Job, returncode: int, seconds: float, stopping: bool) -> JobOutcome:
    if returncode == 0:
        return JobOutcome(job, "done", 0, seconds)
    if stopping and returncode in _INTERRUPT_CODES:
        return JobOutcome(job, "stopped", returncode, seconds, "resumable from its last.pt")
    return JobOutcome(job, "failed", returncode, seconds, _last_line(job.log))


class _Signals:
    """SIGINT/SIGTERM while the pool runs: recorded here, passed on by the pool's loop (never from the
    handler, so that no process gets one twice or misses one that arrives while it starts)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if _in_main_thread():  # Python installs handlers in the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_pool(
    jobs: Sequence[Job],
    *,
    slots: int = 1,
    devices: Sequence[str | None] = (None,),
    threads: int | None = None,
    command: Sequence[str] = SLD_COMMAND,
    console: Console | None = None,
) -> list[JobOutcome]:
    """Train ``jobs`` to their end, at most ``slots`` processes at once, in the order given.

    Parameters
    ----------
    jobs
        The runs (:func:`prepare_job`); finished ones are skipped, partial ones resumed.
    slots
        Processes at once. Slot ``i`` trains on ``devices[i % len(devices)]`` (a torch device string;
        None: the trainer's default), so ``slots=4, devices=["cuda:0", "cuda:1"]`` runs two per GPU.
    threads
        ``OMP_NUM_THREADS`` of each process (default: this machine's cores // ``slots``); a value in
        the environment wins.
    command
        The ``sld`` command line to run (default: this interpreter's ``python -m harness``).
    console
        Where one line per start and end goes (a Rich console; a new one on stdout by default).

    Returns
    -------
    list of JobOutcome
        One per job, in order; a failed run does not stop the others.

    Raises
    ------
    JobsInterrupted
        SIGINT or SIGTERM arrived: passed on to every running process, which stopped at a step
        boundary (``last.pt`` keeps its last complete epoch); the jobs not started are left as they are.

    Example
    -------
    >>> outcomes = run_pool(jobs, slots=2, devices=["cpu"])  # doctest: +SKIP
    >>> [o.status for o in outcomes]  # doctest: +SKIP
    ['done', 'done', 'failed']
    """
    from rich.console import Console
    from rich.markup import escape

    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise ConfigError(f"the pool needs at least one slot; got {slots!r}")
    if not devices:
        raise ConfigError("the pool needs at least one device (None: the trainer's default)")
    console = console or Console(soft_wrap=True)
    env = _child_env(threads if threads is not None else max(1, available_cores() // slots))
    slot_device = [devices[i % len(devices)] for i in range(slots)]
    queue = deque(enumerate(jobs))
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    running: dict[int, tuple[int, subprocess.Popen[bytes], float]] = {}  # slot -> job index, process, t0
    passed_on = 0  # signals passed on so far
    finished = 0

    def end(index: int, outcome: JobOutcome) -> None:
        nonlocal finished
        outcomes[index] = outcome
        finished += 1
        style = {"done": "green", "stopped": "yellow"}.get(outcome.status, "bold red")
        console.print(
            f"[{style}]{outcome.status}[/{style}] [{finished}/{len(jobs)}] {escape(outcome.describe())}"
        )

    with _Signals() as signals:
        while running or (queue and not signals.received):
            changed = False
            while passed_on < len(signals.received):
                sig = signal.Signals[signals.received[passed_on]]
                for _, proc, _ in running.values():
                    proc.send_signal(sig)
                passed_on += 1
            free = [slot for slot in range(slots) if slot not in running]
            while free and queue and not signals.received:
                index, job = queue.popleft()
                try:
                    args = job_command(job, command=command, device=slot_device[free[0]])
                except (RunDirError, ConfigError, OSError) as exc:
                    end(index, JobOutcome(job, "failed", reason=str(exc)))
                    continue
                if args is None:
                    end(index, JobOutcome(job, "done", reason="already finished"))
                    continue
                try:
                    proc = _start(job, args, env)
                except OSError as exc:
                    end(index, JobOutcome(job, "failed", reason=f"could not start {args[0]}: {exc}"))
                    continue
                slot = free.pop(0)
                running[slot] = (index, proc, time.monotonic())
                where = f" on {slot_device[slot]}" if slot_device[slot] else ""
                console.print(
                    f"started {escape(job.label)}{where} (pid {proc.pid}; log {escape(str(job.log))})"
                )
                changed = True
            for slot, (index, proc, started) in list(running.items()):
                returncode = proc.poll()
                if returncode is not None:
                    del running[slot]
                    seconds = time.monotonic() - started
                    end(index, _ended(jobs[index], returncode, seconds, bool(signals.received)))
                    changed = True
            if not changed and running:
                time.sleep(_POLL_S)
        if signals.received:
            raise _interrupted(signals.received[0], outcomes, queue)
    return [o for o in outcomes if o is not None]


def _interrupted(
    signal_name: str, outcomes: list[JobOutcome | None], queue: deque[tuple[int, Job]]
) -> JobsInterrupted:
    for index, job in queue:
        outcomes[index] = JobOutcome(job, "not started", reason=f"{signal_name} arrived first")
    ended = [o for o in outcomes if o is not None]
    stopped = [o.job.label for o in ended if o.status == "stopped"]
    waiting = sum(o.status == "not started" for o in ended)
    parts = []
    if stopped:
        parts.append(
            f"stopped {len(stopped)} run(s) cleanly ({', '.join(stopped)}; each last.pt keeps its "
            "last complete epoch)"
        )
    if waiting:
        parts.append(f"{waiting} not started")
    parts += [o.describe() for o in ended if o.status == "failed"]
    parts.append("the same command again continues them")
    return JobsInterrupted(
        f"interrupted by {signal_name}: " + "; ".join(parts), signal_name=signal_name, outcomes=ended
    )


# ------------------------------------------------------------------------------------------- submitit


def _preempt_signal() -> signal.Signals:
    # submitit's warning signal before a preemption or the time limit (SUBMITIT_PREEMPT_SIGNAL, USR2).
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def _ignore_preempt_signal() -> None:
    # In the child, before exec: SLURM may send the warning signal to every process of the step, and
    # its default action would kill the run on the spot; the watcher stops the run cleanly instead.
    # An ignored disposition survives exec.
    signal.signal(_preempt_signal(), signal.SIG_IGN)


class RunJob:
    """The submitit job of one run: ``sld train`` for it (:func:`job_command`) in a child process, to
    the end. Checkpointable: when the cluster warns of a preemption or the time limit, submitit calls
    :meth:`__submitit_checkpoint__` (alias :meth:`checkpoint`), which sends the run SIGTERM (it stops
    at a step boundary, its ``last.pt`` intact) and resubmits this same job; the requeued job finds the
    run partial and resumes it (a finished one returns at once).

    Parameters
    ----------
    job
        The run (:func:`prepare_job`).
    device
        ``--device`` of the run (None: the trainer's default, CUDA when the job has a GPU).
    nproc
        GPUs per run: more than one trains the run data-parallel (``sld train --nproc``).
    threads
        ``OMP_NUM_THREADS`` of the run (None: left to the environment).
    command
        The ``sld`` command line (default: this interpreter's ``python -m harness``).

    Example
    -------
    >>> handle = executor.submit(RunJob(job))  # doctest: +SKIP
    >>> handle.result().status  # doctest: +SKIP
    'done'
    """

    def __init__(
        self,
        job: Job,
        *,
        device: str | None = None,
        nproc: int = 1,
        threads: int | None = None,
        command: Sequence[str] = SLD_COMMAND,
    ) -> None:
        self.job = job
        self.device = device
        self.nproc = nproc
        self.threads = threads
        self.command = tuple(command)
        self._proc: subprocess.Popen[bytes] | None = None

    def __call__(self) -> JobOutcome:
        args = job_command(self.job, command=self.command, device=self.device, nproc=self.nproc)
        if args is None:
            return JobOutcome(self.job, "done", 0, reason="already finished")
        started = time.monotonic()
        self._proc = proc = _start(self.job, args, _child_env(self.threads), _ignore_preempt_signal)
        try:
            returncode = proc.wait()
        except BaseException as exc:
            # submitit's requeue (SystemExit, after __submitit_checkpoint__ sent SIGTERM), its refusal to
            # requeue, or a cancel (KeyboardInterrupt): the run stops at its step boundary before this
            # process ends (a repeated SIGTERM changes nothing; only a second SIGINT stops it mid-step).
            proc.send_signal(signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()  # every run file is written atomically: a kill leaves the last epoch whole
                proc.wait()
            raise
        finally:
            self._proc = None
        outcome = _ended(self.job, returncode, time.monotonic() - started, stopping=False)
        if not outcome.ok:
            raise JobFailed(outcome.describe())
        return outcome

    def __submitit_checkpoint__(self) -> Any:
        """Stop the run cleanly and return the resubmission of this job (submitit calls this from its
        signal handler on a preemption or timeout warning)."""
        from submitit.helpers import DelayedSubmission

        proc = self._proc
        if proc is not None:
            # Popen.send_signal is safe here even though __call__ is inside proc.wait(): it skips a
            # process already reaped, and an exited but unreaped one keeps its PID.
            proc.send_signal(signal.SIGTERM)
        return DelayedSubmission(self)

    # submitit's signal handler requeues only callables with a `checkpoint` attribute (then calls
    # __submitit_checkpoint__ first when there is one): the name of submitit.helpers.Checkpointable.
    checkpoint = __submitit_checkpoint__

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"] = None  # a process does not pickle (submitit pickles the job to requeue it)
        return state


@dataclass(frozen=True)
class ArrayOptions:
    """What each run of a submitit array asks for (``sld reproduce --launcher`` options)."""

    partition: str | None = None  # SLURM partition (None: the cluster's default)
    time_min: int = 240  # per job slot; a run that needs longer is requeued and resumes from last.pt
    gpus_per_run: int = 1  # > 1: the run trains data-parallel in its slot (sld train --nproc)
    cpus_per_run: int | None = None  # None: the cluster's default
    mem_gb: float | None = None  # None: the cluster's default
    array_parallelism: int | None = None  # runs of the array at once (None: all)
    name: str = "sld"  # the job name squeue shows

    def __post_init__(self) -> None:
        for field in ("time_min", "cpus_per_run", "array_parallelism"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{field} must be an integer >= 1; got {value!r}")
        if not isinstance(self.gpus_per_run, int) or self.gpus_per_run < 0:
            raise ConfigError(f"gpus_per_run must be an integer >= 0; got {self.gpus_per_run!r}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"mem_gb must be > 0; got {self.mem_gb!r}")

    @property
    def threads(self) -> int | None:
        """``OMP_NUM_THREADS`` per training process: the run's CPUs over its processes."""
        if self.cpus_per_run is None:
            return None
        return max(1, self.cpus_per_run // max(1, self.gpus_per_run))


def submitit_executor(folder: str | os.PathLike[str], cluster: str, options: ArrayOptions) -> Any:
    """A submitit executor for ``cluster`` (``slurm``, or ``local``: this machine) with ``options``;
    its submission files and the watchers' logs go to ``folder``.

    Raises
    ------
    ConfigError
        submitit is not installed (the message names the extra to install), an unknown cluster, or
        no SLURM on this machine.
    """
    if cluster not in ("slurm", "local"):
        raise ConfigError(f"--launcher must be slurm or local; got {cluster!r}")
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            f"--launcher {cluster} needs submitit, which is not installed: "
            "pip install 'swapped-logit-distillation[slurm]'"
        ) from None
    try:
        executor = submitit.AutoExecutor(
            folder=str(folder),
            cluster=cluster,
            slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES,
            local_max_num_timeout=MAX_TIMEOUT_REQUEUES,
        )
    except RuntimeError as exc:  # SlurmExecutor: 'Could not detect "srun"'
        raise ConfigError(
            f"--launcher slurm: no SLURM on this machine ({exc}); run it on the cluster's login node, or "
            "use --launcher local or --jobs N here"
        ) from None
    parameters: dict[str, Any] = {
        "name": options.name,
        "timeout_min": options.time_min,
        "gpus_per_node": options.gpus_per_run,
        "cpus_per_task": options.cpus_per_run,
        "mem_gb": options.mem_gb,
        "tasks_per_node": 1,  # one watcher per run; several GPUs are the run's own torchrun processes
    }
    if cluster == "slurm":
        parameters["slurm_partition"] = options.partition
        if options.array_parallelism is not None:
            parameters["slurm_array_parallelism"] = options.array_parallelism
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor


def run_array(
    jobs: Sequence[Job],
    executor: Any,
    options: ArrayOptions,
    *,
    device: str | None = None,
    command: Sequence[str] = SLD_COMMAND,
    console: Console | None = None,
) -> list[JobOutcome]:
    """Submit ``jobs`` as one submitit job array (:class:`RunJob` each) and wait for all of them.

    On SLURM the array runs ``options.array_parallelism`` runs at once (the cluster enforces it); the
    local executor has no arrays, so there the same limit is kept by submitting the next run when one
    ends.

    Returns
    -------
    list of JobOutcome
        One per job, in order; a failed run does not stop the others.

    Raises
    ------
    JobsInterrupted
        Ctrl-C while waiting. On SLURM the array keeps running (the message says how to cancel it);
        local jobs are cancelled (each run stops at a step boundary).
    """
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(soft_wrap=True)
    if not jobs:
        return []
    local = getattr(executor, "cluster", None) == "local"
    nproc = max(1, options.gpus_per_run)
    window = options.array_parallelism or len(jobs)
    threads = options.threads
    if threads is None and local:  # the runs at once share this machine's cores, as with --jobs
        threads = max(1, available_cores() // min(window, len(jobs)))
    work = [RunJob(job, device=device, nproc=nproc, threads=threads, command=command) for job in jobs]
    queue = deque(enumerate(work))
    handles: dict[int, Any] = {}
    outcomes: list[JobOutcome | None] = [None] * len(work)
    first = None

    def submit(count: int) -> None:
        nonlocal first
        batch = [queue.popleft() for _ in range(min(count, len(queue)))]
        if not batch:
            return
        submitted = executor.submit_array([w for _, w in batch])
        for (index, _), handle in zip(batch, submitted):
            handles[index] = handle
        if first is None:
            first = submitted[0]
        ids = sorted({str(h.job_id).split("_")[0] for h in submitted})
        console.print(
            f"submitted {len(batch)} run(s) as job {', '.join(ids)} (submitit logs: {executor.folder})"
        )

    try:
        submit(len(work) if not local else window)
        while handles:
            for index, handle in list(handles.items()):
                if not handle.done():
                    continue
                del handles[index]
                outcomes[index] = _array_outcome(jobs[index], handle)
                style = "green" if outcomes[index].ok else "bold red"
                console.print(
                    f"[{style}]{outcomes[index].status}[/{style}] {escape(outcomes[index].describe())}"
                )
                if local and queue:
                    submit(1)
            if handles:
                time.sleep(_ARRAY_POLL_S if not local else _POLL_S * 5)
    except KeyboardInterrupt:
        for index, handle in handles.items():
            if local:
                handle.cancel(check=False)
            outcomes[index] = JobOutcome(
                jobs[index], "stopped", reason="cancelled" if local else "still queued"
            )
        for index, _ in queue:
            outcomes[index] = JobOutcome(jobs[index], "not started", reason="SIGINT arrived first")
        done = [o for o in outcomes if o is not None]
        if local:
            message = "interrupted by SIGINT: cancelled the local jobs; the same command again continues them"
        else:
            array = str(first.job_id).split("_")[0] if first is not None else "?"
            message = (
                f"interrupted by SIGINT: the array (job {array}) keeps running on the cluster: "
                f"`scancel {array}` stops it; the same command again, once it is done, reports (and "
                "continues unfinished runs)"
            )
        raise JobsInterrupted(message, signal_name="SIGINT", outcomes=done) from None
    return [o for o in outcomes if o is not None]


def _array_outcome(job: Job, handle: Any) -> JobOutcome:
    try:
        result = handle.result()
    except Exception as exc:  # submitit's FailedJobError / UncompletedJobError carry the job's traceback
        reason = _last_line(job.log) or str(exc).strip().splitlines()[-1]
        where = getattr(getattr(handle, "paths", None), "stderr", None)
        return JobOutcome(job, "failed", reason=f"{reason} (submitit log: {where})" if where else reason)
    if isinstance(result, JobOutcome):
        return result
    return JobOutcome(job, "failed", reason=f"unexpected job result {result!r}")


# ------------------------------------------------------------------------------ option values (sbatch)

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int:
    """A SLURM time limit as whole minutes (rounded up), in sbatch's formats: ``MM``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.

    >>> parse_time("90"), parse_time("4:00:00"), parse_time("1-12")
    (90, 240, 2160)
    """
    match = _TIME.match(text.strip())
    if match is None:
        raise ConfigError(f"--time takes MM, MM:SS, HH:MM:SS or D-HH[:MM[:SS]] (as sbatch); got {text!r}")
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = (first * 60 + second) * 60 + third
    else:  # MM[:SS]
        seconds = first * 60 + (second or 0)
    if seconds <= 0:
        raise ConfigError(f"--time must be positive; got {text!r}")
    return -(-seconds // 60)


_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)
_MEMORY_GB = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0, "": 1 / 1024}


def parse_memory(text: str) -> float:
    """Memory per run in GB, as sbatch's ``--mem``: a K/M/G/T suffix, a plain number in megabytes.

    >>> parse_memory("32G"), parse_memory("512M"), parse_memory("2048")
    (32.0, 0.5, 2.0)
    """
    match = _MEMORY.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f"--mem takes a size such as 32G or 16000M (a plain number: megabytes); got {text!r}"
        )
    return float(match.group(1)) * _MEMORY_GB[match.group(2).upper()]
