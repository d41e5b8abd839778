"""The model zoo: the CIFAR-100 CRD / mdistiller architectures and the ImageNet models of the official SLD
code (torchvision layouts), each named as in its published checkpoints.

Every model maps (N, 3, H, W) float images (32 px for CIFAR-100, 224 px for ImageNet) to
(N, num_classes) logits, and its ``state_dict`` has the same keys, order and shapes as the published
checkpoints, so ``load_weights`` takes them as they are. :func:`model_info` tags each name with its
dataset and default class count (100 or 1000); :func:`build_model` also takes a plug-in spec
(``"package.module:callable"`` or an ``sld.models`` entry point, see :mod:`harness.models.registry`).

Examples
--------
>>> model = build_model("resnet8x4")
>>> count_parameters(model)
1233540
"""

from __future__ import annotations

from torch import nn

from harness.models.registry import ModelInfo, ModelSpecError, model_info, resolve_model
from harness.models.weights import CheckpointError, count_parameters, load_weights
from harness.models.zoo import MODELS

__all__ = [
    "MODELS",
    "CheckpointError",
    "ModelInfo",
    "ModelSpecError",
    "build_model",
    "count_parameters",
    "load_weights",
    "model_info",
    "resolve_model",
]

def build_model(name: str, num_classes: int | None = None, **options: object) -> nn.Module:
    """Construct a freshly initialised model from its spec (a registry name or a plug-in).

    Parameters
    ----------
    name
        A key of ``MODELS`` (e.g. ``"wrn_40_2"``, ``"resnet32x4"``, ``"resnet34"``), an import path
        ``"package.module:callable"`` or an ``sld.models`` entry-point name (:func:`resolve_model`).
    num_classes
        Classifier outputs. ``None``: the model's own default, 100 for the CIFAR-100 zoo (and its
        published checkpoints), 1000 for the ImageNet models; a plug-in keeps its callable's default.
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
        ``num_classes < 1``, an option the model does not take; or (``ModelSpecError``, a
        ``ValueError``) an unknown name (the message lists the valid ones) or a plug-in that cannot be
        imported or called or returns no ``nn.Module``.

    Examples
    --------
    >>> build_model("resnet8x4").fc.out_features, build_model("resnet18").fc.out_features
    (100, 1000)
    """
    return resolve_model(name)(num_classes, **options)
