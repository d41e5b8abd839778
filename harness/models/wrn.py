"""Wide residual networks ``wrn_{depth}_{k}`` (pre-activation, depth = 6n + 4, widths 16k/32k/64k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.layers import conv, global_avg_pool, init_weights


class WideBasicBlock(nn.Module):
    """Pre-activation block: ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``.

    When the width or stride changes, the 1x1 ``convShortcut`` projects the *pre-activated* input (as in the
    reference WRN code); otherwise the raw input is added back.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv(in_planes, out_planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = conv(out_planes, out_planes, 3)
        projects = in_planes != out_planes
        self.convShortcut = conv(in_planes, out_planes, 1, stride) if projects else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class NetworkBlock(nn.Module):
    """One stage: ``layer`` holds its blocks (the extra level of nesting is part of the checkpoint keys)."""

    def __init__(self, depth: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs: (N, 3, H, W) -> (N, num_classes) logits."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = conv(3, widths[0], 3)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(global_avg_pool(F.relu(self.bn1(x))))
