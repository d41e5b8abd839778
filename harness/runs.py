"""The run directory and the runs tree: the one place their file names and formats are spelled.

A run directory (``sld train --out DIR``, one grid cell of ``sld reproduce``) holds::

    config.json     the resolved TrainConfig (``sld train --config DIR/config.json`` repeats the run)
    metrics.jsonl   one JSON object per epoch, epochs 1, 2, 3, ...: every loss term, swap rates, lr,
                    accuracies (fractions), speed
    last.pt         training checkpoint after every epoch (``--resume`` continues from it)
    best.pt         training checkpoint of the epoch with the best test top-1
    teacher.json    the teacher's path, SHA-256, test top-1 and training-set error, written when the
                    run (re)starts
    summary.json    best and last accuracy, the teacher's accuracy, when the run finishes
    run.json        what reproducing the run needs, per session (start or resume): the git commit,
                    package versions, the device, start and end times (UTC)
    metrics.csv     with ``--log csv``: the records of metrics.jsonl as a table; steps.csv: the step
                    scalars (loss, lr every ``log_every`` steps)
    tensorboard/    with ``--log tensorboard``: event files (epochs/ and steps/); wandb/: W&B's files
    .lock           the lock of the process that trains in the directory (its PID inside)
    job.json        ``sld reproduce --jobs/--launcher``: the config the run's own process trains
                    (``sld train --config DIR/job.json``), written before that process starts
    train.log       ``sld reproduce --jobs/--launcher``: that process's output, every attempt appended

:class:`RunDir` names those files, writes the JSON ones (rank 0 only; the checkpoints' payload is
``harness.train.checkpoint``'s) and reads them back; :meth:`RunDir.state` says whether a run is new,
partial or done, and :meth:`RunDir.load` gives a :class:`Run` (a run as read from disk) for reports.

Integrity rules (``ARCHITECTURE.md``, "The run directory"): one process at a time trains in a run
directory (:meth:`RunDir.lock`, an OS lock the kernel drops when the process dies, so ``kill -9``
never leaves a stale one); every file is written whole or not at all (:func:`atomic_writer`: a
temporary file beside it, fsynced, renamed over it); ``last.pt`` is the commit point, and a resumed
run rebuilds ``metrics.jsonl`` (:meth:`RunDir.recover_metrics`) and ``best.pt`` from what it holds.
The runs tree: ``sld train-teacher`` writes a teacher to ``<runs>/teachers/<model>/`` and ``sld train``
looks there (then in mdistiller's ``download_ckpts/`` layout) when ``--teacher`` is not given. Paths are
relative to the working directory unless ``--runs-dir`` says otherwise. No torch here.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no run-directory lock, see RunDir.lock
    fcntl = None  # type: ignore[assignment]

from harness.config import ConfigError, TrainConfig, load_config, train_config_to_dict
from harness.pairs import ALL_PAIRS

__all__ = [
    "ACCURACY_KEYS",
    "BOOKKEEPING_KEYS",
    "DEFAULT_RUNS_DIR",
    "MDISTILLER_CKPT_DIR",
    "Run",
    "RunDir",
    "RunDirError",
    "RunLock",
    "RunLockedError",
    "RunState",
    "RunWriteError",
    "STEP_COLUMNS",
    "SWAP_KEYS",
    "TEMP_SUFFIX",
    "TeacherNotFoundError",
    "atomic_writer",
    "epoch_record",
    "file_sha256",
    "find_run_dirs",
    "find_teacher",
    "grid_run_dir",
    "load_runs",
    "read_metrics",
    "published_teacher_file",
    "scan_runs",
    "teacher_candidates",
    "teacher_run_dir",
    "torch_hub_dir",
]

DEFAULT_RUNS_DIR = "runs"
# The keys of a metrics.jsonl record besides the loss terms (every other numeric key is one).
ACCURACY_KEYS = ("test_top1", "test_top5", "train_top1")
SWAP_KEYS = ("teacher_swap_rate", "teacher_processed_rate", "student_swap_rate")
BOOKKEEPING_KEYS = ("epoch", "lr", "best_test_top1", "epoch_time_s", "images_per_s")
# The columns of steps.csv: the global step (1, 2, ... over the whole run), its epoch, the mean loss per
# image over the steps since the previous row (this rank's rows), the learning rate.
STEP_COLUMNS = ("step", "epoch", "loss", "lr")
# Counters among the trainer's epoch sums (epoch_record turns them into rates).
_COUNTS = ("rows", "teacher_swaps", "teacher_processed", "student_swaps", "train_correct")
MDISTILLER_CKPT_DIR = "download_ckpts"  # where mdistiller's README untars cifar_teachers.tar
MDISTILLER_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"  # the ImageNet teachers' files
TEMP_SUFFIX = ".tmp"  # atomic_writer's temporary files: .NAME.<random>.tmp beside NAME
# A lock attempt retries this long: a probe (RunDir.check_unlocked) holds the lock for microseconds.
_LOCK_PATIENCE_S = 0.25
_HASH_CHUNK = 1 << 20
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # no descriptor (and no lock) leaks into an exec'd child


class RunDirError(ValueError):
    """A run directory or one of its files that cannot be read; the message names the file (and line)."""


class RunLockedError(RunDirError):
    """Another process trains in this run directory; the message names the directory and its PID."""


class RunWriteError(OSError):
    """A file of a run could not be written (disk full, permissions, ...); the message names the path and
    the reason in words and says that the previous file is untouched. ``errno`` is the underlying error's."""

    @classmethod
    def of(cls, path: Path, exc: BaseException, *, what: str = "", advice: str = "") -> RunWriteError:
        """The error for a failed write of ``path`` (``what`` names its kind, ``advice`` ends the
        message). The reason is the OS error's text, also when it hides inside another error:
        ``torch.save`` reports a failed write as a RuntimeError ("unexpected pos ...") whose
        ``__context__`` is the OS error."""
        cause: BaseException | None = exc
        while cause is not None and not (isinstance(cause, OSError) and cause.errno is not None):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, OSError):
            text = cause.strerror or os.strerror(cause.errno)
            reason = text[:1].lower() + text[1:]  # "no space left on device"
        else:
            reason = str(exc)
        kept = "the previous file is untouched" if path.exists() else "no earlier file existed"
        error = cls(f"could not write {what}{path}: {reason}; {kept}{advice}")
        error.errno = cause.errno if isinstance(cause, OSError) else None
        return error


