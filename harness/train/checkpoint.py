"""Training checkpoints: one :class:`TrainState` per epoch, atomic writes, ``weights_only`` loads,
every RNG state, clear errors.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(weights_only=True)``
reads it without unpickling arbitrary objects (:meth:`TrainState.to_payload`)::

    {"format": "sld-train", "version": 1, "model": state_dict, "optimizer": ..., "scheduler": ...,
     "scaler": ..., "epoch": int, "best_acc": float, "best_epoch": int, "config": dict, "rng": dict,
     "world_size": int, "history": [record, ...], "teacher_sha256": str | None}

The ``"model"`` key is the one mdistiller's community teacher files use, so a teacher trained here
loads through ``harness.models.load_weights`` exactly like a downloaded one.

``last.pt`` is a run's commit point: it keeps the ``metrics.jsonl`` records of its epochs
(``history``) and the teacher's fingerprint, so a resumed run rebuilds ``metrics.jsonl``
(:meth:`harness.runs.RunDir.recover_metrics`) and ``best.pt`` (:func:`repair_best`) from it and
refuses a teacher file that changed (:func:`check_teacher`).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import (
    ConfigError,
    TrainConfig,
    resume_conflicts,
    train_config_from_dict,
    upgrade_config_dict,
)
from harness.models import CheckpointError, load_weights
from harness.models.weights import read_checkpoint
from harness.runs import RunDir, RunWriteError, atomic_writer

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointWriteError",
    "TrainState",
    "capture_rng",
    "check_teacher",
    "checkpoint_config",
    "checkpoint_model_name",
    "load_checkpoint",
    "load_model_state",
    "load_resume_state",
    "repair_best",
    "restore_rng",
    "resume_config",
    "save_checkpoint",
    "stored_config",
]

CHECKPOINT_FORMAT = "sld-train"
_VERSION = 1
_REQUIRED = ("model", "optimizer", "scheduler", "scaler", "epoch", "best_acc", "config", "rng")


@dataclass(frozen=True)
class TrainState:
    """Everything a run needs to continue after an epoch: the checkpoint's contents, typed.

    ``model`` is the unwrapped module's state_dict (never DDP's or torch.compile's), so any world size
    loads any other's; ``world_size`` is informational."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    epoch: int  # the last complete epoch
    best_acc: float  # best test top-1 so far (fraction; -1 before the first evaluation)
    best_epoch: int
    config: dict[str, Any]  # harness.config.train_config_to_dict of the run's config
    rng: dict[str, Any]  # capture_rng(...)
    world_size: int = 1
    # The metrics.jsonl records of epochs 1..epoch: resuming rebuilds metrics.jsonl from them. None in
    # checkpoints of older versions.
    history: list[dict[str, Any]] | None = None
    teacher_sha256: str | None = None  # the teacher file's fingerprint when the run started; None for ce

    def to_payload(self) -> dict[str, Any]:
        """The dict :func:`save_checkpoint` writes (the format tag is added there)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> TrainState:
        """Inverse of :meth:`to_payload`, for a dict :func:`load_checkpoint` checked; checkpoints from
        before ``best_epoch``/``world_size``/``history``/``teacher_sha256`` were recorded read as 0, 1,
        None and None."""
        return cls(
            **{name: data[name] for name in _REQUIRED},
            best_epoch=data.get("best_epoch", 0),
            world_size=data.get("world_size", 1),
            history=data.get("history"),
            teacher_sha256=data.get("teacher_sha256"),
        )


class CheckpointWriteError(RunWriteError):
    """A checkpoint could not be written (disk full, permissions, ...); the previous file at that path
    is untouched and the partial copy was removed. ``errno`` is the underlying error's."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format tag) to ``path`` atomically (:func:`harness.runs.atomic_writer`).

    The bytes go to a temporary file in the same directory, are fsynced, then ``os.replace``-d over
    ``path``: a crash at any moment leaves either the old checkpoint or the new one, never half of one
    (a ``kill -9`` mid-write can leave the temporary file, which
    :meth:`harness.runs.RunDir.remove_partial_writes` clears). The file's mode follows the umask.

    Raises
    ------
    CheckpointWriteError
        The write failed (e.g. ``ENOSPC``); the message names the path and the reason in words ("no space
        left on device") and says the old file is intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as f:
            torch.save({"format": CHECKPOINT_FORMAT, "version": _VERSION, **payload}, f)
    except (OSError, RuntimeError) as exc:
        # RuntimeError: how torch.save reports a failed write (RunWriteError.of finds the OS error in it).
        raise _write_error(path, exc) from exc


def _write_error(path: Path, exc: BaseException) -> RunWriteError:
    return CheckpointWriteError.of(
        path,
        exc,
        what="checkpoint ",
        advice=" and the partial copy was removed. Free some space (or fix the permissions) and resume "
        "with --resume",
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU (``weights_only=True``).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        The file is unreadable/corrupt, or not a training checkpoint of this harness (wrong format
        tag or version, missing entries).
    """
    path = Path(path)
    data = read_checkpoint(path)
    if not _is_ours(data):
        raise CheckpointError(
            f"{path}: not an `sld train` checkpoint (no format tag {CHECKPOINT_FORMAT!r}); "
            "teacher weights such as mdistiller's files go to --teacher instead"
        )
    if data.get("version") != _VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {data.get('version')!r}; this code reads {_VERSION}"
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return data


def checkpoint_model_name(path: str | os.PathLike[str]) -> str | None:
    """The student model name stored in an ``sld train`` checkpoint; ``None`` for other files (such as
    mdistiller's teachers), which do not record it."""
    config = checkpoint_config(path)
    return None if config is None else config.student


def checkpoint_config(path: str | os.PathLike[str]) -> TrainConfig | None:
    """The run config stored in an ``sld train`` checkpoint (model, data set and its recorded class
    list, ...); ``None`` for other files (mdistiller's or torchvision's weights)."""
    data = read_checkpoint(path)
    if not _is_ours(data):
        return None
    try:
        return train_config_from_dict(data["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config is invalid: {exc}") from None


def _is_ours(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT


def load_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str]
) -> None:
    """Strict ``load_state_dict`` through ``harness.models.load_weights``, naming ``path`` in the error
    (the usual cause of a mismatch: a checkpoint of another architecture)."""
    try:
        load_weights(model, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from, as tensors and plain values (``weights_only``-safe):
    Python's ``random``, NumPy's global state, torch CPU, every CUDA device (if initialized), and
    the training generator that shuffles batches and draws augmentations."""
    # The legacy global state on purpose: it is what third-party code calling np.random.* draws from.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        # The run may resume on fewer GPUs than it was saved on (a smaller world size).
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def stored_config(path: str | os.PathLike[str]) -> TrainConfig:
    """The config an ``sld train`` checkpoint was saved with: what ``--resume`` continues.

    Raises
    ------
    FileNotFoundError, CheckpointError
        No such file, or not a readable training checkpoint.
    ConfigError
        The stored config is invalid.

    Example
    -------
    >>> stored_config("runs/x/last.pt").optim.lr  # doctest: +SKIP
    0.025
    """
    data = load_checkpoint(path)
    try:
        return train_config_from_dict(data["config"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: its stored config is invalid: {exc}") from None


def resume_config(run: RunDir) -> TrainConfig:
    """The config ``--resume`` continues the run in ``run`` with: the one its ``last.pt`` was saved
    with (``config.json`` may have been edited since), else ``config.json`` when ``last.pt`` is missing
    or unreadable (the trainer then says what is wrong with it).

    Raises
    ------
    ConfigError
        The directory holds neither.

    Example
    -------
    >>> train(resume_config(RunDir("runs/x")), "cuda", resume=True)  # doctest: +SKIP
    """
    try:
        return stored_config(run.last)
    except (FileNotFoundError, CheckpointError, ConfigError):
        pass
    if not run.config.is_file():
        raise ConfigError(f"cannot resume: {run.config} does not exist (is {run.path} a run directory?)")
    return run.read_config()


def load_resume_state(run: RunDir, config: TrainConfig) -> TrainState:
    """The :class:`TrainState` in ``run.last`` that ``config`` may continue.

    A run whose ``last.pt`` holds its final epoch but which has no ``summary.json`` (killed between the
    two) is returned too: the trainer then repairs and finishes it without training.

    Raises
    ------
    ConfigError
        No ``last.pt``; its stored config is invalid or differs from ``config`` in a field outside
        :data:`harness.config.RESUMABLE_FIELDS` (the message lists them and says which command
        continues the run as it was started); or the run already finished.
    CheckpointError
        The file is not a readable training checkpoint (the message says whether ``best.pt`` is intact).
    """
    if not run.last.exists():
        raise ConfigError(
            f"cannot resume: {run.last} does not exist (the run stopped before its first epoch "
            "ended, or this is not a run directory); start it again without --resume"
        )
    try:
        state = TrainState.from_payload(load_checkpoint(run.last))
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {_best_fallback(run)}") from None
    try:
        saved = train_config_from_dict(upgrade_config_dict(state.config))
    except ConfigError as exc:
        raise ConfigError(f"{run.last}: its stored config is invalid: {exc}") from None
    # A class list the request leaves open is the run's (the trainer takes it from the checkpoint).
    open_fields = {"data.classes"} if config.data.classes is None else set()
    conflicts = resume_conflicts(saved, config, ignore=open_fields)
    if conflicts:
        raise ConfigError(
            f"cannot resume {run.path}: the requested config differs from the one the run was started with "
            f"({', '.join(conflicts)}); `sld train --out {run.path} --resume` continues it as it was "
            "started (leave out the flags or --config that change these fields), or choose another --out "
            "directory for the changed config"
        )
    if state.epoch >= config.optim.epochs and run.summary.is_file():
        raise ConfigError(f"{run.last} already finished all {config.optim.epochs} epochs; nothing to resume")
    return state


def _best_fallback(run: RunDir) -> str:
    """What a user whose ``last.pt`` is unreadable can do, depending on ``best.pt``."""
    try:
        epoch = int(load_checkpoint(run.best)["epoch"])
    except (FileNotFoundError, CheckpointError, KeyError, TypeError, ValueError):
        return f"{run.best.name} is missing or unreadable too: start the run again in a new --out directory"
    return (
        f"{run.best} (epoch {epoch}) is intact: copy it over {run.last.name} to resume from epoch {epoch} "
        f"(cp {run.best} {run.last}; the later epochs are trained again), or start a new --out directory"
    )


def check_teacher(state: TrainState, sha256: str | None, path: str | None, run: RunDir) -> None:
    """Refuse to resume with a teacher file other than the one the run started with.

    ``sha256`` is the fingerprint (:func:`harness.runs.file_sha256`) of the teacher at ``path`` now;
    ``state.teacher_sha256`` the one recorded when the run started (None in older checkpoints, which
    are accepted and fingerprinted from now on).

    Raises
    ------
    ConfigError
        The fingerprints differ; the message names the file and both fingerprints.

    Example
    -------
    >>> path = config.teacher_checkpoint  # doctest: +SKIP
    >>> check_teacher(state, file_sha256(path), path, run)  # doctest: +SKIP
    """
    recorded = state.teacher_sha256
    if recorded is None or sha256 is None or recorded == sha256:
        return
    raise ConfigError(
        f"cannot resume {run.path}: the teacher checkpoint {path} is not the file this run started with "
        f"(SHA-256 {recorded[:16]}... then, {sha256[:16]}... now); put the original file back, or start a "
        "new --out directory to distill from this teacher"
    )


def repair_best(run: RunDir, state: TrainState) -> str | None:
    """Make ``best.pt`` hold the best epoch ``last.pt`` (``state``) knows of, before a resumed run goes
    on; returns what was done (a message), or None when ``best.pt`` was right.

    ``last.pt`` is written before ``best.pt``, so a crash between the two writes of an epoch that set a
    new best leaves ``best.pt`` one best behind while ``last.pt`` *is* that epoch: it is copied over
    ``best.pt``. A ``best.pt`` of another epoch while the best one lies in the past cannot be rebuilt;
    the message says so (the run goes on; the next new best replaces it).

    Example
    -------
    >>> repair_best(run, TrainState.from_payload(load_checkpoint(run.last)))  # doctest: +SKIP
    'runs/x/best.pt held epoch 1 but the best epoch is 2, the one last.pt holds (...); copied last.pt over it'
    """
    try:
        held: int | None = int(load_checkpoint(run.best)["epoch"])
    except (FileNotFoundError, CheckpointError, KeyError, TypeError, ValueError):
        held = None  # missing or unreadable
    if state.best_epoch == 0 or held == state.best_epoch:
        return None
    described = "is missing or unreadable" if held is None else f"held epoch {held}"
    if state.best_epoch == state.epoch:
        try:
            with atomic_writer(run.best) as f, run.last.open("rb") as source:
                shutil.copyfileobj(source, f)
        except OSError as exc:
            raise _write_error(run.best, exc) from exc
        return (
            f"{run.best} {described} but the best epoch is {state.best_epoch}, the one {run.last.name} holds "
            f"(a crash between the two writes); copied {run.last.name} over it"
        )
    return (
        f"warning: {run.best} {described}, not the best epoch {state.best_epoch} that {run.last.name} "
        "records, and that epoch's weights are kept nowhere else; the run goes on, and its next new best "
        "replaces the file"
    )
