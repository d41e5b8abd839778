"""What the trainer asks of a dataset (:class:`TrainData`), and one step's batch (:class:`Batch`).

Two kinds of implementation: device-resident (:class:`harness.data.resident.DeviceResidentData`: the
uint8 images live on the training device and each global batch is augmented there, no DataLoader) and
streamed (images decoded and augmented in DataLoader worker processes, for data that does not fit on
the device). Either way a batch carries every view of this rank's rows, normalized, on the device, so a
distillation method sees all views of a step at once.

Under data parallelism (``world_size`` > 1) every rank walks the same global batches of a seeded
permutation and keeps its contiguous ``tensor_split(world_size)`` share of each: the images seen per
epoch, and each image's augmentation, do not depend on the world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["Batch", "TrainData", "shard_slice"]


@dataclass(frozen=True)
class Batch:
    """One training step's data for this rank."""

    views: tuple[torch.Tensor, ...]  # weak first: float32 (rows, 3, H, W), normalized, on the device
    labels: torch.Tensor  # int64 (rows,) on the device
    global_rows: int  # rows of the global batch over all ranks (== rows in a single process)


class TrainData(Protocol):
    """The dataset interface :func:`harness.train.loop.train` trains on. The global batch size, the number
    of views and the device are fixed when a dataset is made."""

    num_classes: int
    classes: tuple[str, ...] | None  # class names in label order, where the data has them

    def eval_size(self, split: str) -> int:
        """Images :meth:`eval_batches` gives for ``split`` over all ranks (accuracy divides by it)."""
        ...

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Optimizer steps :meth:`train_batches` yields per epoch (the same on every rank)."""
        ...

    def train_batches(
        self, epoch: int, *, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """This rank's share of every global batch of ``epoch`` (counted from 1). ``generator`` (on the
        training device; its state is checkpointed) is the run's source of order and augmentation where
        the data draws on the device; a streamed dataset seeds itself from (seed, epoch) instead."""
        ...

    def eval_batches(
        self, split: str, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, labels)`` of this rank's share of ``split`` (``"test"``, or ``"train"``: the
        training images the teacher's swap rate is measured on) in the eval view, normalized float32 on
        the device; over all ranks every image exactly once."""
        ...


def shard_slice(num_rows: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``num_rows`` rows, as ``tensor_split(world_size)`` cuts
    them (sizes differ by at most one)."""
    if world_size == 1:
        return slice(None)
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