def _create_temp(path: Path) -> tuple[int, Path]:
    # os.open with 0o666 lets the kernel apply the umask, like any file a user creates (mkstemp: 0600).
    for _ in range(16):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def _fsync_directory(directory: Path) -> None:
    # A rename is durable only once the directory entry is on disk (POSIX); Windows has no O_DIRECTORY.
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; on leaving the block it replaces ``path``
    whole (fsync, ``os.replace``, fsync of the directory), and on an error it vanishes.

    A crash at any moment leaves either the old file or the new one, never part of one; a ``kill -9``
    mid-write leaves the temporary ``.NAME.<random>.tmp``, which :meth:`RunDir.remove_partial_writes`
    clears. The new file's mode follows the umask. OS errors propagate as they are (callers word them).

    Example
    -------
    >>> with atomic_writer("runs/x/summary.json") as f:  # doctest: +SKIP
    ...     f.write(b"{}\n")
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _write_text_atomic(path: Path, text: str) -> None:
    try:
        with atomic_writer(path) as f:
            f.write(text.encode())
    except OSError as exc:
        raise RunWriteError.of(path, exc) from exc


def _parsed_json(path: Path) -> Any:
    """The JSON value in ``path``, or None when it does not parse (the caller says what it should hold)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex: a run's teacher fingerprint.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.

    Example
    -------
    >>> file_sha256("download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth")  # doctest: +SKIP
    '3a1f...'
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    return digest.hexdigest()


class RunLock:
    """The exclusive lock :meth:`RunDir.lock` took: held until :meth:`release` (or the end of a
    ``with`` block), and dropped by the kernel when the process dies, however it dies."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunState(str, Enum):
    """Where a run directory stands."""

    NEW = "new"  # no checkpoint: train from scratch
    PARTIAL = "partial"  # a last.pt short of the last epoch: resume it
    DONE = "done"  # every epoch recorded in metrics.jsonl: skip it


