"""Loading state dicts into the zoo's models, with one readable error when a checkpoint does not fit."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in ``model.parameters()`` (buffers such as BN running stats excluded).

    Examples
    --------
    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())


def _read(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint from the internet must not be able to run code when unpickled.
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several unrelated types for truncated/garbage/unsafe files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def _extract_state_dict(obj: object, source: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # CRD / mdistiller layout: {"model": state_dict, "epoch": ..., ...}
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{source} is neither a state_dict (str -> Tensor) nor a dict with one under key 'model'"
        )
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):
        # Saved from DataParallel / DistributedDataParallel: the wrapper adds this prefix to every key.
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _mismatch_report(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    lines = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
    return "\n".join(lines) if lines else None


def load_weights(model: nn.Module, path_or_state: str | os.PathLike[str] | Mapping[str, object]) -> nn.Module:
    """Load a checkpoint into ``model`` in place, strictly: every key present, none extra, shapes equal.

    Parameters
    ----------
    model
        A model from ``build_model`` (or any ``nn.Module``).
    path_or_state
        A checkpoint file (read with ``torch.load(weights_only=True, map_location="cpu")``) or an
        in-memory mapping. Either a raw state_dict or a dict holding one under ``"model"`` (the CRD /
        mdistiller teacher layout); a ``module.`` prefix on every key (DataParallel) is dropped.

    Returns
    -------
    nn.Module
        ``model`` itself, for chaining.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    CheckpointError
        The file cannot be unpickled safely, holds no state_dict, or does not fit ``model``; the message
        names the path and lists all missing keys, unexpected keys and shape mismatches at once.

    Examples
    --------
    >>> load_weights(build_model("resnet8x4"), "teachers/resnet8x4.pth")  # doctest: +SKIP
    """
    if isinstance(path_or_state, Mapping):
        source = "state mapping"
        state = _extract_state_dict(path_or_state, source)
    else:
        path = Path(path_or_state)
        source = f"checkpoint {path}"
        state = _extract_state_dict(_read(path), source)
    report = _mismatch_report(model.state_dict(), state)
    if report is not None:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}:\n{report}")
    model.load_state_dict(state, strict=True)
    return model
