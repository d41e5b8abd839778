"""Test-set (and training-set) accuracy of a model on a :class:`~harness.data.base.TrainData`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from harness.data.base import TrainData

from .distributed import DistContext

__all__ = ["autocast", "evaluate"]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: TrainData,
    split: str = "test",
    *,
    amp: str = "off",
    channels_last: bool = False,
    dist: DistContext | None = None,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions) of ``model`` on ``split`` of ``data`` (eval view), in eval
    mode; the model's train/eval mode is restored. Counts stay on the device until the end (one sync).
    With a multi-process ``dist`` each rank evaluates its share of the images and the counts are summed."""
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    correct1 = correct5 = None
    for x, y in data.eval_batches(split, rank=rank, world_size=world):
        with autocast(amp, x.device):
            logits = model(x.contiguous(memory_format=memory_format))
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
        if correct1 is None:
            correct1 = torch.zeros((), dtype=torch.long, device=x.device)
            correct5 = torch.zeros((), dtype=torch.long, device=x.device)
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
    model.train(was_training)
    device = dist.device if dist is not None else torch.device("cpu")
    counts = torch.zeros(2, dtype=torch.long, device=device) if correct1 is None else torch.stack(
        [correct1, correct5]
    )
    c1, c5 = (dist.all_reduce_sum(counts) if dist is not None else counts).tolist()
    total = data.eval_size(split)
    return c1 / total, c5 / total


def autocast(amp: str, device: torch.device, *, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    """The mixed-precision context of ``amp`` (``"off"``, ``"bf16"``, ``"fp16"``) on ``device``.
    ``cache=False`` casts a weight at every use instead of once per context (two uses then get two
    casts, and their gradients meet in float32; CUDA-graph capture needs it too)."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)
