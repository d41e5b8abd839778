"""ImageNet models whose ``state_dict`` keys, order and shapes are those of the published weight files.

==================  ============================================================  ============
name                layout (and initialisation)                                   parameters
==================  ============================================================  ============
``resnet18``        torchvision ``resnet18`` (basic blocks 2-2-2-2)               11,689,512
``resnet34``        torchvision ``resnet34`` (basic blocks 3-4-6-3)               21,797,672
``resnet50``        torchvision ``resnet50`` (bottlenecks 3-4-6-3, stride on 3x3)  25,557,032
``mobilenet_v1``    the official SLD/mdistiller ImageNet student                   4,231,976
``mobilenet_v2``    torchvision ``mobilenet_v2`` (width 1.0)                        3,504,872
==================  ============================================================  ============

Every model maps ``(N, 3, H, W)`` float images (224 x 224 in the published recipes) to ``(N, num_classes)``
logits, 1000 classes by default. torchvision's published ResNet weight files (raw state_dicts, e.g.
``resnet34-333f7ec4.pth``) load into these with :func:`harness.models.load_weights`, as the official SLD
code loads its teachers. torchvision itself is not needed.

The official code registers its MobileNet student as ``"MobileNetV2"``, but the network is a MobileNet
V1 (3x3 stem + 13 depthwise-separable blocks, 1024 features): here it is ``mobilenet_v1``, and
``mobilenet_v2`` is the real V2 in torchvision's layout.

Examples
--------
>>> from harness.models import build_model, count_parameters
>>> count_parameters(build_model("resnet18"))
11689512
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from harness.models.layers import conv, conv_bn
from harness.models.resnet import BasicBlock, Bottleneck

__all__ = [
    "IMAGENET_MODELS",
    "ImageNetResNet",
    "MobileNetV1",
    "MobileNetV2",
    "mobilenet_v1",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
]

IMAGENET_NUM_CLASSES = 1000


def _kaiming_convs(model: nn.Module) -> None:
    """torchvision's scheme: He-normal (fan-out) convolutions with zero bias, unit/zero batch norm."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------- ResNet


class ImageNetResNet(nn.Module):
    """torchvision's ResNet (v1.5: the stride sits on the 3x3 conv of a bottleneck).

    Stem ``conv1`` (7x7, stride 2) + ``bn1`` + ReLU + 3x3 max-pool (stride 2), stages ``layer1..layer4``
    of widths 64..512 (stride 2 from ``layer2`` on), global average pooling and ``fc``. Projection
    shortcuts are named ``downsample`` as in torchvision. Initialisation as torchvision's default
    constructor: He-normal fan-out convolutions, unit/zero batch norm, torch's default ``fc``
    (``zero_init_residual=False``).

    Parameters
    ----------
    block
        ``BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50).
    depths
        Blocks per stage, e.g. ``(3, 4, 6, 3)``.
    num_classes
        Classifier outputs.

    Forward: (N, 3, H, W) float -> (N, num_classes) logits.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        num_classes: int = IMAGENET_NUM_CLASSES,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, width, stride, shortcut_name="downsample"))
                in_planes = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        # Adaptive, as torchvision: the official code's AvgPool2d(7) is the same pooling at 224 px.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _kaiming_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = IMAGENET_NUM_CLASSES) -> ImageNetResNet:
    """torchvision ``resnet18``: basic blocks (2, 2, 2, 2), 512 features."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = IMAGENET_NUM_CLASSES) -> ImageNetResNet:
    """torchvision ``resnet34``: basic blocks (3, 4, 6, 3), 512 features (the R34 -> R18 teacher)."""
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes)


def resnet50(num_classes: int = IMAGENET_NUM_CLASSES) -> ImageNetResNet:
    """torchvision ``resnet50``: bottlenecks (3, 4, 6, 3), 2048 features (the R50 -> MobileNet teacher)."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# ------------------------------------------------------------------------------------------- MobileNet V1

_V1_BLOCKS = (  # (out_channels, stride) of the 13 depthwise-separable blocks
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(nn.Module):
    """The official SLD/mdistiller ImageNet student (registered there as ``"MobileNetV2"``).

    ``model`` is a ``Sequential``: ``model.0`` the 3x3 stride-2 stem (conv, BN, ReLU), ``model.1..13``
    depthwise-separable blocks (3x3 depthwise conv, BN, ReLU, 1x1 conv, BN, ReLU: keys ``k.0, k.1, k.3,
    k.4``), ``model.14`` the average pool; then ``fc``. The official module sets no initialisation, so
    every layer keeps torch's default (unlike the ResNets).

    Two departures from the official file, neither of which changes a key or a 224-px result:

    - ``model.14`` is a global average pool; the official ``AvgPool2d(7)`` equals it on the 7x7 map of a
      224-px input, but fails below 193 px and pools only a 7x7 corner above 255 px;
    - ``fc`` has ``num_classes`` outputs; the official one is fixed at 1000 (it ignores the argument).

    Forward: (N, 3, H, W) float -> (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = IMAGENET_NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, relu=True)]
        in_channels = 32
        for out_channels, stride in _V1_BLOCKS:
            depthwise = conv_bn(in_channels, in_channels, 3, stride, groups=in_channels, relu=True)
            pointwise = conv_bn(in_channels, out_channels, 1, relu=True)
            layers.append(nn.Sequential(*depthwise, *pointwise))  # children 0..5, as the official conv_dw
            in_channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


def mobilenet_v1(num_classes: int = IMAGENET_NUM_CLASSES) -> MobileNetV1:
    """The official SLD ImageNet MobileNet (a V1): 13 depthwise-separable blocks, 1024 features."""
    return MobileNetV1(num_classes)


# ------------------------------------------------------------------------------------------- MobileNet V2

_V2_SETTINGS = (  # (expansion t, channels c, repeats n, first stride s), torchvision's table at width 1.0
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
    """torchvision's ``Conv2dNormActivation`` with ReLU6: children ``0`` (conv), ``1`` (BN), ``2``."""
    return nn.Sequential(
        conv(in_channels, out_channels, kernel_size, stride, groups=groups),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """torchvision's inverted residual: ``conv`` = [1x1 expand (t > 1)] + 3x3 depthwise + 1x1 linear + BN,
    with the identity added when the stride is 1 and the width is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            conv(hidden, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's ``mobilenet_v2`` at width 1.0: ``features.0`` stem (32 ch, stride 2), ``features.1..17``
    inverted residuals, ``features.18`` the 1x1 conv to 1280, then ``classifier`` = Dropout(0.2) + Linear.
    Initialised as torchvision: He-normal fan-out convolutions, unit/zero BN, ``Linear`` from N(0, 0.01)
    with zero bias. The dropout draws from torch's global RNG, as torchvision's does.

    Forward: (N, 3, H, W) float -> (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = IMAGENET_NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        in_channels = 32
        for expansion, channels, repeats, first_stride in _V2_SETTINGS:
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                layers.append(InvertedResidual(in_channels, channels, stride, expansion))
                in_channels = channels
        layers.append(_conv_bn_relu6(in_channels, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1280, num_classes))
        _kaiming_convs(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = IMAGENET_NUM_CLASSES) -> MobileNetV2:
    """torchvision ``mobilenet_v2`` (width 1.0, 1280 features, dropout 0.2)."""
    return MobileNetV2(num_classes)


# name -> constructor taking ``num_classes`` (default 1000). Names are the ImageNet manifest's keys.
IMAGENET_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
}
