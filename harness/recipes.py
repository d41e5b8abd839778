"""The published recipes as :class:`~harness.config.TrainConfig`: a pair's official recipe per method
(:func:`pair_config`) and the recipe behind the community teachers (:func:`teacher_config`). No torch.

The numbers come from the official configs (the SLD code, mdistiller); ``harness.pairs`` holds the
per-pair facts they are built from.
"""

from __future__ import annotations

import os

from harness.config import (
    METHOD_CONFIGS,
    CEConfig,
    ConfigError,
    DataConfig,
    DKDConfig,
    KDConfig,
    OptimConfig,
    TrainConfig,
)
from harness.pairs import get_pair
from harness.runs import DEFAULT_RUNS_DIR, teacher_run_dir

__all__ = ["DKD_BETA_BY_PAIR", "pair_config", "teacher_config"]

# mdistiller's configs/cifar100/dkd/*.yaml set DKD.BETA per pair; pairs without a DKD config keep 8.
DKD_BETA_BY_PAIR = {
    "resnet56-resnet20": 2.0,
    "resnet110-resnet32": 2.0,
    "wrn40_2-wrn16_2": 6.0,
    "wrn40_2-wrn40_1": 6.0,
    "vgg13-vgg8": 6.0,
    "vgg13-mobilenetv2": 6.0,
}


def pair_config(pair_name: str, method: str = "sld", *, out_dir: str | None = None) -> TrainConfig:
    """The official recipe of a pair (``harness.pairs``) as a :class:`TrainConfig`.

    ``sld`` gets the pair's SLD lr, loss settings and both views (the official SLD code); ``kd``,
    ``dkd`` and ``ce`` get mdistiller's baseline lr and one weak view, the protocol behind the published
    KD/DKD numbers (pass ``views=2`` via :func:`harness.config.with_overrides` to give them SLD's
    augmentation).
    """
    if method not in METHOD_CONFIGS:
        raise ConfigError(f"method must be one of {sorted(METHOD_CONFIGS)}; got {method!r}")
    pair = get_pair(pair_name)
    recipe = pair.recipe
    losses = {
        "ce": CEConfig(),
        "kd": KDConfig(),
        "sld": recipe.sld_config(),
        "dkd": DKDConfig(beta=DKD_BETA_BY_PAIR.get(pair.name, DKDConfig.beta)),
    }
    optim = OptimConfig(
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr if method == "sld" else recipe.baseline_lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        lr_milestones=tuple(recipe.lr_decay_epochs),
        lr_decay=recipe.lr_decay_rate,
    )
    data = DataConfig(views=recipe.num_views if method == "sld" else 1)
    return TrainConfig(
        student=pair.student,
        teacher=pair.teacher,
        pair=pair.name,
        method=method,
        loss=losses[method],
        optim=optim,
        data=data,
        out_dir=out_dir or f"{DEFAULT_RUNS_DIR}/{pair.name}/{method}",
    )


_SMALL_MODEL_LR = 0.01  # CRD/mdistiller train MobileNet and ShuffleNet at 0.01, everything else at 0.05


def teacher_config(model: str, runs_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR) -> TrainConfig:
    """The recipe behind the community teachers (CRD / mdistiller ``*_vanilla``) for ``model``, writing
    to ``RUNS/teachers/<model>/`` (:func:`harness.runs.teacher_run_dir`), where ``sld train``
    and ``sld reproduce`` look for a teacher.

    Cross-entropy alone, the weak view only, 240 epochs of batch 64, SGD lr 0.05 (0.01 for MobileNet
    and ShuffleNet) x0.1 at 150/180/210, weight decay 5e-4; a WRN's BatchNorm statistics update once
    per step (CRD's training code, which made the community teachers, has no second BatchNorm pass).
    ``sld train-teacher`` and ``harness.reproduce`` build teachers from it (flags via
    :func:`harness.config.with_overrides`).

    >>> teacher_config("MobileNetV2", "runs").optim.lr, teacher_config("wrn_40_2", "runs").out_dir
    (0.01, 'runs/teachers/wrn_40_2')
    """
    small = model.startswith(("MobileNet", "Shuffle"))
    return TrainConfig(
        student=model,
        method="ce",
        loss=CEConfig(),
        optim=OptimConfig(lr=_SMALL_MODEL_LR if small else OptimConfig.lr),
        data=DataConfig(views=1),
        official_wrn_bn=False,
        out_dir=str(teacher_run_dir(model, runs_dir)),
    )
