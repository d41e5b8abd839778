"""Test-set (and training-set) accuracy and cross-entropy of a model on a
:class:`~harness.data.base.TrainData`."""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from harness.data.base import TrainData

from .distributed import DistContext

__all__ = ["Evaluation", "autocast", "evaluate"]


class Evaluation(NamedTuple):
    """What :func:`evaluate` measures on a split: fractions of the images, and the mean loss."""

    top1: float
    top5: float
    loss: float  # mean cross-entropy of the logits against the labels (nats per image)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: TrainData,
    split: str = "test",
    *,
    amp: str = "off",
    channels_last: bool = False,
    dist: DistContext | None = None,
) -> Evaluation:
    """Top-1 and top-5 accuracy (fractions) and the mean cross-entropy of ``model`` on ``split`` of
    ``data`` (eval view), in eval mode; the model's train/eval mode is restored.

    The counts and the loss sum stay on the device until the end, where they are read in one transfer
    (one sync). The cross-entropy is taken in float32 from the logits, also under ``amp``. With a
    multi-process ``dist`` each rank evaluates its share of the images and the sums are added.

    Returns
    -------
    Evaluation
        ``(top1, top5, loss)``.

    Example
    -------
    >>> top1, top5, loss = evaluate(model, data, "test")  # doctest: +SKIP
    """
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    totals = None  # [top-1 hits, top-5 hits, summed cross-entropy], on the device
    for x, y in data.eval_batches(split, rank=rank, world_size=world):
        with autocast(amp, x.device):
            logits = model(x.contiguous(memory_format=memory_format))
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
        if totals is None:
            totals = torch.zeros(3, dtype=_sum_dtype(x.device), device=x.device)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        totals += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), loss]).to(totals.dtype)
    model.train(was_training)
    if totals is None:  # this rank had no images (a tiny split over many ranks)
        device = dist.device if dist is not None else torch.device("cpu")
        totals = torch.zeros(3, dtype=_sum_dtype(device), device=device)
    c1, c5, loss_sum = (dist.all_reduce_sum(totals) if dist is not None else totals).tolist()
    total = data.eval_size(split)
    return Evaluation(c1 / total, c5 / total, loss_sum / total)


def _sum_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps hit counts exact and the loss sum at full precision; MPS has no float64, and its
    # float32 still counts exactly below 2**24 images.
    return torch.float32 if device.type == "mps" else torch.float64


def autocast(amp: str, device: torch.device, *, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    """The mixed-precision context of ``amp`` (``"off"``, ``"bf16"``, ``"fp16"``) on ``device``.
    ``cache=False`` casts a weight at every use instead of once per context (two uses then get two
    casts, and their gradients meet in float32; CUDA-graph capture needs it too)."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)
