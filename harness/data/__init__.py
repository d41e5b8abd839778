"""CIFAR-100 for the harness: the official archive (:mod:`.cifar`), a small look-alike for tests and
demos (:mod:`.synthetic`), and batched GPU-friendly augmentation (:mod:`.augment`).

The augmentation names are loaded on first use, so that importing the loader (``sld --help``, a NumPy-only
script) does not import torch.
"""

from __future__ import annotations

from typing import Any

from .cifar import (
    CIFAR100,
    CIFAR100_FILENAME,
    CIFAR100_MD5,
    CIFAR100_URL,
    DatasetError,
    default_data_dir,
    load_cifar100,
)
from .synthetic import write_cifar100_archive

_AUGMENT_NAMES = frozenset(
    {
        "CIFAR100_MEAN",
        "CIFAR100_STD",
        "CUTOUT_FILL",
        "RANDAUGMENT_OPS",
        "RandAugmentOp",
        "cutout",
        "eval_view",
        "rand_augment",
        "random_crop_flip",
        "strong_view",
        "to_float_normalized",
        "weak_view",
    }
)


def __getattr__(name: str) -> Any:
    if name in _AUGMENT_NAMES:
        from . import augment

        return getattr(augment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CIFAR100",
    "CIFAR100_FILENAME",
    "CIFAR100_MD5",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "CUTOUT_FILL",
    "RANDAUGMENT_OPS",
    "DatasetError",
    "RandAugmentOp",
    "cutout",
    "default_data_dir",
    "eval_view",
    "load_cifar100",
    "rand_augment",
    "random_crop_flip",
    "strong_view",
    "to_float_normalized",
    "weak_view",
    "write_cifar100_archive",
]
