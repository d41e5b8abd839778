"""Streamed image-folder data for training: worker processes decode and augment, the device normalizes.

For data that does not fit on the device (ImageNet): a ``torch.utils.data.DataLoader`` whose workers
read each file, draw its views with Pillow (:mod:`harness.data.pil_augment`) and hand over batches of
``uint8`` ``(N, 3, H, W)`` tensors, copied into pinned memory (on CUDA) and prefetched; persistent
workers survive from one epoch to the next. The training device receives ``uint8`` batches (a quarter
of the bytes of float32) and normalizes them itself (:func:`normalize`).

Nothing in it has hidden state, so nothing needs checkpointing:

- epoch ``e``'s order is a permutation drawn from ``(seed, e)``, cut into *global* batches of
  ``batch_size``; a last batch with fewer than ``2 * world_size`` rows is dropped (BatchNorm needs two
  rows per rank). Rank ``r`` of ``world_size`` takes its contiguous ``tensor_split(world_size)[r]`` share
  of every global batch, the rule of the device-resident path (``DistContext.shard_slice``). The global
  batch and the images of an epoch are therefore the same for every world size;
- image ``i``'s view ``v`` in epoch ``e`` draws from a generator seeded by ``(seed, e, i, v)`` alone.
  The sampler hands the workers ``(epoch, index)`` keys, so the pixels do not depend on the number of
  workers or ranks, persistent workers need no epoch broadcast, and a resumed run (or
  ``start_step``) continues bit-identically;
- evaluation is deterministic (Resize + CenterCrop); rank ``r`` evaluates its contiguous share of the
  held-out images, so the ranks together see every image exactly once.

The DataLoader gets a private ``torch.Generator`` for its worker base seed: the default would draw it from
torch's global RNG whenever an iterator is made, which a resumed run would not repeat.

Example
-------
>>> from harness.data.folder import scan_imagenet
>>> data = StreamedImageData(scan_imagenet("/data/imagenet"), batch_size=512, num_workers=8)  # doctest: +SKIP
>>> cuda = torch.device("cuda")
>>> for batch in data.train_batches(epoch=1, rank=0, world_size=1, device=cuda):  # doctest: +SKIP
...     weak, strong = batch.views                     # float32 (512, 3, 224, 224), normalized
...     labels, rows = batch.labels, batch.global_rows  # int64 (512,), 512
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.data.base import Batch
from harness.data.folder import ImageFolderData, ImageSplit
from harness.data.pil_augment import (
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_SIZE,
    decode_image,
    eval_view,
    strong_view,
    weak_view,
)

__all__ = [
    "EpochBatchSampler",
    "EvalImages",
    "StreamedImageData",
    "TrainViews",
    "collate_eval",
    "collate_views",
    "epoch_order",
    "global_batches",
    "normalize",
    "rank_share",
    "view_rng",
]

# Tags that keep the random streams apart (numpy SeedSequence entropy words).
_ORDER_STREAM = 0x0DE5_0001
_VIEW_STREAM = 0x0DE5_0002
_VIEWS = (weak_view, strong_view)


# ----------------------------------------------------------------------------------------- order and seeds


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s order: a permutation of ``range(num_items)`` drawn from ``(seed, epoch)``."""
    _check_seed(seed)
    return np.random.default_rng([_ORDER_STREAM, seed, epoch]).permutation(num_items)


def global_batches(
    num_items: int, batch_size: int, seed: int, epoch: int, world_size: int = 1
) -> list[np.ndarray]:
    """Epoch ``epoch``'s global batches: :func:`epoch_order` cut into ``batch_size`` slices, the last one
    kept only if it has at least ``2 * world_size`` rows."""
    if batch_size < 2 * world_size:
        raise ValueError(
            f"batch_size ({batch_size}) must be at least 2 * world_size ({2 * world_size}): each rank's "
            "share of a batch needs two rows for BatchNorm"
        )
    order = epoch_order(num_items, seed, epoch)
    batches = [order[start : start + batch_size] for start in range(0, num_items, batch_size)]
    return [b for b in batches if b.shape[0] >= 2 * world_size]


