"""The published recipes as :class:`~harness.config.TrainConfig`: a pair's official recipe for any
method name (:func:`pair_config`; names as :mod:`harness.method_names` spells them), the logit
standardization rewrite (:func:`logit_standardized`) and the recipe behind the community teachers
(:func:`teacher_config`). No torch.

Which code each base method's recipe is read from (``harness.pairs`` holds the per-pair SLD facts):

- ``sld``: the SLD repository's configs (per-pair lr, 240 epochs, 2 views);
- ``kd``, ``dkd``, ``ce``: mdistiller's configs (lr 0.05, 0.01 for MobileNet/ShuffleNet students; 240
  epochs; 1 view; DKD's beta per pair);
- ``mlkd``: the MLKD release as it stood when its numbers were published, which the LS repository and
  the SLD repository copy: 480 epochs with the lr still cut at 150/180/210, 2 views, lr per pair.
  **(quirk)** The MLKD release's configs now say 240 epochs (changed after publication); the
  published MLKD and LS-MLKD numbers come from 480-epoch runs (the LS repository's logs run 480
  epochs). ``optim.epochs = 240`` (``--epochs 240``) gives the current release's reading.

Switches a name adds (teacher processing, pseudo-teacher) change the loss only: the run keeps its base
method's recipe (lr, epochs, views), so ``sld-dkd`` trains like ``dkd``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from harness.config import (
    CEConfig,
    ConfigError,
    DataConfig,
    DKDConfig,
    KDConfig,
    MLKDConfig,
    OptimConfig,
    SLDConfig,
    TrainConfig,
)
from harness.method_names import canonical_name, parse_method
from harness.pairs import get_pair
from harness.runs import DEFAULT_RUNS_DIR, teacher_run_dir

__all__ = [
    "DKD_BETA_BY_PAIR",
    "IMAGENET_DKD_BETA",
    "LS_DEFAULT",
    "LS_DKD_BY_PAIR",
    "LS_KD_BY_PAIR",
    "LS_MLKD_BY_PAIR",
    "MLKD_EPOCHS",
    "MLKD_LR_BY_PAIR",
    "base_recipe_loss",
    "logit_standardized",
    "method_config",
    "method_views",
    "pair_config",
    "teacher_config",
]

# mdistiller's configs/cifar100/dkd/*.yaml set DKD.BETA per pair; pairs without a DKD config keep 8.
DKD_BETA_BY_PAIR = {
    "resnet56-resnet20": 2.0,
    "resnet110-resnet32": 2.0,
    "wrn40_2-wrn16_2": 6.0,
    "wrn40_2-wrn40_1": 6.0,
    "vgg13-vgg8": 6.0,
    "vgg13-mobilenetv2": 6.0,
}

# SOLVER.LR of the MLKD release's configs/cifar100/*.yaml. It has no config for wrn40_2-vgg8; that pair
# falls back to 0.025, the lr of its same-family pairs and of its SLD config.
MLKD_LR_BY_PAIR = {
    "resnet56-resnet20": 0.025,
    "resnet110-resnet32": 0.025,
    "resnet32x4-resnet8x4": 0.025,
    "wrn40_2-wrn16_2": 0.025,
    "wrn40_2-wrn40_1": 0.025,
    "vgg13-vgg8": 0.025,
    "resnet32x4-shufflenetv1": 0.01,
    "resnet32x4-shufflenetv2": 0.01,
    "wrn40_2-shufflenetv1": 0.01,
    "vgg13-mobilenetv2": 0.01,
    "resnet50-mobilenetv2": 0.01,
}
_MLKD_FALLBACK_LR = 0.025
MLKD_EPOCHS = 480  # the published MLKD / LS-MLKD runs (see the module docstring's quirk)

# Logit standardization (LS repository, tools/train.py): --base-temp and --kd-weight, 2 and 9 in its
# README's commands and for most pairs. Per pair, the LS repository's logs name the values behind each
# published LS number: their file names are "KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT" (its
# README), with a third number on the DKD logs, read here as the DKD beta before the rewrite.
LS_DEFAULT = (2.0, 9.0)  # (base temperature, KD weight)
LS_KD_BY_PAIR = {
    "resnet32x4-resnet8x4": (2.0, 9.0),
    "vgg13-vgg8": (3.0, 9.0),
    "wrn40_2-wrn40_1": (2.0, 9.0),
    "wrn40_2-wrn16_2": (2.0, 9.0),
    "resnet56-resnet20": (2.0, 9.0),
    "resnet110-resnet32": (2.0, 9.0),
    "resnet32x4-shufflenetv2": (2.0, 9.0),
    "vgg13-mobilenetv2": (3.0, 9.0),
    "resnet50-mobilenetv2": (3.0, 1.0),
}
# (base temperature, KD weight, beta); beta None: the pair's DKD beta. resnet56-resnet20 has two logs,
# (3, 12, 2) and (3, 18, 2), best 72.27 and 72.24 against the published 72.32; the first is used.
LS_DKD_BY_PAIR: dict[str, tuple[float, float, float | None]] = {
    "resnet32x4-resnet8x4": (2.0, 9.0, None),
    "resnet32x4-shufflenetv2": (2.0, 9.0, None),
    "resnet110-resnet32": (2.0, 15.0, 2.0),
    "resnet56-resnet20": (3.0, 12.0, 2.0),
    "vgg13-vgg8": (2.0, 15.0, 2.0),
    "vgg13-mobilenetv2": (3.0, 9.0, 2.0),
    "wrn40_2-wrn16_2": (2.0, 12.0, 2.0),
    "wrn40_2-wrn40_1": (2.0, 12.0, 2.0),
    "resnet50-mobilenetv2": (2.0, 15.0, 2.0),
}
LS_MLKD_BY_PAIR = {
    "resnet32x4-resnet8x4": (2.0, 9.0),
    "wrn40_2-wrn40_1": (2.0, 9.0),
    "wrn40_2-wrn16_2": (2.0, 9.0),
    "resnet110-resnet32": (2.0, 9.0),
    "resnet50-mobilenetv2": (2.0, 9.0),
    "resnet32x4-shufflenetv2": (2.0, 6.0),
    "vgg13-mobilenetv2": (2.0, 6.0),
    "vgg13-vgg8": (2.0, 6.0),
}
# The LS repository's cfg.py sets KD.LOSS.CE_WEIGHT = 1, which its KD and MLKD read (their yaml files
# leave the KD section alone), so LS-KD and LS-MLKD weigh CE 1 where mdistiller's KD and MLKD weigh 0.1.
_LS_CE_WEIGHT = 1.0


# ImageNet baselines, per pair: mdistiller's configs/imagenet/{r34_r18,r50_mv1}/{kd,dkd}.yaml (KD: T 1,
# CE 0.5, KD 0.5; DKD: CE 1, alpha 1 (cfg.py), beta 0.5 / 2, T 1, one warm-up epoch) and the LS
# repository's configs/imagenet/r50_mv2/mlkd.yaml (MLKD: T0 1, CE 0.5, KD 0.5), which has no r34_r18 MLKD
# config: the same settings are used there.
IMAGENET_DKD_BETA = {"resnet34-resnet18": 0.5, "resnet50-mobilenetv1": 2.0}


def _imagenet_loss(base: str, pair: str) -> Any:
    if base == "kd":
        return KDConfig(temperature=1.0, ce_weight=0.5, kd_weight=0.5)
    if base == "dkd":
        return DKDConfig(
            ce_weight=1.0, alpha=1.0, beta=IMAGENET_DKD_BETA[pair], temperature=1.0, warmup_epochs=1
        )
    return MLKDConfig(temperature=1.0, ce_weight=0.5, kd_weight=0.5)


def base_recipe_loss(base: str, pair: str | None = None) -> Any:
    """The loss settings of base method ``base`` as published; with ``pair``, that pair's (DKD's beta
    is per pair, SLD's settings are read from the pair's :class:`harness.pairs.Recipe`, the ImageNet
    pairs have their own baselines).

    >>> base_recipe_loss("dkd", "wrn40_2-wrn16_2").beta, base_recipe_loss("sld") == SLDConfig()
    (6.0, True)
    >>> base_recipe_loss("kd", "resnet34-resnet18").temperature
    1.0
    """
    if pair is not None and base in ("kd", "dkd", "mlkd") and get_pair(pair).dataset == "imagenet":
        return _imagenet_loss(base, get_pair(pair).name)
    if base == "dkd":
        return DKDConfig(beta=DKD_BETA_BY_PAIR.get(pair or "", DKDConfig.beta))
    if base == "sld" and pair is not None:
        recipe = get_pair(pair).recipe
        return SLDConfig(
            temperatures=tuple(recipe.temperatures),
            gamma=recipe.gamma,
            ce_weight=recipe.ce_weight,
            kd_weight=recipe.kd_weight,
            teacher_processing="swap" if recipe.teacher_swap else "none",
            pseudo_teacher=True,
            detach_pseudo_teacher=recipe.detach_pseudo_teacher,
        )
    losses = {"ce": CEConfig, "kd": KDConfig, "mlkd": MLKDConfig, "sld": SLDConfig}
    if base not in losses:
        raise ConfigError(f"unknown base method {base!r}; one of ce, kd, dkd, mlkd, sld")
    return losses[base]()


def logit_standardized(
    loss: Any,
    *,
    pair: str | None = None,
    base_temperature: float | None = None,
    kd_weight: float | None = None,
) -> Any:
    """``loss`` with logit standardization on and the rewrite the LS repository's ``--logit-stand``
    applies (``tools/train.py``), with ``--base-temp`` = ``base_temperature`` and ``--kd-weight`` =
    ``kd_weight`` (default: the values of ``pair``'s published LS run, else 2 and 9):

    - KD: temperature = base, KD weight = w (CE weight 1, the LS repository's default);
    - DKD: alpha = alpha * w, beta = beta * w (beta per pair as the LS logs name it), T = base;
    - MLKD: T0 = base, KD weight = w (CE weight 1, as for KD);
    - SLD: no published LS recipe; only ``logit_stand`` is set, temperatures and weights stay SLD's
      (``kd_weight`` replaces the KD weight when given; a base temperature is refused).

    Raises
    ------
    ConfigError
        ``loss`` is already standardized, is CE's, or SLD is given a base temperature.

    Examples
    --------
    >>> ls = logit_standardized(KDConfig(), pair="vgg13-vgg8")
    >>> (ls.temperature, ls.kd_weight, ls.ce_weight, ls.logit_stand)
    (3.0, 9.0, 1.0, True)
    >>> ls = logit_standardized(DKDConfig(beta=6.0), pair="wrn40_2-wrn16_2")
    >>> (ls.alpha, ls.beta, ls.temperature)
    (12.0, 24.0, 2.0)
    """
    if isinstance(loss, CEConfig):
        raise ConfigError("logit standardization needs a teacher; method 'ce' has none")
    if loss.logit_stand:
        raise ConfigError("the loss is already logit-standardized (the rewrite applies once)")

    def pick(table: dict[str, Any]) -> tuple[float, float]:
        base, weight = table.get(pair or "", LS_DEFAULT)[:2]
        return (
            base if base_temperature is None else float(base_temperature),
            weight if kd_weight is None else float(kd_weight),
        )

    if isinstance(loss, KDConfig):
        base, weight = pick(LS_KD_BY_PAIR)
        changes: dict[str, Any] = {"temperature": base, "kd_weight": weight, "ce_weight": _LS_CE_WEIGHT}
    elif isinstance(loss, DKDConfig):
        base, weight = pick(LS_DKD_BY_PAIR)
        beta = LS_DKD_BY_PAIR.get(pair or "", (0.0, 0.0, None))[2]
        changes = {
            "alpha": loss.alpha * weight,
            "beta": (loss.beta if beta is None else beta) * weight,
            "temperature": base,
        }
    elif isinstance(loss, MLKDConfig):
        base, weight = pick(LS_MLKD_BY_PAIR)
        changes = {"temperature": base, "kd_weight": weight, "ce_weight": _LS_CE_WEIGHT}
    elif isinstance(loss, SLDConfig):
        if base_temperature is not None:
            raise ConfigError(
                "sld has no single temperature to rewrite (no published LS-SLD recipe); "
                "set --temperatures instead of --base-temp"
            )
        changes = {} if kd_weight is None else {"kd_weight": float(kd_weight)}
    else:
        raise ConfigError(f"logit standardization does not apply to {type(loss).__name__}")
    try:
        return dataclasses.replace(loss, logit_stand=True, **changes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def method_config(
    name: str,
    pair: str | None = None,
    *,
    base_temperature: float | None = None,
    kd_weight: float | None = None,
) -> tuple[str, Any]:
    """``(base method, loss config)`` of method ``name`` in ``pair``'s published recipe (the base
    method's own defaults without a pair); ``base_temperature`` and ``kd_weight`` are the logit
    standardization's (``ls-`` names only).

    >>> method_config("sld-dkd", "resnet56-resnet20")[1].beta
    2.0
    """
    spec = parse_method(name)
    if not spec.logit_stand and (base_temperature is not None or kd_weight is not None):
        raise ConfigError(
            f"--base-temp and the LS weight are parameters of logit standardization; method {name!r} has "
            "none (use --logit-stand or an ls- name)"
        )
    loss = base_recipe_loss(spec.base, pair)
    if spec.logit_stand:
        loss = logit_standardized(loss, pair=pair, base_temperature=base_temperature, kd_weight=kd_weight)
    return spec.base, spec.apply(loss)


def method_views(base: str, recipe_views: int = 2) -> int:
    """The views base method ``base`` trains on in its published recipe: the recipe's (weak + strong)
    for ``sld`` and ``mlkd``, which read both, one weak view for ``kd``, ``dkd`` and ``ce``.

    >>> method_views("sld"), method_views("mlkd"), method_views("kd")
    (2, 2, 1)
    """
    return recipe_views if base in ("sld", "mlkd") else 1


def pair_config(
    pair_name: str,
    method: str = "sld",
    *,
    out_dir: str | None = None,
    base_temperature: float | None = None,
    kd_weight: float | None = None,
) -> TrainConfig:
    """The official recipe of a pair (``harness.pairs``) for method name ``method`` as a
    :class:`TrainConfig`.

    The base method sets the recipe (module docstring): ``sld`` gets the pair's SLD lr and both views,
    ``mlkd`` the MLKD lr, 480 epochs and both views, ``kd``, ``dkd`` and ``ce`` mdistiller's lr and one
    weak view (pass ``views=2`` via :func:`harness.config.with_overrides` to give them SLD's
    augmentation). ``ls-`` names get :func:`logit_standardized` with the pair's published LS values
    unless ``base_temperature`` / ``kd_weight`` say otherwise.

    >>> config = pair_config("wrn40_2-wrn16_2", "ls-mlkd")
    >>> (config.method, config.loss.temperature, config.loss.kd_weight, config.optim.epochs)
    ('mlkd', 2.0, 9.0, 480)
    """
    pair = get_pair(pair_name)
    base, loss = method_config(method, pair.name, base_temperature=base_temperature, kd_weight=kd_weight)
    recipe, imagenet = pair.recipe, pair.dataset == "imagenet"
    mlkd_lr = recipe.lr if imagenet else MLKD_LR_BY_PAIR.get(pair.name, _MLKD_FALLBACK_LR)
    lr = {"sld": recipe.lr, "mlkd": mlkd_lr}.get(base, recipe.baseline_lr)
    optim = OptimConfig(
        epochs=MLKD_EPOCHS if base == "mlkd" and not imagenet else recipe.epochs,
        batch_size=recipe.batch_size,
        lr=lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        lr_milestones=tuple(recipe.lr_decay_epochs),
        lr_decay=recipe.lr_decay_rate,
    )
    views = method_views(base, recipe.num_views)
    data = (
        DataConfig(views=views, dataset="imagenet", eval_batch_size=recipe.test_batch_size)
        if imagenet
        else DataConfig(views=views)
    )
    return TrainConfig(
        student=pair.student,
        teacher=pair.teacher,
        pair=pair.name,
        method=base,
        loss=loss,
        optim=optim,
        data=data,
        out_dir=out_dir or f"{DEFAULT_RUNS_DIR}/{pair.name}/{canonical_name(method)}",
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
