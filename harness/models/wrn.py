"""Wide residual networks ``wrn_{depth}_{k}`` (pre-activation, depth = 6n + 4, widths 16k/32k/64k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.layers import conv, init_weights, window_avg_pool


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
    """WRN-``depth``-``widen_factor`` for 32x32 inputs: (N, 3, H, W) -> (N, num_classes) logits.

    Parameters
    ----------
    depth, widen_factor
        ``depth = 6n + 4`` (``n`` blocks per stage); stage widths ``16k, 32k, 64k``.
    num_classes
        Classifier outputs.
    official_bn_updates
        The CRD / mdistiller WRN forward, after the logits, runs three batch norms a second time on the
        features they saw (``block2.layer[0].bn1`` on block 1's output, ``block3.layer[0].bn1`` on block
        2's, the final ``bn1`` on block 3's) to return pre-activation features that the logit losses never
        use. In training mode that moves those three layers' running statistics twice per forward (a
        momentum of ``1 - 0.9**2`` instead of 0.1) and counts two batches; the published wrn_16_2 /
        wrn_40_1 students were trained so. ``True`` (default) does the same (without autograd: only the
        statistics change); ``False`` updates every layer once. The logits are the same either way.

    Initialisation as in its file: He-normal convolutions, unit/zero batch norm, torch's default
    classifier weight with a zero bias.

    Examples
    --------
    >>> model = WideResNet(16, 2, official_bn_updates=False)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    """

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 100, *, official_bn_updates: bool = True
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 (16, 22, 28, 40, ...), got {depth}")
        if not isinstance(official_bn_updates, bool):
            raise TypeError(f"official_bn_updates must be a bool, got {official_bn_updates!r}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.official_bn_updates = official_bn_updates
        self.conv1 = conv(3, widths[0], 3)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self, classifier="zero_bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.block1(self.conv1(x))
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        logits = self.fc(window_avg_pool(F.relu(self.bn1(f3))))
        if self.training and self.official_bn_updates:
            with torch.no_grad():  # the outputs are discarded, as the logit losses discard them
                self.block2.layer[0].bn1(f1)
                self.block3.layer[0].bn1(f2)
                self.bn1(f3)
        return logits
