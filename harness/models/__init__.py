"""CIFAR-100 model zoo: the CRD / mdistiller architectures, named as in their teacher checkpoints.

Every model maps (N, 3, 32, 32) float images to (N, num_classes) logits, and its ``state_dict`` has the
same keys, order and shapes as the published checkpoints, so ``load_weights`` takes them as they are.

Examples
--------
>>> model = build_model("resnet8x4")
>>> count_parameters(model)
1233540
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from harness.models.mobilenetv2 import MobileNetV2
from harness.models.resnet import cifar_resnet, resnet18, resnet50
from harness.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from harness.models.vgg import VGG
from harness.models.weights import CheckpointError, count_parameters, load_weights
from harness.models.wrn import WideResNet

__all__ = ["MODELS", "CheckpointError", "build_model", "count_parameters", "load_weights"]

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


def build_model(name: str, num_classes: int = 100, **options: object) -> nn.Module:
    """Construct a freshly initialised model by its registry name.

    Parameters
    ----------
    name
        A key of ``MODELS`` (e.g. ``"wrn_40_2"``, ``"resnet32x4"``, ``"MobileNetV2"``).
    num_classes
        Classifier outputs; 100 for CIFAR-100 (and for the published checkpoints).
    options
        Keywords of the model's constructor, e.g. ``official_bn_updates=False`` for the ``wrn_*`` models
        (:class:`~harness.models.wrn.WideResNet`).

    Returns
    -------
    nn.Module
        Forward: (N, 3, H, W) float -> (N, num_classes) logits.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the valid ones), ``num_classes < 1``, or an option the model
        does not take.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    constructor = MODELS[name]
    accepted = inspect.signature(constructor).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} takes no option {', '.join(map(repr, unknown))}")
    return constructor(num_classes=num_classes, **options)
