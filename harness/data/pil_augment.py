"""The official ImageNet views, per image with Pillow (no torchvision): what data-loader workers run.

The recipe is that of the official code (MLKD's ``mdistiller/dataset/imagenet.py``, on which SLD's code is
built), with torchvision's transforms redone here:

weak view (:func:`weak_view`)
    ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``.
strong view (:func:`strong_view`)
    An independent ``RandomResizedCrop(224)`` + flip, then ``RandAugment(2)``: two ops drawn uniformly
    with replacement from the 14 of :data:`harness.data.augment.RANDAUGMENT_OPS` (same names and
    magnitude ranges as the CIFAR recipe), each at ``v = low + (high - low) * U(0, 1)``, applied with
    Pillow exactly as the official functions do (see :data:`PIL_OPS`); then Cutout (:func:`cutout`).
eval (test) view (:func:`eval_view`)
    ``Resize(256)`` (shorter side) + ``CenterCrop(224)``.

``RandomResizedCrop`` follows torchvision's algorithm: up to 10 tries of an area fraction uniform in
``scale = (0.08, 1)`` and a log-uniform aspect ratio in ``ratio = (3/4, 4/3)``, sides rounded
half-to-even, kept if they fit, at a uniform position (row first); else the central crop of the whole
image clamped to the ratio range. The box is cut out, then resized with Pillow's bilinear filter (as
torchvision does for PIL images; Pillow's resampling is antialiased).

Every function takes an explicit ``numpy.random.Generator`` and draws from nothing else, in the order:
crop (per try: scale, ratio; then top, left), flip, per RandAugment round the op indices then each op's
magnitude, then Cutout's size and centre (x, then y). Views are ``uint8`` ``(3, H, W)`` arrays;
normalization (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`) happens later, on the training device.

Example
-------
>>> rng = np.random.default_rng(0)
>>> img = Image.new("RGB", (500, 375), (90, 120, 60))
>>> weak_view(img, rng).shape, strong_view(img, rng, size=64).shape, eval_view(img).shape
((3, 224, 224), (3, 64, 64), (3, 224, 224))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from harness.data.augment import CUTOUT_FILL, RANDAUGMENT_OPS
from harness.data.cifar import DatasetError
from harness.data.folder import ImageSplit

__all__ = [
    "decode_image",
    "decode_resized",
    "CROP_RATIO",
    "CROP_SCALE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SIZE",
    "PIL_OPS",
    "RESIZE_SIZE",
    "PilOp",
    "center_crop",
    "cutout",
    "eval_view",
    "load_rgb",
    "rand_augment",
    "random_flip",
    "random_resized_crop",
    "random_resized_crop_box",
    "resize_shorter_side",
    "strong_view",
    "weak_view",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # official code (torchvision's ImageNet statistics)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224  # side of the training crops and of the test centre crop
RESIZE_SIZE = 256  # shorter side before the test centre crop
CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_TRIES = 10
_NUM_OPS = 2
_MAX_CUTOUT = 0.5  # of the width


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to RGB, as torchvision's default loader (grey, palette, CMYK -> RGB)."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def decode_image(split: ImageSplit, index: int) -> Image.Image:
    """Image ``index`` of ``split`` as RGB; a file that is not a readable image is one
    :class:`~harness.data.cifar.DatasetError` that names it."""
    path = split.path(index)
    try:
        return load_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # OSError: unreadable or not an image
        raise DatasetError(
            f"cannot decode image {path} ({type(exc).__name__}: {exc}); remove or replace it"
        ) from exc


def decode_resized(split: ImageSplit, size: int) -> np.ndarray:
    """Every image of ``split`` decoded and resized (bilinear) to ``size`` x ``size``: ``uint8`` NHWC, for
    a small image folder held on the device and augmented CIFAR-style."""
    out = np.empty((len(split), size, size, 3), dtype=np.uint8)
    for i in range(len(split)):
        out[i] = np.asarray(decode_image(split, i).resize((size, size), Image.Resampling.BILINEAR))
    return out


def _chw(image: Image.Image | np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` -> a new, writable, C-contiguous ``uint8`` ``(3, H, W)`` array."""
    return np.array(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1), order="C")


# ---------------------------------------------------------------------------------------- crops and resizes


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: ``(top, left, height, width)`` of the crop box.

    Parameters
    ----------
    width, height
        Size of the image to crop.
    rng
        Source of every draw.
    scale, ratio
        Range of the box's area as a fraction of the image's, and of its aspect ratio (width / height).

    Returns
    -------
    tuple of int
        ``(top, left, h, w)`` with ``0 < h <= height`` and ``0 < w <= width``.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_CROP_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target_area * aspect)))  # Python's round: half to even, as torchvision
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the whole image, clamped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> Image.Image:
    """The box of :func:`random_resized_crop_box`, cut out and resized to ``size x size`` (bilinear)."""
    top, left, h, w = random_resized_crop_box(image.width, image.height, rng, scale, ratio)
    return image.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)


