"""MobileNetV2 for CIFAR, the half-width variant (``mobile_half`` in CRD / mdistiller)."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.layers import conv_bn, init_weights, window_avg_pool

# (expansion t, channels c, blocks n, first stride s) at width 1. The stem has stride 2 and the first stages
# stride 1 (ImageNet MobileNetV2 strides every early stage), so 32x32 inputs end at 2x2.
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (always present, even at t=1), 3x3 depthwise, linear 1x1 project; identity add when
    the stride is 1 and the width is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        # Flattened into one Sequential: the checkpoint keys are conv.{0,1,3,4,6,7}.
        self.conv = nn.Sequential(
            *conv_bn(in_channels, hidden, 1, relu=True),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden, relu=True),
            *conv_bn(hidden, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 at ``width_mult``, 1280-channel head: (N, 3, H, W) -> (N, num_classes) logits.

    Initialisation as in its file: He-normal convolutions, ``N(0, 0.01)`` classifier weights, zero bias.
    """

    def __init__(self, width_mult: float = 0.5, num_classes: int = 100):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = conv_bn(3, channels, 3, 2, relu=True)
        stages = []
        for expansion, c, n, stride in _SETTINGS:
            out_channels = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn(channels, last_channels, 1, relu=True)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_weights(self, classifier="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.classifier(window_avg_pool(self.conv2(x)))
