"""Datasets for the harness: the CIFAR-100 archive (:mod:`.cifar`), a small look-alike for tests and
demos (:mod:`.synthetic`), and batched on-device augmentation (:mod:`.augment`, imports torch; import it
directly).
"""

from __future__ import annotations

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

__all__ = [
    "CIFAR100",
    "CIFAR100_FILENAME",
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "DatasetError",
    "default_data_dir",
    "load_cifar100",
    "write_cifar100_archive",
]
