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


def read_checkpoint(path: str | os.PathLike[str]) -> object:
    """``torch.load`` a checkpoint file onto the CPU with ``weights_only=True``: tensors and plain
    Python values only, so a file from the internet cannot run code when unpickled.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    CheckpointError
        ``path`` is a directory, or the file is not a readable torch checkpoint (corrupt, truncated,
        another kind of file, or pickled objects ``weights_only`` refuses); the message names the path.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and EOF errors all mean "not a readable checkpoint"
        # torch's own message runs to a page about weights_only; its type is enough to diagnose.
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (corrupt, truncated or another kind "
            f"of file; {type(exc).__name__})"
        ) from None


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
        mdistiller teacher layout, or torchvision's published weight files); a ``module.`` prefix on
        every key (DataParallel) is dropped. BatchNorm ``num_batches_tracked`` counters absent from the
        file (saved before torch 0.4.1) keep the model's values, as ``torch.nn.BatchNorm2d`` does.

    Returns
    -------
    nn.Module
        ``model`` itself, for chaining.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    CheckpointError
        The path is a directory, the file cannot be read (:func:`read_checkpoint`), holds no state_dict,
        or does not fit ``model``; the message names the path and lists all missing keys, unexpected
        keys and shape mismatches at once.

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
        state = _extract_state_dict(read_checkpoint(path), source)
    expected = model.state_dict()
    # Files saved before torch 0.4.1 (torchvision's published ResNet weights among them) have no BatchNorm
    # step counters; torch's own loader keeps the model's counter for those, and so do we.
    counters = {k: v for k, v in expected.items() if k.endswith(".num_batches_tracked") and k not in state}
    if counters:
        state = {**state, **counters}
    report = _mismatch_report(expected, state)
    if report is not None:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}:\n{report}")
    model.load_state_dict(state, strict=True)
    return model