@dataclass(frozen=True)
class RunDir:
    """One run directory: its files' names, the JSON ones written and read. Under DDP only rank 0
    writes (the trainer calls the writing methods through ``DistContext.on_main``)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # accept str and os.PathLike too

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def teacher(self) -> Path:
        return self.path / "teacher.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def run_info(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def steps_csv(self) -> Path:
        return self.path / "steps.csv"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def wandb_dir(self) -> Path:
        """Where W&B keeps the run (``wandb.init(dir=run.path)`` makes this folder)."""
        return self.path / "wandb"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def job_config(self) -> Path:
        return self.path / "job.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    def is_run(self) -> bool:
        """Whether the directory holds a run's ``config.json`` or ``metrics.jsonl``."""
        return self.config.is_file() or self.metrics.is_file()

    # ------------------------------------------------------------------------------------------ locking

    def lock(self) -> RunLock:
        """Take the directory's exclusive lock (creating the directory), for as long as this process
        trains in it: two processes writing one run would interleave their records and checkpoints.

        An OS lock (``flock`` on ``.lock``), so the kernel releases it when the process ends, ``kill -9``
        included; the holder's PID is written into the file for the message others get. On platforms
        without ``fcntl`` (Windows) no lock is taken.

        Raises
        ------
        RunLockedError
            Another process holds it; the message names the directory and that process's PID.

        Example
        -------
        >>> with RunDir("runs/x").lock():  # doctest: +SKIP
        ...     ...  # train
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return RunLock(self.lock_file, None)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o666)
        deadline = time.monotonic() + _LOCK_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RunLockedError(self._locked_message()) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return RunLock(self.lock_file, fd)

    def check_unlocked(self) -> None:
        """Raise :class:`RunLockedError` if a process holds :meth:`lock` now (``sld reproduce`` asks
        before it starts anything); a directory that does not exist is unlocked.

        Example
        -------
        >>> RunDir("runs/reproduce/resnet56-resnet20/kd/seed0").check_unlocked()  # doctest: +SKIP
        """
        if fcntl is None or not self.lock_file.is_file():
            return
        fd = os.open(self.lock_file, os.O_RDONLY | _CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: never blocks another probe
            except BlockingIOError:
                raise RunLockedError(self._locked_message()) from None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _locked_message(self) -> str:
        try:
            pid = self.lock_file.read_text().strip()
        except OSError:
            pid = ""
        holder = f"PID {pid}" if pid.isdigit() else "PID unknown"
        return (
            f"{self.path} is in use by another sld process ({holder}): two runs in one directory would mix "
            "their records and checkpoints; wait for it to finish, stop it, or choose another --out directory"
        )

    # ---------------------------------------------------------------------------------------- writing

    def write_config(self, config: TrainConfig) -> None:
        """``config.json``, atomically (:func:`harness.config.train_config_to_dict` as indented JSON)."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(self.config, json.dumps(train_config_to_dict(config), indent=2) + "\n")

    def write_metrics(self, records: Iterable[dict[str, Any]]) -> None:
        """``metrics.jsonl`` rewritten whole and atomically with ``records`` (epochs 1, 2, ...): a crash
        never leaves a torn line, and readers never see a half-written file."""
        _write_text_atomic(self.metrics, "".join(json.dumps(record) + "\n" for record in records))

    def write_job_config(self, config: TrainConfig) -> None:
        """``job.json``, atomically: the config a launcher hands to the run's own process (the trainer
        itself writes ``config.json`` when it starts, after its checks)."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(self.job_config, json.dumps(train_config_to_dict(config), indent=2) + "\n")

    def write_teacher(self, record: dict[str, Any]) -> None:
        _write_text_atomic(self.teacher, json.dumps(record, indent=2) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_text_atomic(self.summary, json.dumps(summary, default=str, indent=2) + "\n")

    def write_run_info(self, info: dict[str, Any]) -> None:
        """``run.json``, atomically (see :meth:`begin_session`)."""
        _write_text_atomic(self.run_info, json.dumps(info, indent=2) + "\n")

    def begin_session(self, environment: dict[str, Any], *, started: str, first_epoch: int,
                      resumed: bool) -> dict[str, Any]:
        """Record in ``run.json`` that a session (a start, or a ``--resume``) begins training at
        ``first_epoch``, with its ``environment`` (git commit, package versions, device: what
        reproducing it needs); returns the whole record.

        ``run.json`` holds ``started`` (the first recorded session's start; ``None`` for a run begun by
        a version that wrote no ``run.json``), ``ended`` (when the last epoch was done; ``None`` until
        then) and ``sessions``, one object per session: ``started``, ``ended``, ``status``
        (``running``, then ``finished`` / ``stopped`` / ``interrupted`` / ``failed``), ``first_epoch``,
        ``last_epoch`` and the environment. A new run (``resumed=False``) starts a new file.

        Raises
        ------
        RunDirError
            A resumed run's ``run.json`` cannot be read (the message names it).

        Example
        -------
        >>> RunDir("runs/x").begin_session({"git_commit": "unknown"}, started="2025-01-01T00:00:00+00:00",
        ...                                first_epoch=1, resumed=False)  # doctest: +SKIP
        """
        info = self.read_run_info() if resumed else None
        if info is None:
            info = {"started": None if resumed else started, "ended": None, "sessions": []}
        info["ended"] = None
        info["sessions"].append(
            {"started": started, "ended": None, "status": "running", "first_epoch": first_epoch,
             "last_epoch": None, **environment}
        )
        self.write_run_info(info)
        return info

    def end_session(self, *, ended: str, status: str, last_epoch: int) -> None:
        """Close the session :meth:`begin_session` opened: its end time, ``status`` and the last epoch
        it recorded; a ``finished`` session also sets the run's ``ended``."""
        info = self.read_run_info()
        if info is None or not info.get("sessions"):
            raise RunDirError(f"{self.run_info}: no session to end (begin_session writes one first)")
        info["sessions"][-1].update({"ended": ended, "status": status, "last_epoch": last_epoch})
        if status == "finished":
            info["ended"] = ended
        self.write_run_info(info)

    def write_metrics_csv(self, records: Iterable[dict[str, Any]]) -> None:
        """``metrics.csv`` rewritten whole and atomically: one row per record, one column per key (in
        the order the keys first appear), like ``metrics.jsonl``, which it mirrors."""
        records = list(records)
        columns = list(dict.fromkeys(key for record in records for key in record))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        _write_text_atomic(self.metrics_csv, text.getvalue())

    def append_steps(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows of :data:`STEP_COLUMNS` to ``steps.csv`` (the header first when the file is new).
        A log, appended to rather than rewritten: a crash may cut its last line, which
        :meth:`trim_steps` drops when the run resumes."""
        new = not self.steps_csv.is_file() or self.steps_csv.stat().st_size == 0
        try:
            with self.steps_csv.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS, lineterminator="\n")
                if new:
                    writer.writeheader()
                writer.writerows(rows)
        except OSError as exc:
            raise RunWriteError.of(self.steps_csv, exc) from exc

    def trim_steps(self, last_epoch: int) -> None:
        """Keep the rows of ``steps.csv`` up to ``last_epoch`` (the epoch a resumed run's ``last.pt``
        holds), dropping those of an epoch a crash cut short and a torn last line."""
        if not self.steps_csv.is_file():
            return
        kept = []
        with self.steps_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                try:
                    epoch = int(row["epoch"])
                    float(row["loss"]), float(row["lr"]), int(row["step"])
                except (KeyError, TypeError, ValueError):
                    continue  # a line a crash cut short
                if epoch <= last_epoch:
                    kept.append({k: row[k] for k in STEP_COLUMNS})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=STEP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        _write_text_atomic(self.steps_csv, text.getvalue())

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files :func:`atomic_writer` leaves when killed mid-write; returns them.

        Only while holding :meth:`lock` (the trainer calls it when it starts): another process's
        temporary file would be a write in progress."""
        names = (self.config, self.metrics, self.last, self.best, self.teacher, self.summary,
                 self.run_info, self.metrics_csv, self.steps_csv, self.job_config)
        stale = [
            p
            for name in names
            for p in self.path.glob(f".{name.name}.*{TEMP_SUFFIX}")
            if p.is_file()
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def recover_metrics(self, epoch: int, history: list[dict[str, Any]] | None) -> str | None:
        """Make ``metrics.jsonl`` hold exactly the records of epochs ``1..epoch``, the ones ``last.pt``
        holds, before a resumed run appends to it; returns what was repaired (a message naming the
        file), or None when the file already was right.

        ``history`` is the copy of the records that ``last.pt`` keeps: with it the file is rebuilt
        whatever happened to it (a torn last line, records lost or written past the checkpoint, an empty
        or deleted file). Checkpoints of older versions keep none; then the file's own records are
        used: a torn last line is dropped, records past ``epoch`` too.

        Raises
        ------
        RunDirError
            Without ``history``: a line before the last is unreadable, or records of epochs up to
            ``epoch`` are missing; the message names the file and what is lost.

        Example
        -------
        >>> state = TrainState.from_payload(load_checkpoint(run.last))  # doctest: +SKIP
        >>> run.recover_metrics(state.epoch, state.history)  # doctest: +SKIP
        'runs/x/metrics.jsonl: its last line was cut short (...); rewrote epochs 1-2 from runs/x/last.pt'
        """
        try:
            unreadable = None
            on_disk, torn = [], None
            if self.metrics.is_file():
                on_disk, torn = _read_records(self.metrics, torn_tail_ok=True)
        except RunDirError as exc:
            if history is None:
                raise
            on_disk, torn, unreadable = [], None, str(exc)
        if history is not None:
            wanted = list(history[:epoch])
            if len(wanted) != epoch:
                raise RunDirError(f"{self.last}: holds epoch {epoch} but only {len(wanted)} records")
            if wanted == on_disk and torn is None and unreadable is None:
                return None
            self.write_metrics(wanted)
            if unreadable is not None:
                why = f"it could not be read ({unreadable})"
            elif torn is not None:
                why = "its last line was cut short (a crash while it was written)"
            elif len(on_disk) > epoch:
                why = f"it held records past epoch {epoch}, the one {self.last.name} holds"
            elif len(on_disk) < epoch:
                why = f"it held {len(on_disk)} of the {epoch} records {self.last.name} holds"
            else:
                why = f"its records differed from those {self.last.name} holds"
            return f"{self.metrics}: {why}; rewrote epochs 1-{epoch} from {self.last}"
        if len(on_disk) < epoch:
            raise RunDirError(
                f"{self.metrics} holds {len(on_disk)} record(s) but {self.last} is at epoch {epoch}, and "
                "that checkpoint (from an older version) keeps no copy of them: the records of epochs "
                f"{len(on_disk) + 1}-{epoch} are lost; start the run again in a new --out directory"
            )
        if torn is None and len(on_disk) == epoch:
            return None
        self.write_metrics(on_disk[:epoch])
        parts = []
        if torn is not None:
            parts.append("dropped its last line, cut short by a crash while it was written")
        if len(on_disk) > epoch:
            parts.append(f"dropped the records past epoch {epoch}, the one {self.last.name} holds")
        return f"{self.metrics}: {'; '.join(parts)}"

    # ---------------------------------------------------------------------------------------- reading

    def read_config(self) -> TrainConfig:
        """The run's ``config.json``; :class:`harness.config.ConfigError` names the file if it is bad."""
        return load_config(self.config)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The checked records of ``metrics.jsonl`` (see :func:`read_metrics`)."""
        return read_metrics(self.metrics)

    def read_run_info(self) -> dict[str, Any] | None:
        """``run.json`` as a dict (see :meth:`begin_session`), or None when the run has none.

        Raises
        ------
        RunDirError
            The file is not a JSON object with a ``sessions`` list.
        """
        if not self.run_info.is_file():
            return None
        info = _parsed_json(self.run_info)
        if not isinstance(info, dict) or not isinstance(info.get("sessions"), list):
            raise RunDirError(
                f"{self.run_info}: not a run's {self.run_info.name} (a JSON object with a 'sessions' list); "
                "delete it to start its record afresh"
            )
        return info

    def read_teacher(self) -> dict[str, Any] | None:
        """``teacher.json`` as a dict, or None when the run has none."""
        if not self.teacher.is_file():
            return None
        record = _parsed_json(self.teacher)
        if not isinstance(record, dict):
            raise RunDirError(f"{self.teacher}: not a JSON object (a run's {self.teacher.name})")
        return record

    def teacher_top1(self) -> float | None:
        """``teacher_top1`` of ``teacher.json``, else of ``summary.json`` (runs written before
        teacher.json existed); None when neither file has it."""
        for path in (self.teacher, self.summary):
            if path.is_file():
                try:
                    value = json.loads(path.read_text()).get("teacher_top1")
                except (json.JSONDecodeError, AttributeError):
                    raise RunDirError(f"{path}: not a JSON object (a run's {path.name})") from None
                return float(value) if isinstance(value, (int, float)) else None
        return None

    def state(self) -> RunState:
        """:class:`RunState` from ``last.pt``, ``config.json``, ``metrics.jsonl`` and ``summary.json``:
        done once every epoch is recorded and the summary written (a run killed after its last
        checkpoint but before its summary is partial: resuming it repairs and finishes it). A torn last
        line of ``metrics.jsonl`` counts as not recorded (resuming repairs it).

        Raises
        ------
        RunDirError, ConfigError
            The config or metrics of an existing run cannot be read (the message names the file and line).
        """
        if not self.last.is_file():
            return RunState.NEW
        epochs = self.read_config().optim.epochs
        done = len(_read_records(self.metrics, torn_tail_ok=True)[0]) if self.metrics.is_file() else 0
        return RunState.DONE if done >= epochs and self.summary.is_file() else RunState.PARTIAL

    def load(self) -> Run:
        """The run as read from disk: ``config.json``, ``metrics.jsonl`` and (if present) the teacher's
        accuracy.

        Raises
        ------
        RunDirError
            A file is missing or unreadable, or no epoch was recorded; the message names the file.
        """
        try:
            config = self.read_config()
        except ConfigError as exc:
            raise RunDirError(str(exc)) from None
        records = self.read_metrics()
        if not records:
            raise RunDirError(f"{self.metrics}: no epoch recorded yet")
        return Run(self.path, config, tuple(records), self.teacher_top1())


@dataclass(frozen=True)
class Run:
    """One run as read from disk (:meth:`RunDir.load`). Accuracies are fractions, as in
    ``metrics.jsonl``."""

    run_dir: Path
    config: TrainConfig
    records: tuple[dict[str, Any], ...]  # one per epoch, in epoch order
    teacher_top1: float | None = None  # from teacher.json (or an older run's summary.json); None for "ce"

    @property
    def epochs_done(self) -> int:
        return int(self.records[-1]["epoch"]) if self.records else 0

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.config.optim.epochs

    @property
    def best_top1(self) -> float:
        """Best-epoch test top-1: the community protocol behind the published numbers."""
        return max(float(r["test_top1"]) for r in self.records)

    @property
    def last_top1(self) -> float:
        return float(self.records[-1]["test_top1"])


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, checked: JSON objects with an ``epoch`` and a numeric
    ``test_top1``, epochs 1, 2, 3, ... in order.

    Raises
    ------
    RunDirError
        The file is missing, or a line is not such a record; the message names the file and line.
    """
    return _read_records(Path(path), torn_tail_ok=False)[0]


def _read_records(path: Path, *, torn_tail_ok: bool) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`read_metrics`, and with ``torn_tail_ok`` a last line that is not valid JSON and lacks its
    newline (what a crash in the middle of appending it leaves) is left out and returned as the second
    value instead of raising."""
    if not path.is_file():
        raise RunDirError(f"{path}: no such metrics file (is {path.parent} a finished run directory?)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: cannot be read ({exc})") from None
    lines = text.splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail_ok and number == len(lines) and not text.endswith("\n"):
                return records, line
            raise RunDirError(f"{where}: not valid JSON ({exc.msg}): {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in ("epoch", "test_top1"):
            value = record.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise RunDirError(f"{where}: {key!r} must be a number; got {value!r}")
        if record["epoch"] != len(records) + 1:
            raise RunDirError(f"{where}: expected epoch {len(records) + 1}, got {record['epoch']!r}")
        records.append(record)
    return records, None


def epoch_record(
    *,
    epoch: int,
    lr: float,
    sums: dict[str, float],
    views: int,
    test: tuple[float, float],
    best: float,
    epoch_time_s: float,
    images_per_s: float,
    test_loss: float | None = None,
) -> dict[str, Any]:
    """One epoch's ``metrics.jsonl`` record from the trainer's epoch ``sums``: ``rows`` (images),
    ``train_correct`` (weak-view hits), ``student_swaps`` and, with a teacher, ``teacher_swaps`` (rows
    the swap changes, over all ``views``; ``teacher_processed``: the rows a conditional swap changes),
    and every loss term times the rows. Loss terms become means
    per image (summed over the views), swap counts rates per view-row, accuracies fractions;
    ``test_loss`` (the mean cross-entropy on the test set) follows the test accuracies."""
    rows = sums["rows"]
    record: dict[str, Any] = {"epoch": epoch, "lr": lr}
    record.update({name: value / rows for name, value in sums.items() if name not in _COUNTS})
    if "teacher_swaps" in sums:
        record["teacher_swap_rate"] = sums["teacher_swaps"] / (rows * views)
    if "teacher_processed" in sums:  # the conditional swap's share of the rows, beside the swap's
        record["teacher_processed_rate"] = sums["teacher_processed"] / (rows * views)
    record["student_swap_rate"] = sums["student_swaps"] / (rows * views)
    record["train_top1"] = sums["train_correct"] / rows
    record.update(
        {
            "test_top1": test[0],
            "test_top5": test[1],
            **({} if test_loss is None else {"test_loss": test_loss}),
            "best_test_top1": best,
            "epoch_time_s": epoch_time_s,
            "images_per_s": images_per_s,
        }
    )
    return record


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run directories named by ``paths``: each path is a run (it holds ``config.json`` or
    ``metrics.jsonl``) or a folder searched recursively for runs. Order is kept, duplicates dropped.

    Raises
    ------
    RunDirError
        A path does not exist, or neither is nor contains a run.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise RunDirError(f"{path}: no such directory")
        if RunDir(path).is_run():
            found[path] = None
            continue
        below = sorted({p.parent for p in path.rglob(RunDir(path).metrics.name)})
        if not below:
            raise RunDirError(f"{path}: not a run directory (no metrics.jsonl) and no run directory below it")
        found.update(dict.fromkeys(below))
    return list(found)


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """:meth:`RunDir.load` of every run directory :func:`find_run_dirs` finds."""
    return [RunDir(d).load() for d in find_run_dirs(paths)]


def scan_runs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Like :func:`load_runs`, but one broken run (or a path that is no run) does not sink the others:
    returns the runs that load and, per one that does not, its path and the reason.

    Example
    -------
    >>> runs, broken = scan_runs(["runs/reproduce"])  # doctest: +SKIP
    >>> for path, reason in broken:  # doctest: +SKIP
    ...     print(path, reason)
    """
    runs: list[Run] = []
    broken: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        try:
            found = find_run_dirs([path])
        except RunDirError as exc:
            broken.append((path, str(exc)))
            continue
        for directory in found:
            try:
                runs.append(RunDir(directory).load())
            except (RunDirError, ConfigError, OSError) as exc:  # OSError: e.g. a file it may not read
                broken.append((directory, str(exc)))
    return runs, broken


def grid_run_dir(out_dir: str | os.PathLike[str], pair: str, method: str, seed: int) -> Path:
    """``OUT/<pair>/<method>/seed<k>``: where one ``sld reproduce`` grid run lives."""
    return Path(out_dir) / pair / method / f"seed{seed}"


class TeacherNotFoundError(FileNotFoundError):
    """No checkpoint for the teacher; the message says which command makes one."""


def teacher_run_dir(model: str, runs_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR) -> Path:
    """The run directory ``sld train-teacher --model MODEL`` writes to."""
    return Path(runs_dir) / "teachers" / model


def torch_hub_dir() -> Path:
    """Where torch keeps downloaded weight files (``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``): torchvision's ``pretrained=True`` looks there first."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def teacher_candidates(model: str, runs_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR) -> list[Path]:
    """Where a checkpoint for teacher ``model`` is looked for, in order: our own teacher run's
    ``best.pt``, then the published file of the first pair that uses it as teacher: mdistiller's
    community file for a CIFAR-100 teacher (in ``download_ckpts/``), torchvision's for an ImageNet one
    (the official code loads it with ``pretrained=True``) in torch's download cache, then in
    ``download_ckpts/``."""
    candidates = [teacher_run_dir(model, runs_dir) / "best.pt"]
    pair = _teaching_pair(model)
    if pair is not None and pair.dataset == "imagenet":
        candidates.append(torch_hub_dir() / pair.teacher_checkpoint)
    if pair is not None:
        candidates.append(pair.teacher_checkpoint_path(MDISTILLER_CKPT_DIR))
    return candidates


def published_teacher_file(model: str) -> str | None:
    """The file name of torchvision's published weights for an ImageNet teacher ``model``: they are
    fetched, never trained here; ``None`` for other models."""
    pair = _teaching_pair(model)
    return pair.teacher_checkpoint if pair is not None and pair.dataset == "imagenet" else None


def _teaching_pair(model: str) -> Any:
    return next((pair for pair in ALL_PAIRS.values() if pair.teacher == model), None)


def find_teacher(model: str, runs_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR) -> Path:
    """The first existing teacher checkpoint of :func:`teacher_candidates`.

    Raises
    ------
    TeacherNotFoundError
        None exists; the message lists where it looked and how to get one: the file to fetch for an
        ImageNet teacher, the command that trains a CIFAR one.
    """
    candidates = teacher_candidates(model, runs_dir)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    name = published_teacher_file(model)
    if name is not None:
        raise TeacherNotFoundError(
            f"no checkpoint for teacher {model!r} (looked in: {looked}). The official code uses "
            f"torchvision's published weights: fetch {TORCHVISION_WEIGHTS_URL}{name} into "
            f"{torch_hub_dir()}/ (where torchvision keeps it), or pass its path: {_by_path(model)}"
        )
    runs_flag = "" if str(runs_dir) == DEFAULT_RUNS_DIR else f" --runs-dir {runs_dir}"
    raise TeacherNotFoundError(
        f"no checkpoint for teacher {model!r} (looked in: {looked}). Train one with:\n"
        f"    sld train-teacher --model {model}{runs_flag}\n"
        f"or untar mdistiller's cifar_teachers.tar ({MDISTILLER_TEACHERS_URL}) into {MDISTILLER_CKPT_DIR}/, "
        f"or pass its path: {_by_path(model)}"
    )


def _by_path(model: str) -> str:
    return f"sld train --teacher PATH, sld reproduce --teacher {model}=PATH"
