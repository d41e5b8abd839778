"""Building blocks shared by the CIFAR model zoo.

Parameter names matter here: the community teacher checkpoints (CRD / mdistiller) load by key, so each
helper below produces exactly the submodule layout (and hence ``state_dict`` keys) those models use.
"""

from __future__ import annotations

import torch
from torch import nn


def conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *, groups: int = 1
) -> nn.Conv2d:
    """Bias-free ``Conv2d`` with "same" padding (``kernel_size // 2``): every conv here that a BN follows."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
    )


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    groups: int = 1,
    relu: bool = False,
) -> nn.Sequential:
    """Bias-free ``Conv2d`` ("same" padding) then ``BatchNorm2d``, optionally then ``ReLU``.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, groups
        As for ``nn.Conv2d``; padding is ``kernel_size // 2``.
    relu
        Append an in-place ``ReLU`` (no parameters, so keys stay ``0.*`` and ``1.*``).

    Returns
    -------
    nn.Sequential
        Children ``0`` (conv), ``1`` (batch norm) and, with ``relu``, ``2``.

    Examples
    --------
    >>> [k for k in conv_bn(3, 8, 3).state_dict()][:2]
    ['0.weight', '1.weight']
    """
    layers: list[nn.Module] = [
        conv(in_channels, out_channels, kernel_size, stride, groups=groups),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: (N, g*k, H, W) -> interleave the ``g`` groups' channels.

    Parameters
    ----------
    x
        Tensor of shape (N, C, H, W) with ``C`` divisible by ``groups``.
    groups
        Number of channel groups; ``1`` returns ``x`` unchanged.

    Returns
    -------
    torch.Tensor
        Same shape as ``x``; channel ``i*g + j`` of the result is channel ``j*(C/g) + i`` of ``x``.
    """
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes, (N, C, H, W) -> (N, C).

    The reference models use fixed-size ``AvgPool2d`` windows equal to the final feature map on 32x32
    inputs (8x8, 4x4, 2x2); a global mean gives the same logits there and also works on other sizes.
    """
    return x.mean(dim=(2, 3))


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions, zero conv bias, unit/zero batch norm; torch defaults for linear.

    The reference repositories mix several equivalent schemes (``normal_(0, sqrt(2 / (k*k*out)))`` is
    this He init); one scheme for every model keeps training from scratch comparable across students.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