def random_flip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mirror left-right with probability 1/2 (torchvision's ``RandomHorizontalFlip``)."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size)``: the shorter side to ``size``, the longer to
    ``int(size * long / short)`` (truncated), bilinear."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``CenterCrop(size)`` of an image at least ``size`` on each side: offsets
    ``round((side - size) / 2)``, half to even."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"center_crop({size}) of a {w}x{h} image: resize it to at least {size} first")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


# ------------------------------------------------------------------------------------------- RandAugment


def _affine(image: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    # Pillow's defaults, as the official calls: nearest pixel, black outside the image.
    return image.transform(image.size, Image.Transform.AFFINE, coefficients)


_PIL_FUNCTIONS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Rotate": lambda img, v: img.rotate(v),  # degrees counter-clockwise about the centre, no expand
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),  # inverts pixels >= v (v may be fractional)
    "TranslateX": lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)),  # v: fraction of width
    "TranslateY": lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
}


@dataclass(frozen=True)
class PilOp:
    """One RandAugment op on a PIL image: ``apply(image, v)`` with ``v`` drawn from ``[low, high]``."""

    name: str
    low: float
    high: float
    apply: Callable[[Image.Image, float], Image.Image]


PIL_OPS: tuple[PilOp, ...] = tuple(
    PilOp(op.name, op.low, op.high, _PIL_FUNCTIONS[op.name]) for op in RANDAUGMENT_OPS
)
"""The official ``augment_list()``: the CIFAR table's names and ranges, in its order, applied with Pillow."""


def rand_augment(image: Image.Image, rng: np.random.Generator, num_ops: int = _NUM_OPS) -> Image.Image:
    """``num_ops`` ops drawn uniformly with replacement from :data:`PIL_OPS`, each at a magnitude uniform
    in its range (the official ``RandAugment(n, m)`` ignores ``m``); Cutout is separate (:func:`cutout`)."""
    choices = rng.integers(0, len(PIL_OPS), size=num_ops)
    for k in choices:
        op = PIL_OPS[int(k)]
        image = op.apply(image, op.low + (op.high - op.low) * rng.random())
    return image


def cutout(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official Cutout on an ``(H, W, 3)`` ``uint8`` array: a new array with one rectangle set to
    :data:`~harness.data.augment.CUTOUT_FILL`.

    Side ``s = U(0, 0.5) * W`` (a float; ``s == 0`` leaves the image as it is). Centre ``(cx, cy)``:
    the official ``np.random.uniform(W)`` passes ``W`` as the *low* end with ``high = 1``, so
    ``cx = W + (1 - W) * U(0, 1)`` lies in ``(1, W]``, never in the first column (likewise ``cy``).
    Corner ``x0 = int(max(0, cx - s/2))``, far corner ``x1 = min(W, x0 + s)``, and PIL's ``rectangle``
    fills ``x0 .. int(x1)`` *including* that far column (clipped to the image), so the hole is up to
    ``int(s) + 1`` pixels wide; likewise for rows.
    """
    side = rng.random() * _MAX_CUTOUT
    if side <= 0.0:
        return image
    h, w = image.shape[:2]
    side *= w  # the official code scales by img.size[0], the width, for both axes
    cx = w + (1.0 - w) * rng.random()
    cy = h + (1.0 - h) * rng.random()
    x0, y0 = int(max(0.0, cx - side / 2.0)), int(max(0.0, cy - side / 2.0))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
    out = image.copy()
    out[y0 : y1 + 1, x0 : x1 + 1] = CUTOUT_FILL
    return out


# ------------------------------------------------------------------------------------------------- views


def weak_view(image: Image.Image, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """RandomResizedCrop(``size``) + flip: ``uint8`` ``(3, size, size)``.

    Parameters
    ----------
    image
        An RGB PIL image (:func:`load_rgb`).
    rng
        The image's own generator (the only source of randomness).
    size
        Side of the output (224 in the official recipe).

    Returns
    -------
    numpy.ndarray
        ``uint8`` ``(3, size, size)``, a new array.
    """
    return _chw(random_flip(random_resized_crop(image, size, rng), rng))


def strong_view(image: Image.Image, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """RandomResizedCrop + flip + RandAugment (2 ops) + Cutout; arguments and result as :func:`weak_view`."""
    augmented = rand_augment(random_flip(random_resized_crop(image, size, rng), rng), rng)
    return _chw(cutout(np.asarray(augmented, dtype=np.uint8), rng))


def eval_view(image: Image.Image, resize_size: int = RESIZE_SIZE, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize(``resize_size``) + CenterCrop(``size``), no randomness: ``uint8`` ``(3, size, size)``."""
    if resize_size < size:
        raise ValueError(f"resize_size ({resize_size}) must be at least the crop size ({size})")
    return _chw(center_crop(resize_shorter_side(image, resize_size), size))
