"""The run directory and the runs tree: the one place their file names and formats are spelled.

A run directory (``sld train --out DIR``, one grid cell of ``sld reproduce``) holds::

    config.json     the resolved TrainConfig (``sld train --config DIR/config.json`` repeats the run)
    metrics.jsonl   one JSON object per epoch, epochs 1, 2, 3, ...: every loss term, swap rates, lr,
                    accuracies (fractions), speed
    last.pt         training checkpoint after every epoch (``--resume`` continues from it)
    best.pt         training checkpoint of the epoch with the best test top-1
    teacher.json    the teacher's test top-1 and training-set error, written when the run (re)starts
    summary.json    best and last accuracy, the teacher's accuracy, when the run finishes

:class:`RunDir` names those files, writes the JSON ones (rank 0 only; the checkpoints' payload is
``harness.train.checkpoint``'s) and reads them back; :meth:`RunDir.state` says whether a run is new,
partial or done, and :meth:`RunDir.load` gives a :class:`Run` (a run as read from disk) for reports.
The runs tree: ``sld train-teacher`` writes a teacher to ``<runs>/teachers/<model>/`` and ``sld train``
looks there (then in mdistiller's ``download_ckpts/`` layout) when ``--teacher`` is not given. Paths are
relative to the working directory unless ``--runs-dir`` says otherwise. No torch here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from harness.config import ConfigError, TrainConfig, load_config, save_config
from harness.pairs import ALL_PAIRS

__all__ = [
    "ACCURACY_KEYS",
    "BOOKKEEPING_KEYS",
    "DEFAULT_RUNS_DIR",
    "MDISTILLER_CKPT_DIR",
    "Run",
    "RunDir",
    "RunDirError",
    "RunState",
    "TeacherNotFoundError",
    "find_run_dirs",
    "epoch_record",
    "find_teacher",
    "grid_run_dir",
    "load_runs",
    "read_metrics",
    "SWAP_KEYS",
    "published_teacher_file",
    "teacher_candidates",
    "teacher_run_dir",
    "torch_hub_dir",
]

DEFAULT_RUNS_DIR = "runs"
# The keys of a metrics.jsonl record besides the loss terms (every other numeric key is one).
ACCURACY_KEYS = ("test_top1", "test_top5", "train_top1")
SWAP_KEYS = ("teacher_swap_rate", "teacher_processed_rate", "student_swap_rate")
BOOKKEEPING_KEYS = ("epoch", "lr", "best_test_top1", "epoch_time_s", "images_per_s")
# Counters among the trainer's epoch sums (epoch_record turns them into rates).
_COUNTS = ("rows", "teacher_swaps", "teacher_processed", "student_swaps", "train_correct")
MDISTILLER_CKPT_DIR = "download_ckpts"  # where mdistiller's README untars cifar_teachers.tar
MDISTILLER_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"  # the ImageNet teachers' files


class RunDirError(ValueError):
    """A run directory or one of its files that cannot be read; the message names the file (and line)."""


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

    def is_run(self) -> bool:
        """Whether the directory holds a run's ``config.json`` or ``metrics.jsonl``."""
        return self.config.is_file() or self.metrics.is_file()

    # ---------------------------------------------------------------------------------------- writing

    def write_config(self, config: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(config, self.config)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop records after ``last_epoch`` (written before a crash that lost their checkpoint)."""
        if not self.metrics.is_file():
            return
        kept = [
            line
            for line in self.metrics.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] <= last_epoch
        ]
        self.metrics.write_text("".join(line + "\n" for line in kept))

    def write_teacher(self, record: dict[str, Any]) -> None:
        self.teacher.write_text(json.dumps(record, indent=2) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary.write_text(json.dumps(summary, default=str, indent=2) + "\n")

    # ---------------------------------------------------------------------------------------- reading

    def read_config(self) -> TrainConfig:
        """The run's ``config.json``; :class:`harness.config.ConfigError` names the file if it is bad."""
        return load_config(self.config)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The checked records of ``metrics.jsonl`` (see :func:`read_metrics`)."""
        return read_metrics(self.metrics)

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
        """:class:`RunState` from ``last.pt``, ``config.json`` and ``metrics.jsonl``.

        Raises
        ------
        RunDirError, ConfigError
            The config or metrics of an existing run cannot be read (the message names the file and line).
        """
        if not self.last.is_file():
            return RunState.NEW
        epochs = self.read_config().optim.epochs
        done = len(self.read_metrics()) if self.metrics.is_file() else 0
        return RunState.DONE if done >= epochs else RunState.PARTIAL

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
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: no such metrics file (is {path.parent} a finished run directory?)")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
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
    return records


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
) -> dict[str, Any]:
    """One epoch's ``metrics.jsonl`` record from the trainer's epoch ``sums``: ``rows`` (images),
    ``train_correct`` (weak-view hits), ``student_swaps`` and, with a teacher, ``teacher_swaps`` (rows
    the swap changes, over all ``views``; ``teacher_processed``: the rows a conditional swap changes),
    and every loss term times the rows. Loss terms become means
    per image (summed over the views), swap counts rates per view-row, accuracies fractions."""
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
            f"{torch_hub_dir()}/ (where torchvision keeps it), or pass --teacher PATH"
        )
    runs_flag = "" if str(runs_dir) == DEFAULT_RUNS_DIR else f" --runs-dir {runs_dir}"
    raise TeacherNotFoundError(
        f"no checkpoint for teacher {model!r} (looked in: {looked}). Train one with:\n"
        f"    sld train-teacher --model {model}{runs_flag}\n"
        f"or untar mdistiller's cifar_teachers.tar ({MDISTILLER_TEACHERS_URL}) into {MDISTILLER_CKPT_DIR}/, "
        "or pass --teacher PATH"
    )
