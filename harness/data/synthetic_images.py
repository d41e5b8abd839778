"""A generated image folder of real JPEG files, in the ImageNet layout or as bare class folders, for tests,
demos and the loader benchmark (:mod:`harness.bench.loader`).

Each image is a smooth random field (a coarse grid of colours upsampled bilinearly, tinted by its class)
plus pixel noise, so it compresses about like a photograph: at 500 x 375 and JPEG quality 90 a file is
of the order of 100 KB, near the ImageNet average.

Example
-------
>>> root = write_image_folder(tmp / "tiny", num_classes=3, train_per_class=4)  # doctest: +SKIP
>>> sorted(p.name for p in (root / "train").iterdir())  # doctest: +SKIP
['n00000000', 'n00000001', 'n00000002']
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["synthetic_image", "write_image_folder"]

_GRID = 8  # coarse colour cells along the shorter side
_NOISE = 14.0  # std of the per-pixel noise, in grey levels


def synthetic_image(rng: np.random.Generator, size: tuple[int, int], tint: np.ndarray) -> Image.Image:
    """An RGB image of ``size = (width, height)``: a smooth random field tinted by ``tint`` (3 values in
    ``[0, 255]``) plus noise."""
    width, height = size
    cells = (max(2, _GRID * width // min(size)), max(2, _GRID * height // min(size)))
    coarse = rng.uniform(0, 255, size=(cells[1], cells[0], 3))
    coarse = (0.5 * coarse + 0.5 * tint).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    pixels = np.clip(field + rng.normal(0.0, _NOISE, size=field.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_image_folder(
    root: str | os.PathLike[str],
    *,
    num_classes: int = 3,
    train_per_class: int = 4,
    val_per_class: int = 2,
    size: tuple[int, int] = (500, 375),
    layout: str = "imagenet",
    seed: int = 0,
    quality: int = 90,
    extension: str = ".JPEG",
) -> Path:
    """Write a dataset of JPEG files and return ``root``.

    Parameters
    ----------
    root
        Output folder (created; existing files with the same names are overwritten).
    num_classes, train_per_class, val_per_class
        Classes ``n00000000``, ``n00000001``, ... (WordNet-id-like names) and images per class and split.
    size
        ``(width, height)`` of every image.
    layout
        ``"imagenet"``: ``root/train/<class>/`` and ``root/val/<class>/``; ``"classes"``: all
        ``train_per_class + val_per_class`` images of a class in ``root/<class>/`` (for a seeded split).
    seed
        Seeds every pixel; the same arguments write the same files.
    quality, extension
        JPEG quality and file-name extension.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    if layout not in ("imagenet", "classes"):
        raise ValueError(f"layout must be 'imagenet' or 'classes', got {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    tints = rng.uniform(0, 255, size=(num_classes, 3))
    if layout == "imagenet":
        splits = {"train": train_per_class, "val": val_per_class}
    else:
        splits = {".": train_per_class + val_per_class}
    for split, count in splits.items():
        for c in range(num_classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = synthetic_image(rng, size, tints[c])
                image.save(folder / f"n{c:08d}_{i}{extension}", format="JPEG", quality=quality)
    return root
