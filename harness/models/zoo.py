"""The built-in model zoo: every name ``--student`` / ``--teacher-model`` takes, mapped to its
constructor (taking ``num_classes``). Names are the checkpoint manifests' keys."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from harness.models.imagenet import IMAGENET_MODELS
from harness.models.mobilenetv2 import MobileNetV2
from harness.models.resnet import cifar_resnet, resnet18, resnet50
from harness.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from harness.models.vgg import VGG
from harness.models.wrn import WideResNet

__all__ = ["MODELS"]

_CIFAR_WIDTHS = (16, 16, 32, 64)
_X4_WIDTHS = (32, 64, 128, 256)

# name -> constructor taking ``num_classes``. Names are the checkpoint manifest's keys.
MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(cifar_resnet, d, _CIFAR_WIDTHS) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": partial(cifar_resnet, 8, _X4_WIDTHS),
    "resnet32x4": partial(cifar_resnet, 32, _X4_WIDTHS),
    "ResNet18": resnet18,
    "ResNet50": resnet50,
    **{f"wrn_{d}_{k}": partial(WideResNet, d, k) for d in (16, 40) for k in (1, 2)},
    **{f"vgg{d}": partial(VGG, d) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": partial(MobileNetV2, 0.5),
    "ShuffleV1": ShuffleNetV1,
    "ShuffleV2": ShuffleNetV2,
}


# ImageNet (torchvision / official SLD layouts, 1000 classes by default); model_info() tells the zoos apart.
MODELS.update(IMAGENET_MODELS)
