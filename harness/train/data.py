"""The dataset a :class:`~harness.config.DataConfig` names, as the trainer's
:class:`~harness.data.base.TrainData`."""

from __future__ import annotations

import torch

from harness.config import DataConfig
from harness.data.base import TrainData
from harness.data.cifar import load_cifar100
from harness.data.resident import DeviceResidentData

__all__ = ["load_data"]


def load_data(config: DataConfig, device: torch.device) -> TrainData:
    """CIFAR-100, held on ``device`` as ``uint8`` once (limits applied), augmented there per batch."""
    cifar = load_cifar100(config.data_dir, download=config.download)
    return DeviceResidentData(
        cifar.train_images[: config.limit_train],
        cifar.train_labels[: config.limit_train],
        cifar.test_images[: config.limit_test],
        cifar.test_labels[: config.limit_test],
        num_classes=cifar.num_classes,
        device=device,
    )
