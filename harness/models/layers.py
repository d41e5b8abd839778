"""Building blocks shared by the CIFAR model zoo.

Parameter names matter here: the community teacher checkpoints (CRD / mdistiller) load by key, so each
helper below produces exactly the submodule layout (and hence ``state_dict`` keys) those models use.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
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


def window_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Average pooling with one window over the whole map, (N, C, H, W) -> (N, C).

    The CRD resnet, WRN, ShuffleNet and MobileNetV2 files pool with a fixed window equal to the final map
    on 32x32 inputs (``AvgPool2d(8)``, ``avg_pool2d(out, 4)``, ``AvgPool2d(2, ceil_mode=True)``); this is
    that call, bit for bit (it sums in another order than ``mean``: the last bit differs for about 2/3 of
    the features), and it also takes other sizes.
    """
    return F.avg_pool2d(x, x.shape[-2:]).flatten(1)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``AdaptiveAvgPool2d((1, 1))``, (N, C, H, W) -> (N, C): how ``ResNet18``/``ResNet50`` and VGG pool."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


Classifier = Literal["default", "zero_bias", "normal"]


def init_weights(model: nn.Module, *, classifier: Classifier) -> None:
    """The CRD / mdistiller initialisation: He-normal (fan-out) convolutions with zero bias, unit/zero
    batch norm, and the classifier as its model file leaves it.

    Parameters
    ----------
    model
        Every ``Conv2d``, ``BatchNorm2d`` and ``Linear`` in it is initialised, in ``modules()`` order.
    classifier
        ``"default"``: torch's ``Linear`` init is kept (the CRD resnets, ``ResNet18/50``); ``"zero_bias"``:
        torch's weight, zero bias (WRN); ``"normal"``: ``N(0, 0.01)`` weight, zero bias (VGG, MobileNetV2).

    The convolutions get ``normal_(0, sqrt(2 / (k * k * out_channels)))`` as the WRN, VGG and MobileNetV2
    files write it; the resnet files call ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, whose
    ``sqrt(2) / sqrt(n)`` rounds to the same float32 for every convolution in the zoo (checked by a test),
    and ``normal_`` draws with a float32 std. ShuffleNetV1/V2 call nothing: their files keep torch's
    default init.

    Examples
    --------
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    >>> init_weights(model, classifier="normal")
    >>> float(model[3].bias.abs().max())
    0.0
    """
    if classifier not in ("default", "zero_bias", "normal"):
        raise ValueError(f"classifier must be 'default', 'zero_bias' or 'normal', got {classifier!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and classifier != "default":
            if classifier == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
