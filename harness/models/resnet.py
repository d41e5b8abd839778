"""CIFAR residual networks: the CRD ``resnet{8..110}``, ``resnet{8,32}x4`` and ``ResNet18``/``ResNet50``.

Both families are post-activation ResNets built from the same blocks; they differ only in stage layout,
stem width, the pooling (a fixed 8x8 window in the CRD family, adaptive in ``ResNet18/50``; the two differ
in the last bit) and two names fixed by the published checkpoints: the projection shortcut (``downsample`` in
the CRD family, ``shortcut`` in ``ResNet18/50``) and the classifier (``fc`` vs ``linear``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.layers import conv, conv_bn, global_avg_pool, init_weights, window_avg_pool


class _ResidualBlock(nn.Module):
    """``relu(residual(x) + shortcut(x))``; the shortcut is a 1x1 conv-BN projection when shapes change."""

    expansion = 1

    def _add_shortcut(self, in_planes: int, out_planes: int, stride: int, name: str) -> None:
        self._shortcut_name = name
        if stride != 1 or in_planes != out_planes:
            # Registered under the checkpoint's name, after the residual path, so key order matches too.
            self.add_module(name, conv_bn(in_planes, out_planes, 1, stride))
        else:
            self.add_module(name, None)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projection = getattr(self, self._shortcut_name)
        shortcut = x if projection is None else projection(x)
        return F.relu(self.residual(x) + shortcut)


class BasicBlock(_ResidualBlock):
    """Two 3x3 conv-BN layers (the first strided) plus the shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, shortcut_name: str = "shortcut"):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self._add_shortcut(in_planes, planes, stride, shortcut_name)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * planes``, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, shortcut_name: str = "shortcut"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv(in_planes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv(planes, out_planes, 1)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self._add_shortcut(in_planes, out_planes, stride, shortcut_name)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """3x3 stem, then stages ``layer1..layerN`` (the first at stride 1, the rest at stride 2), global
    average pooling and a linear classifier.

    Parameters
    ----------
    block
        ``BasicBlock`` or ``Bottleneck``.
    stem_width
        Output channels of the stem convolution.
    widths, depths
        Per stage: block width (``planes``) and number of blocks.
    num_classes
        Classifier outputs.
    shortcut_name, head_name
        Attribute names of the projection shortcut and the classifier, as in the checkpoints.
    pool
        ``(N, C, H, W) -> (N, C)`` before the classifier: ``window_avg_pool`` (the CRD resnets'
        ``AvgPool2d(8)``) or ``global_avg_pool`` (``ResNet18/50``'s ``AdaptiveAvgPool2d``).

    Initialisation: :func:`~harness.models.layers.init_weights` with torch's default classifier, as both
    model files do.

    Forward: (N, 3, H, W) float -> (N, num_classes) logits.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        *,
        stem_width: int,
        widths: Sequence[int],
        depths: Sequence[int],
        num_classes: int = 100,
        shortcut_name: str = "shortcut",
        head_name: str = "linear",
        pool: Callable[[torch.Tensor], torch.Tensor] = global_avg_pool,
    ):
        super().__init__()
        self.conv1 = conv(3, stem_width, 3)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_planes = stem_width
        self._stage_names = []
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, width, stride, shortcut_name=shortcut_name))
                in_planes = width * block.expansion
            self._stage_names.append(f"layer{i + 1}")
            self.add_module(self._stage_names[-1], nn.Sequential(*blocks))
        self._head_name = head_name
        self.add_module(head_name, nn.Linear(in_planes, num_classes))
        self._pool = pool
        init_weights(self, classifier="default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for name in self._stage_names:
            x = getattr(self, name)(x)
        return getattr(self, self._head_name)(self._pool(x))


def cifar_resnet(depth: int, widths: Sequence[int], num_classes: int = 100) -> ResNet:
    """CRD CIFAR ResNet of ``depth = 6n + 2`` layers: stem ``widths[0]``, three stages of ``n`` basic blocks.

    ``widths = (16, 16, 32, 64)`` gives ``resnet{depth}``; ``(32, 64, 128, 256)`` the ``x4`` variants.
    """
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (8, 14, 20, 32, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(
        BasicBlock,
        stem_width=widths[0],
        widths=widths[1:],
        depths=(n, n, n),
        num_classes=num_classes,
        shortcut_name="downsample",
        head_name="fc",
        pool=window_avg_pool,
    )


def resnet18(num_classes: int = 100) -> ResNet:
    """``ResNet18``: four stages of two basic blocks, widths 64..512 (11.2M parameters)."""
    return ResNet(
        BasicBlock, stem_width=64, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), num_classes=num_classes
    )


def resnet50(num_classes: int = 100) -> ResNet:
    """``ResNet50``: bottleneck stages of (3, 4, 6, 3) blocks, 2048 features (23.7M parameters)."""
    return ResNet(
        Bottleneck, stem_width=64, widths=(64, 128, 256, 512), depths=(3, 4, 6, 3), num_classes=num_classes
    )
