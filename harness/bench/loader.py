"""How many training images per second the streamed ImageNet pipeline delivers, per worker count.

Each image is decoded once and gives the weak and the strong view (:mod:`harness.data.streamed`), as in
SLD training. The worker counts are timed in interleaved rounds (round 1: 0, 1, 2 workers; round 2: the
same; ...) so that a change in the machine's load hits every count alike; each round is one whole epoch
over a fixed subset of the training images (a partial epoch would leave prefetched batches to drain into
the next timing), after one untimed epoch that starts the worker processes. Reported: the median over
the rounds.

Without ``--data-dir`` it writes a temporary ImageNet-layout folder of photo-sized JPEGs (500 x 375,
about 80 KB each) and times that.

Example
-------
``python -m harness.bench.loader --workers 0,1,2``
``python -m harness.bench.loader --data-dir /data/imagenet --workers 4,8,16 --images 2048``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.folder import ImageFolderData, scan_imagenet
from harness.data.pil_augment import IMAGE_SIZE
from harness.data.streamed import StreamedImageData
from harness.data.synthetic_images import write_image_folder

__all__ = ["Throughput", "loader_throughput", "main"]


@dataclass(frozen=True)
class Throughput:
    """Images per second of one worker count: the median round and every round's rate."""

    workers: int
    images: int  # per round
    images_per_s: float
    rounds: tuple[float, ...]


def loader_throughput(
    data: ImageFolderData,
    *,
    workers: Sequence[int] = (0, 1, 2),
    images: int = 256,
    batch_size: int = 32,
    rounds: int = 3,
    views: int = 2,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
) -> list[Throughput]:
    """Time the training pipeline of ``data`` for each worker count (module docstring for the protocol).

    Parameters
    ----------
    data
        A scanned dataset; its first ``images`` training images in a seeded order are used.
    workers
        Worker counts to compare.
    images, batch_size
        Images per timed epoch and per batch.
    rounds
        Timed epochs per worker count (interleaved).
    views, image_size
        As :class:`~harness.data.streamed.StreamedImageData` (2 views of 224 px: the SLD recipe).
    seed
        Seeds the subset and the augmentation.

    Returns
    -------
    list of Throughput
        One per worker count, in the order given.

    Examples
    --------
    >>> loader_throughput(scan_imagenet("/data/imagenet"), workers=(4, 8))  # doctest: +SKIP
    """
    if images < 2 or rounds < 1:
        raise ValueError(f"need images >= 2 and rounds >= 1, got {images} and {rounds}")
    pick = np.random.default_rng(seed).permutation(len(data.train))[: min(images, len(data.train))]
    subset = ImageFolderData(data.root, data.classes, data.train.take(np.sort(pick)), data.val)
    pipelines = {
        w: StreamedImageData(
            subset,
            batch_size=min(batch_size, len(subset.train)),
            seed=seed,
            views=views,
            image_size=image_size,
            num_workers=w,
        )
        for w in workers
    }
    rates: dict[int, list[float]] = {w: [] for w in workers}
    try:
        for pipeline in pipelines.values():
            _consume(pipeline, epoch=0)  # starts the workers; not timed
        for r in range(rounds):
            for w, pipeline in pipelines.items():
                start = time.perf_counter()
                count = _consume(pipeline, epoch=r + 1)
                rates[w].append(count / (time.perf_counter() - start))
    finally:
        for pipeline in pipelines.values():
            pipeline.close()
    return [Throughput(w, len(subset.train), statistics.median(rates[w]), tuple(rates[w])) for w in workers]


def _consume(pipeline: StreamedImageData, epoch: int) -> int:
    count = 0
    for views, labels, _ in pipeline.train_loader(epoch):
        count += labels.shape[0]
        del views
    return count


def main(argv: Sequence[str] | None = None) -> list[Throughput]:
    """``python -m harness.bench.loader``: print images/s per worker count (``--help`` for options)."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench.loader",
        description="Images/s of the streamed ImageNet training pipeline (weak + strong view), by workers.",
    )
    parser.add_argument("--data-dir", type=Path, help="ImageNet-layout folder (default: a generated one)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (default 0,1,2)")
    parser.add_argument("--images", type=int, default=256, help="images per timed epoch (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per worker count (default 3)")
    parser.add_argument("--views", type=int, default=2, choices=(1, 2))
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument(
        "--jpeg-size", default="500x375", help="generated images' WIDTHxHEIGHT (default 500x375)"
    )
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="sld-throughput-") as tmp:
        if args.data_dir is None:
            width, height = (int(s) for s in args.jpeg_size.lower().split("x"))
            classes = 8
            write_image_folder(
                tmp,
                num_classes=classes,
                train_per_class=-(-args.images // classes),
                val_per_class=1,
                size=(width, height),
            )
            source = f"generated {width}x{height} JPEGs"
            data = scan_imagenet(tmp)
        else:
            source = str(args.data_dir)
            data = scan_imagenet(args.data_dir)
        results = loader_throughput(
            data,
            workers=workers,
            images=args.images,
            batch_size=args.batch_size,
            rounds=args.rounds,
            views=args.views,
            image_size=args.image_size,
        )
    print(f"streamed training pipeline, {args.views} view(s) of {args.image_size} px, {source}:")
    print(f"{'workers':>8}  {'images/s':>9}  rounds")
    for result in results:
        spread = ", ".join(f"{rate:.1f}" for rate in result.rounds)
        print(f"{result.workers:>8}  {result.images_per_s:>9.1f}  {spread}")
    return results


if __name__ == "__main__":
    main()
