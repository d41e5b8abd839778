"""Training checkpoints: one :class:`TrainState` per epoch, atomic writes, ``weights_only`` loads,
every RNG state, clear errors.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(weights_only=True)``
reads it without unpickling arbitrary objects (:meth:`TrainState.to_payload`)::

    {"format": "sld-train", "version": 1, "model": state_dict, "optimizer": ..., "scheduler": ...,
     "scaler": ..., "epoch": int, "best_acc": float, "best_epoch": int, "config": dict, "rng": dict,
     "world_size": int}

The ``"model"`` key is the one mdistiller's community teacher files use, so a teacher trained here
loads through ``harness.models.load_weights`` exactly like a downloaded one.
"""

from __future__ import annotations

import os
import random
import tempfile
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
from harness.runs import RunDir

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointWriteError",
    "TrainState",
    "capture_rng",
    "checkpoint_config",
    "checkpoint_model_name",
    "load_checkpoint",
    "load_model_state",
    "load_resume_state",
    "remove_partial_writes",
    "restore_rng",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "sld-train"
_VERSION = 1
_REQUIRED = ("model", "optimizer", "scheduler", "scaler", "epoch", "best_acc", "config", "rng")
_TEMP_SUFFIX = ".tmp"


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

    def to_payload(self) -> dict[str, Any]:
        """The dict :func:`save_checkpoint` writes (the format tag is added there)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> TrainState:
        """Inverse of :meth:`to_payload`, for a dict :func:`load_checkpoint` checked; checkpoints from
        before ``best_epoch``/``world_size`` were recorded read as 0 and 1."""
        return cls(
            **{name: data[name] for name in _REQUIRED},
            best_epoch=data.get("best_epoch", 0),
            world_size=data.get("world_size", 1),
        )


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions, ...); the previous file at that path
    is untouched and the partial copy was removed. ``errno`` is the underlying error's."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format tag) to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are fsynced, then ``os.replace``-d over
    ``path``: a crash at any moment leaves either the old checkpoint or the new one, never half of one
    (a ``kill -9`` mid-write can leave the temporary file, which :func:`remove_partial_writes` clears).

    Raises
    ------
    CheckpointWriteError
        The write failed (e.g. ``ENOSPC``); the message names the path and says the old file is intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, "version": _VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as RuntimeError wrapping the OS error's text.
        if isinstance(exc, OSError | RuntimeError):
            raise _write_error(path, exc) from exc
        raise
    # The rename itself is durable only once the directory entry is on disk (POSIX).
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _write_error(path: Path, exc: BaseException) -> CheckpointWriteError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    kept = "the previous file is untouched" if path.exists() else "no earlier file existed"
    error = CheckpointWriteError(
        f"could not write checkpoint {path} ({reason}); {kept} and the partial copy was removed. "
        "Free some space (or fix the permissions) and resume with --resume"
    )
    error.errno = getattr(exc, "errno", None)
    return error


def remove_partial_writes(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files :func:`save_checkpoint` leaves when killed mid-write; returns them.

    Only for a run directory no other process is writing to (the trainer calls it when it starts).
    """
    stale = [p for p in Path(directory).glob(f".*.pt.*{_TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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


def load_resume_state(run: RunDir, config: TrainConfig) -> TrainState:
    """The :class:`TrainState` in ``run.last`` that ``config`` may continue.

    Raises
    ------
    ConfigError
        No ``last.pt``; its stored config is invalid or differs from ``config`` in a field outside
        :data:`harness.config.RESUMABLE_FIELDS` (the message lists them); or it already finished.
    CheckpointError
        The file is not a readable training checkpoint.
    """
    if not run.last.exists():
        raise ConfigError(
            f"cannot resume: {run.last} does not exist (the run stopped before its first epoch "
            "ended, or this is not a run directory); start it again without --resume"
        )
    state = TrainState.from_payload(load_checkpoint(run.last))
    try:
        saved = train_config_from_dict(upgrade_config_dict(state.config))
    except ConfigError as exc:
        raise ConfigError(f"{run.last}: its stored config is invalid: {exc}") from None
    # A class list the request leaves open is the run's (the trainer takes it from the checkpoint).
    open_fields = {"data.classes"} if config.data.classes is None else set()
    conflicts = resume_conflicts(saved, config, ignore=open_fields)
    if conflicts:
        raise ConfigError(
            f"cannot resume {run.last}: the config differs from the run's ({', '.join(conflicts)}); "
            f"resume with --config {run.config} or start a new --out directory"
        )
    if state.epoch >= config.optim.epochs:
        raise ConfigError(f"{run.last} already finished all {config.optim.epochs} epochs; nothing to resume")
    return state
