"""The dataset a :class:`~harness.config.DataConfig` names, as the trainer's
:class:`~harness.data.base.TrainData`: CIFAR-100 held on the device, an ImageNet-layout or any image
folder streamed through DataLoader workers, or a small image folder decoded once and treated like CIFAR."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from harness.config import ConfigError, DataConfig
from harness.data.base import TrainData
from harness.data.cifar import load_cifar100
from harness.data.folder import ImageFolderData, ImageSplit, scan_folder, scan_imagenet
from harness.data.resident import DeviceResidentData

__all__ = ["IMAGENET_SIZE", "load_data", "scan"]

IMAGENET_SIZE = 224  # official ImageNet crop; CIFAR-style folders default to 32 px
_CIFAR_SIZE = 32


def load_data(config: DataConfig, device: torch.device, *, batch_size: int, seed: int = 0) -> TrainData:
    """The training data of ``config`` on ``device``, cut into global batches of ``batch_size``.

    ``seed`` seeds a streamed dataset's epoch orders and views (the device-resident one draws from the
    run's generator instead). Image folders are checked against ``config.classes`` when it is set (a
    resumed or replayed run): another class list is an error, never a silent relabelling.

    Raises
    ------
    ConfigError
        An image-folder dataset without ``data_dir``.
    harness.data.cifar.DatasetError
        The data is missing or malformed; the message says what was expected and found.
    """
    common = {"batch_size": batch_size, "views": config.views, "eval_batch_size": config.eval_batch_size}
    if config.dataset == "cifar100":
        cifar = load_cifar100(config.data_dir, download=config.download)
        return DeviceResidentData(
            cifar.train_images[: config.limit_train],
            cifar.train_labels[: config.limit_train],
            cifar.test_images[: config.limit_test],
            cifar.test_labels[: config.limit_test],
            num_classes=cifar.num_classes,
            device=device,
            **common,
        )
    folder = scan(config)
    if _augment(config) == "cifar":
        from harness.data.pil_augment import decode_resized

        size = config.image_size or _CIFAR_SIZE
        train_x, test_x = (decode_resized(split, size) for split in (folder.train, folder.val))
        return DeviceResidentData(
            train_x,
            folder.train.labels,
            test_x,
            folder.val.labels,
            num_classes=folder.num_classes,
            device=device,
            classes=folder.classes,
            **common,
        )
    from harness.data.streamed import StreamedImageData

    size = config.image_size or IMAGENET_SIZE
    return StreamedImageData(
        folder,
        seed=seed,
        image_size=size,
        resize_size=config.resize_size or round(size * 8 / 7),  # 256 for the official 224
        num_workers=config.workers,
        device=device,
        **common,
    )


def scan(config: DataConfig) -> ImageFolderData:
    """The image folder of an ``imagenet`` or ``folder`` config, scanned (class folders, files), checked
    against ``config.classes``, with ``limit_train`` / ``limit_test`` applied as evenly spaced subsets."""
    if config.data_dir is None:
        raise ConfigError(f"dataset {config.dataset!r} needs --data-dir (the folder that holds the images)")
    if config.dataset == "imagenet":
        folder = scan_imagenet(config.data_dir, classes=config.classes)
    else:
        folder = scan_folder(
            config.data_dir,
            val_fraction=config.val_fraction,
            split_seed=config.split_seed,
            classes=config.classes,
        )
    return dataclasses.replace(
        folder, train=_spread(folder.train, config.limit_train), val=_spread(folder.val, config.limit_test)
    )


def _augment(config: DataConfig) -> str:
    return "imagenet" if config.dataset == "imagenet" else config.augment or "imagenet"


def _spread(split: ImageSplit, limit: int | None) -> ImageSplit:
    # Files are sorted by class: the first N would all be of the first classes.
    if limit is None or limit >= len(split):
        return split
    return split.take(np.unique(np.linspace(0, len(split) - 1, limit).round().astype(np.int64)))
