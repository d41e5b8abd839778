"""Device-resident data: ``uint8`` images held on the training device once, batches cut from a seeded
permutation and augmented on the device (:mod:`harness.data.augment`), so there is no DataLoader and no
per-step host transfer. The CIFAR-100 path."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .augment import eval_view, weak_and_strong_views, weak_view
from .base import Batch, shard_slice

__all__ = ["DeviceResidentData", "epoch_batches"]


class DeviceResidentData:
    """:class:`harness.data.base.TrainData` over images already on the device.

    Parameters
    ----------
    train_images, test_images
        ``uint8`` NHWC arrays (as :func:`harness.data.cifar.load_cifar100` gives them); moved to
        ``device`` once, as NCHW.
    train_labels, test_labels
        Integer labels in ``[0, num_classes)``.
    batch_size
        The global batch of :meth:`train_batches`.
    views
        1 (weak view) or 2 (weak + strong, the SLD / MLKD CIFAR recipe).
    eval_batch_size
        Rows per :meth:`eval_batches` batch and rank.
    """

    def __init__(
        self,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        *,
        num_classes: int,
        device: torch.device,
        batch_size: int,
        views: int = 2,
        eval_batch_size: int = 512,
        classes: tuple[str, ...] | None = None,
    ) -> None:
        for name, labels in (("training", train_labels), ("test", test_labels)):
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(
                    f"{name} labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}"
                )
        if views not in (1, 2):
            raise ValueError(f"views must be 1 (weak) or 2 (weak + strong); got {views!r}")
        self.num_classes = num_classes
        self.classes = classes
        self.batch_size, self.views, self.eval_batch_size = batch_size, views, eval_batch_size
        self.train_x, self.train_y = _to_device(train_images, train_labels, device)
        self.test_x, self.test_y = _to_device(test_images, test_labels, device)

    def eval_size(self, split: str) -> int:
        return self._split(split)[0].shape[0]

    def steps_per_epoch(self, world_size: int = 1) -> int:
        # the last short batch is dropped only when it has fewer than 2 rows per rank
        full, rest = divmod(self.train_x.shape[0], self.batch_size)
        return full + (rest >= 2 * world_size)

    def train_batches(
        self, epoch: int, *, generator: torch.Generator, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """Every rank augments the whole global batch with the shared generator and keeps its rows, so
        each image gets exactly the crop, flip and RandAugment draws it would get in one process (at
        CIFAR batch sizes the augmentation kernels are launch-bound: the extra rows cost next to nothing
        on a GPU)."""
        batches = epoch_batches(self.train_x.shape[0], self.batch_size, generator, min_rows=2 * world_size)
        for index in batches:
            rows = shard_slice(index.shape[0], rank, world_size)
            images = self.train_x[index]
            # both views in one call: weak_view's then strong_view's images, in fewer ops
            views = (
                weak_and_strong_views(images, generator)
                if self.views == 2
                else (weak_view(images, generator),)
            )
            yield Batch(
                views=tuple(view[rows] for view in views),
                labels=self.train_y[index][rows],
                global_rows=index.shape[0],
            )

    def eval_batches(
        self, split: str, *, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._split(split)
        if world_size > 1:
            images, labels = (t.tensor_split(world_size)[rank] for t in (images, labels))
        step = self.eval_batch_size
        for start in range(0, images.shape[0], step):
            yield eval_view(images[start : start + step]), labels[start : start + step]

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.train_x, self.train_y
        if split == "test":
            return self.test_x, self.test_y
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")


def epoch_batches(
    num_items: int, batch_size: int, generator: torch.Generator, *, min_rows: int = 2
) -> Iterator[torch.Tensor]:
    """Index tensors of one epoch's (global) batches: a permutation drawn from ``generator`` (on its
    device), cut into ``batch_size`` slices; the last, shorter one is kept (as a DataLoader without
    drop_last) unless it has fewer than ``min_rows`` rows. BatchNorm cannot normalize a single row, so
    a single process needs 2 and ``world_size`` ranks need ``2 * world_size`` (each rank's share of the
    batch is normalized on its own). Every rank draws the same permutation from the same seed."""
    order = torch.randperm(num_items, generator=generator, device=generator.device)
    for batch in order.split(batch_size):
        if batch.numel() >= min_rows:
            yield batch


def _to_device(
    images: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # NHWC -> NCHW once, on the host; the device then only ever slices and augments.
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    return x, torch.from_numpy(labels).to(device=device, dtype=torch.long)
