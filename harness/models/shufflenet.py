"""ShuffleNetV1 (groups 3) and ShuffleNetV2 (1x) for CIFAR: 1x1 stem, no stem pooling, 32 -> 4 pixels.

Their model files initialise nothing, so every layer keeps torch's default (``kaiming_uniform_(a=sqrt(5))``
weights, uniform biases, unit/zero batch norm); so do these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.layers import channel_shuffle, conv, window_avg_pool

_STEM = 24


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 reduce, shuffle, 3x3 depthwise, grouped 1x1 expand.

    Stride 2 concatenates a 3x3 average-pooled input (so ``out_channels`` here excludes the input's);
    stride 1 adds the input. The first unit after the 24-channel stem uses an ungrouped reduce.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int):
        super().__init__()
        mid = out_channels // 4
        self.stride = stride
        self.reduce_groups = 1 if in_channels == _STEM else groups
        self.conv1 = conv(in_channels, mid, 1, groups=self.reduce_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv(mid, mid, 3, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv(mid, out_channels, 1, groups=groups)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.reduce_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 with stage widths ``widths`` and ``depths`` units per stage."""

    def __init__(
        self,
        widths: Sequence[int] = (240, 480, 960),
        depths: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ):
        super().__init__()
        self.conv1 = conv(3, _STEM, 1)
        self.bn1 = nn.BatchNorm2d(_STEM)
        channels = _STEM
        self._stage_names = [f"layer{i + 1}" for i in range(len(widths))]
        for name, width, depth in zip(self._stage_names, widths, depths, strict=True):
            units = [ShuffleV1Unit(channels, width - channels, 2, groups)]
            units += [ShuffleV1Unit(width, width, 1, groups) for _ in range(depth - 1)]
            self.add_module(name, nn.Sequential(*units))
            channels = width
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for name in self._stage_names:
            x = getattr(self, name)(x)
        return self.linear(window_avg_pool(x))


class ShuffleV2Unit(nn.Module):
    """Split channels in half; the second half goes 1x1, 3x3 depthwise, 1x1; concatenate; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = conv(half, half, 1)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = conv(half, half, 3, groups=half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv(half, half, 1)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([keep, out], dim=1), 2)


class ShuffleV2DownUnit(nn.Module):
    """Stride-2 unit: both branches see the whole input (left: 3x3 dw, 1x1; right: 1x1, 3x3 dw, 1x1)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = conv(in_channels, in_channels, 3, 2, groups=in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = conv(in_channels, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv(in_channels, mid, 1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = conv(mid, mid, 3, 2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = conv(mid, mid, 1)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2: per stage one down unit then ``depths[i]`` units, a 1x1 conv to ``head_width``."""

    def __init__(
        self,
        widths: Sequence[int] = (116, 232, 464),
        depths: Sequence[int] = (3, 7, 3),
        head_width: int = 1024,
        num_classes: int = 100,
    ):
        super().__init__()
        self.conv1 = conv(3, _STEM, 1)
        self.bn1 = nn.BatchNorm2d(_STEM)
        channels = _STEM
        self._stage_names = [f"layer{i + 1}" for i in range(len(widths))]
        for name, width, depth in zip(self._stage_names, widths, depths, strict=True):
            units = [ShuffleV2DownUnit(channels, width)] + [ShuffleV2Unit(width) for _ in range(depth)]
            self.add_module(name, nn.Sequential(*units))
            channels = width
        self.conv2 = conv(channels, head_width, 1)
        self.bn2 = nn.BatchNorm2d(head_width)
        self.linear = nn.Linear(head_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for name in self._stage_names:
            x = getattr(self, name)(x)
        return self.linear(window_avg_pool(F.relu(self.bn2(self.conv2(x)))))