def rank_share(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``rows``: ``torch.tensor_split(rows, world_size)[rank]`` (the first
    ``len(rows) % world_size`` ranks get one row more)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    return np.array_split(rows, world_size)[rank]


def view_rng(seed: int, epoch: int, index: int, view: int) -> np.random.Generator:
    """The generator of image ``index``'s view ``view`` in epoch ``epoch`` (its only source of randomness)."""
    return np.random.default_rng([_VIEW_STREAM, seed, epoch, index, view])


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler of one rank: per step, the ``(epoch, index)`` keys of its share of the global batch.

    Set the epoch (and the step to start from) with :meth:`set_epoch` before each pass; a DataLoader with
    persistent workers re-iterates the sampler at every new pass.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        _check_seed(seed)
        rank_share(np.arange(0), rank, world_size)  # validates rank
        global_batches(0, batch_size, seed, 1, world_size)  # validates batch_size
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_step = 1, 0
        self._batches: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Make the next pass walk epoch ``epoch`` from its step ``start_step`` (0-based)."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.epoch, self.start_step = epoch, start_step

    def global_batches(self) -> list[np.ndarray]:
        """All of the current epoch's global batches (cached per epoch)."""
        if self._batches is None or self._batches[0] != self.epoch:
            batches = global_batches(self.num_items, self.batch_size, self.seed, self.epoch, self.world_size)
            self._batches = (self.epoch, batches)
        return self._batches[1]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in self.global_batches()[self.start_step :]:
            yield [(epoch, int(i)) for i in rank_share(batch, self.rank, self.world_size)]

    def __len__(self) -> int:
        return max(0, len(self.global_batches()) - self.start_step)


# ------------------------------------------------------------------------------------------- the datasets


class TrainViews(Dataset):
    """``dataset[(epoch, index)]`` -> (the image's ``views`` as ``uint8`` ``(3, size, size)`` arrays, label).

    View 0 is the weak view, view 1 the strong one; each draws from :func:`view_rng`.
    """

    def __init__(self, split: ImageSplit, seed: int, views: int = 2, image_size: int = IMAGE_SIZE):
        if views not in (1, 2):
            raise ValueError(f"views must be 1 (weak) or 2 (weak + strong), got {views}")
        self.split, self.seed, self.views, self.image_size = split, seed, views, image_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[tuple[np.ndarray, ...], int]:
        epoch, index = key
        image = decode_image(self.split, index)
        views = tuple(
            _VIEWS[v](image, view_rng(self.seed, epoch, index, v), self.image_size) for v in range(self.views)
        )
        return views, int(self.split.labels[index])


class EvalImages(Dataset):
    """``dataset[index]`` -> (Resize(``resize_size``) + CenterCrop(``image_size``) as a ``uint8``
    ``(3, H, W)`` array, label)."""

    def __init__(self, split: ImageSplit, image_size: int = IMAGE_SIZE, resize_size: int = RESIZE_SIZE):
        self.split, self.image_size, self.resize_size = split, image_size, resize_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        view = eval_view(decode_image(self.split, index), self.resize_size, self.image_size)
        return view, int(self.split.labels[index])


# Batches are stacked with NumPy: torch.stack would run torch's intra-op thread pool in the calling process
# (num_workers=0), which on a loaded machine waits for descheduled threads (measured: 12-240 ms instead of
# 0.2 ms for 16 images of 224 px on 2 busy cores). Workers run torch single-threaded anyway.


def collate_views(
    samples: Sequence[tuple[tuple[np.ndarray, ...], int]],
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Samples of :class:`TrainViews` -> (one ``uint8`` ``(N, 3, H, W)`` batch per view, ``int64`` labels)."""
    views = tuple(torch.from_numpy(np.stack(per_view)) for per_view in zip(*(views for views, _ in samples)))
    return views, torch.from_numpy(np.array([label for _, label in samples], dtype=np.int64))


def collate_eval(samples: Sequence[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of :class:`EvalImages` -> (``uint8`` ``(N, 3, H, W)``, ``int64`` labels)."""
    images = torch.from_numpy(np.stack([x for x, _ in samples]))
    return images, torch.from_numpy(np.array([y for _, y in samples], dtype=np.int64))


def normalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``uint8`` ``(N, 3, H, W)`` -> ``float32`` ``(x / 255 - mean) / std`` per channel, on ``x``'s device.

    Examples
    --------
    >>> normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    tensor([2.2489, 2.4286, 2.6400])
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a uint8 (N, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    return (x.float() / 255.0 - _per_channel(tuple(mean), x.device)) / _per_channel(tuple(std), x.device)


@functools.lru_cache(maxsize=16)
def _per_channel(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A ``(1, 3, 1, 1)`` constant on ``device``, copied there once (a copy from pageable host memory on every
    batch would block the host each time). Callers must not write to it."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------- the trainer's view


class StreamedImageData:
    """A scanned image folder served by DataLoader workers: a :class:`harness.data.base.TrainData`.

    Parameters
    ----------
    data
        The scanned dataset (:func:`~harness.data.folder.scan_imagenet` or
        :func:`~harness.data.folder.scan_folder`).
    batch_size
        Global batch size (all ranks together); 512 in the official ImageNet recipe.
    seed
        Seeds the epoch orders and every image's views.
    views
        1 (weak) or 2 (weak + strong, the SLD recipe).
    image_size, resize_size
        Side of the training crops and the test centre crop (224), and the test resize (256).
    eval_batch_size
        Rows per evaluation batch and rank (128 in the official recipe).
    num_workers
        Decoding processes per rank; 0 decodes in the calling process.
    prefetch_factor
        Batches each worker prepares ahead.
    mean, std
        Normalization applied on the device.
    device
        Where batches are delivered (normalized there).
    train_eval_size
        The ``"train"`` evaluation split (how often the teacher is wrong on the training set, the swap
        rate) is a fixed, evenly spaced sample of at most this many training images (eval view): a full
        pass over ImageNet's 1.28 M images would cost an epoch of inference.

    Examples
    --------
    >>> data = StreamedImageData(folder_data, batch_size=64, num_workers=2)   # doctest: +SKIP
    >>> data.num_classes, data.steps_per_epoch(world_size=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        data: ImageFolderData,
        *,
        batch_size: int,
        seed: int = 0,
        views: int = 2,
        image_size: int = IMAGE_SIZE,
        resize_size: int = RESIZE_SIZE,
        eval_batch_size: int = 128,
        num_workers: int = 4,
        prefetch_factor: int = 2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: torch.device | str = "cpu",
        train_eval_size: int = 10_000,
    ):
        _check_seed(seed)
        if image_size < 1 or resize_size < image_size:
            raise ValueError(f"need 1 <= image_size <= resize_size, got {image_size} and {resize_size}")
        if eval_batch_size < 1 or num_workers < 0 or prefetch_factor < 1:
            raise ValueError(
                f"need eval_batch_size >= 1, num_workers >= 0 and prefetch_factor >= 1, got "
                f"{eval_batch_size}, {num_workers} and {prefetch_factor}"
            )
        global_batches(0, batch_size, seed, 1)  # validates batch_size
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.eval_batch_size, self.num_workers, self.prefetch_factor = (
            eval_batch_size,
            num_workers,
            prefetch_factor,
        )
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self._train = TrainViews(data.train, seed, views, image_size)
        sample = np.unique(np.linspace(0, len(data.train) - 1, min(train_eval_size, len(data.train))).round())
        self._eval = {
            "test": EvalImages(data.val, image_size, resize_size),
            "train": EvalImages(data.train.take(sample.astype(np.int64)), image_size, resize_size),
        }
        self._loaders: dict[tuple[str, int, int, bool], DataLoader] = {}

    # ------------------------------------------------------------------------------------------- facts

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def classes(self) -> tuple[str, ...]:
        return self.data.classes

    @property
    def views(self) -> int:
        return self._train.views

    @property
    def num_train(self) -> int:
        return len(self.data.train)

    @property
    def num_eval(self) -> int:
        return len(self.data.val)

    def eval_size(self, split: str = "test") -> int:
        """Images :meth:`eval_batches` gives for ``split`` over all ranks."""
        return len(self._eval_split(split))

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Global batches per epoch (the same on every rank)."""
        full, rest = divmod(self.num_train, self.batch_size)
        return full + (rest >= 2 * world_size)

    # --------------------------------------------------------------------------------------- training

    def train_loader(
        self, epoch: int, rank: int = 0, world_size: int = 1, *, start_step: int = 0, pin_memory: bool = False
    ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor, int]]:
        """This rank's batches of epoch ``epoch`` as they leave the workers (CPU, ``uint8``).

        Yields
        ------
        (views, labels, global_rows)
            One ``uint8`` ``(n, 3, H, W)`` tensor per view, ``int64`` ``(n,)`` labels, and the row count
            of the global batch (``n`` is this rank's share of it).
        """
        loader = self._loader("train", rank, world_size, pin_memory)
        sampler = loader.batch_sampler
        assert isinstance(sampler, EpochBatchSampler)
        sampler.set_epoch(epoch, start_step)
        sizes = [b.shape[0] for b in sampler.global_batches()[start_step:]]
        for (views, labels), rows in zip(loader, sizes):
            yield views, labels, rows

    def train_batches(
        self,
        epoch: int,
        *,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        """This rank's training steps of epoch ``epoch`` (from step ``start_step``), normalized on the
        device. ``generator`` is not used: every draw is seeded by (seed, epoch, image, view).

        Every rank gets the same number of steps; the rows of rank ``r``, concatenated over the ranks in
        rank order, are the global batch.
        """
        device = self.device
        pin = device.type == "cuda"
        for views, labels, rows in self.train_loader(
            epoch, rank, world_size, start_step=start_step, pin_memory=pin
        ):
            # From pinned memory the copies run asynchronously; the normalization queues behind them.
            on_device = tuple(normalize(v.to(device, non_blocking=pin), self.mean, self.std) for v in views)
            yield Batch(on_device, labels.to(device, non_blocking=pin), rows)

    # ------------------------------------------------------------------------------------- evaluation

    def eval_loader(
        self, split: str = "test", rank: int = 0, world_size: int = 1, *, pin_memory: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of ``split``'s evaluation images (CPU, ``uint8``), in batches of
        ``eval_batch_size``."""
        yield from self._loader(f"eval-{split}", rank, world_size, pin_memory)

    def eval_batches(
        self, split: str = "test", *, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's evaluation batches of ``split`` (``"test"``: the held-out images; ``"train"``: the
        training sample, see ``train_eval_size``), normalized on the device: ``(float32 (n, 3, H, W),
        int64 (n,))``. Over all ranks every image comes exactly once; divide summed counts by
        :meth:`eval_size`."""
        device = self.device
        pin = device.type == "cuda"
        for x, y in self.eval_loader(split, rank, world_size, pin_memory=pin):
            yield (
                normalize(x.to(device, non_blocking=pin), self.mean, self.std),
                y.to(device, non_blocking=pin),
            )

    def eval_indices(self, rank: int = 0, world_size: int = 1, split: str = "test") -> np.ndarray:
        """Indices into ``split``'s evaluation images that rank ``rank`` evaluates, in order."""
        return rank_share(np.arange(self.eval_size(split)), rank, world_size)

    def _eval_split(self, split: str) -> EvalImages:
        if split not in self._eval:
            raise ValueError(f"split must be 'test' or 'train'; got {split!r}")
        return self._eval[split]

    # --------------------------------------------------------------------------------------- plumbing

    def _loader(self, kind: str, rank: int, world_size: int, pin_memory: bool) -> DataLoader:
        key = (kind, rank, world_size, pin_memory)
        if key not in self._loaders:
            if kind == "train":
                dataset: Dataset = self._train
                batches: object = EpochBatchSampler(
                    self.num_train, self.batch_size, self.seed, rank, world_size
                )
                collate = collate_views
            else:
                split = kind.removeprefix("eval-")
                dataset = self._eval_split(split)
                share = self.eval_indices(rank, world_size, split)
                batches = [
                    share[i : i + self.eval_batch_size].tolist()
                    for i in range(0, len(share), self.eval_batch_size)
                ]
                collate = collate_eval
            workers = self.num_workers
            self._loaders[key] = DataLoader(
                dataset,
                batch_sampler=batches,  # type: ignore[arg-type]
                num_workers=workers,
                collate_fn=collate,
                pin_memory=pin_memory,
                persistent_workers=workers > 0,
                prefetch_factor=self.prefetch_factor if workers > 0 else None,
                generator=torch.Generator().manual_seed(self.seed),  # not the global RNG (module docstring)
            )
        return self._loaders[key]

    def close(self) -> None:
        """Stop the worker processes (they also stop when this object is garbage-collected)."""
        loaders, self._loaders = self._loaders, {}
        for loader in loaders.values():
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()

    def __enter__(self) -> StreamedImageData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
