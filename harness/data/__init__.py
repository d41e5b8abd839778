"""Datasets for the harness: the CIFAR-100 archive (:mod:`.cifar`), a small look-alike for tests and
demos (:mod:`.synthetic`), and batched on-device augmentation (:mod:`.augment`, imports torch; import it
directly).

Image folders (ImageNet and the user's own): scanning (:mod:`.folder`, re-exported here), the official
ImageNet views with Pillow (:mod:`.pil_augment`), the streamed worker pipeline (:mod:`.streamed`) and a
generated JPEG folder (:mod:`.synthetic_images`); the last three import torch or Pillow: import them
directly. The loader benchmark is :mod:`harness.bench.loader`.
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
from .folder import ImageFolderData, ImageSplit, scan_folder, scan_imagenet
from .synthetic import write_cifar100_archive

__all__ = [
    "CIFAR100",
    "CIFAR100_FILENAME",
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "DatasetError",
    "ImageFolderData",
    "ImageSplit",
    "default_data_dir",
    "load_cifar100",
    "scan_folder",
    "scan_imagenet",
    "write_cifar100_archive",
]
