"""VGG with batch norm for CIFAR (the ``vgg*_bn`` models that CRD / mdistiller register as ``vgg{8..19}``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.layers import global_avg_pool, init_weights

# Conv widths per block; blocks are separated by 2x2 max pooling.
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _vgg_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """(3x3 conv with bias, BN, ReLU) per width, minus the last ReLU (applied by the network)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv blocks ``block0..block4``, max pooling after the first three (32 -> 4 pixels), global
    average pooling and a 512 -> ``num_classes`` ``classifier``.

    The reference also pools after ``block3``, but only for 64x64 inputs; CIFAR's 32x32 never takes it.
    Initialisation as in its file: He-normal convolutions with zero bias, ``N(0, 0.01)`` classifier
    weights with zero bias.
    """

    def __init__(self, depth: int, num_classes: int = 100):
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        in_channels = 3
        self._blocks = []
        for i, widths in enumerate(VGG_CONFIGS[depth]):
            self.add_module(f"block{i}", _vgg_block(in_channels, widths))
            self._blocks.append(f"block{i}")
            in_channels = widths[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self, classifier="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, name in enumerate(self._blocks):
            x = F.relu(getattr(self, name)(x))
            if i < 3:
                x = F.max_pool2d(x, 2)
        return self.classifier(global_avg_pool(x))
