"""Training configuration: frozen dataclasses, one reason per default, JSON round trip.

The CLI only builds a :class:`TrainConfig`; the trainer only reads one. ``config.json`` written beside
every run loads back with :func:`load_config`, so any run can be repeated exactly. No torch here: the
CLI builds and checks configs before it pays for importing torch.

Every value that enters a config from JSON (:func:`train_config_from_dict`) or as an override
(:func:`with_overrides`, the CLI's flags) is checked against its field's annotation before the
dataclass checks its range: ``"teacher_swap": "no"`` or ``"temperatures": "123"`` is refused with the
field named, never read as something else. The check is driven by the annotations alone, so it covers
every config dataclass, also those added later; :class:`TrainConfig` checks its nested configs the same
way when it is built directly in Python.

Defaults are the official CIFAR-100 recipe of the SLD code (built on mdistiller): 240 epochs, batch 64,
SGD momentum 0.9, weight decay 5e-4, lr x0.1 at epochs 150/180/210; a pair's recipe sets its lr.

``TrainConfig.method`` names a base method (``METHOD_CONFIGS``: ce, kd, dkd, mlkd, sld) and ``loss`` is
its config; every one but CE carries the :class:`LogitSwitches` (teacher processing, pseudo-teacher,
logit standardization). Readable names such as ``ls-mlkd`` or ``sld-dkd`` are a base with switches set
(:mod:`harness.method_names`); :mod:`harness.recipes` builds the published config of a name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import sld_core

__all__ = [
    "AMP_MODES",
    "DATASETS",
    "METHOD_CONFIGS",
    "PROCESSING_ROWS",
    "ROW_CHOICE_PROCESSINGS",
    "SWAP_MODES",
    "TEACHER_PROCESSINGS",
    "TRACKERS",
    "CEConfig",
    "ConfigError",
    "DKDConfig",
    "DataConfig",
    "DistillConfig",
    "KDConfig",
    "LogitSwitches",
    "MLKDConfig",
    "MethodConfig",
    "RESUMABLE_FIELDS",
    "OptimConfig",
    "SLDConfig",
    "TrainConfig",
    "check_field_types",
    "flat_config",
    "load_config",
    "resume_conflicts",
    "save_config",
    "train_config_from_dict",
    "train_config_to_dict",
    "upgrade_config_dict",
    "with_overrides",
]

AMP_MODES = ("off", "bf16", "fp16")
DATASETS = ("cifar100", "imagenet", "folder")
# Where every epoch record also goes besides metrics.jsonl (harness.train.trackers; sld train --log).
TRACKERS = ("csv", "tensorboard", "wandb")
# Fields a resumed run may change: they say where and how fast it runs, not what it computes.
RESUMABLE_FIELDS = frozenset(
    {
        "out_dir",
        "log_every",
        "trackers",
        "compile",
        "cuda_graphs",
        "data.data_dir",
        "data.download",
        "data.eval_batch_size",
        "data.workers",
    }
)


INFINITY_OK = "inf allowed"  # Annotated[float, INFINITY_OK]: a field where inf means "no bound"


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class CEConfig:
    """Cross-entropy on the labels alone: teachers and the no-distillation baseline."""


# The names of sld_core.process_teacher (sld_core.TEACHER_PROCESSORS), in the order tables list them.
TEACHER_PROCESSINGS = (
    "none",
    "swap",
    "conditional_swap",
    "soft_addition",
    "max_addition",
    "double_target",
    "halve_target",
    "label_smoothing",
)
SWAP_MODES = ("below", "at_least")  # sld_core.conditional_swap: gap < threshold, or gap >= threshold
PROCESSING_ROWS = ("wrong", "all")
# The processings whose rule may also be applied to the rows the teacher gets right (processing_rows).
ROW_CHOICE_PROCESSINGS = frozenset({"soft_addition", "double_target", "halve_target", "label_smoothing"})


@dataclass(frozen=True)
class LogitSwitches:
    """The switches every logit-distillation method (kd, dkd, mlkd, sld) takes, orthogonal to its loss.

    - **Teacher processing**: the teacher's logits go through ``sld_core.process_teacher(name)`` before
      the method's loss sees them (``swap`` is SLD's; the others are the alternatives the paper rejects).
    - **Pseudo-teacher**: after epoch ``gamma`` the student's own swapped logits
      (``sld_core.pseudo_teacher_logits``) are a second target of the method's distillation term.
    - **Logit standardization**: student and teacher logits are z-scored per row before the
      temperature (``sld_core.standardize_logits``); the published recipes also rewrite the method's
      temperature and weights (``harness.recipes.logit_standardized``).

    Subclasses set their own defaults (SLD: swap and the pseudo-teacher on)."""

    teacher_processing: str = "none"  # a TEACHER_PROCESSINGS name, applied to the teacher's logits first
    # conditional_swap only: the gap p_top - p_target that splits the wrong rows (inf, or >= 1: all of them)
    swap_threshold: Annotated[float, INFINITY_OK] = 0.5
    swap_mode: str = "below"  # conditional_swap only: swap where the gap is "below" it, or "at_least" it
    processing_rows: str = "wrong"  # soft/double/halve/label smoothing: the wrong rows (the swap's), or "all"
    pseudo_teacher: bool = False  # the student's own swapped logits as a second target after epoch gamma
    gamma: float = 150  # SLD's loss scheduling: the pseudo-teacher joins after this epoch (of 240)
    detach_pseudo_teacher: bool = False  # True: no gradient through swap(student); official SLD code: False
    logit_stand: bool = False  # z-score logits per row before the temperature (Sun et al., CVPR 2024)

    _prefix: ClassVar[str] = "loss"  # how error messages name this section

    def _check_switches(self) -> None:
        p = self._prefix
        _check(
            self.teacher_processing in TEACHER_PROCESSINGS,
            f"{p}.teacher_processing",
            self.teacher_processing,
            f"must be one of {list(TEACHER_PROCESSINGS)}",
        )
        threshold = self.swap_threshold
        _check(
            _is_number(threshold) and not math.isnan(threshold) and threshold >= 0,
            f"{p}.swap_threshold",
            threshold,
            "must be a probability gap >= 0 (>= 1 or inf: every wrong row)",
        )
        _check(
            self.swap_mode in SWAP_MODES,
            f"{p}.swap_mode",
            self.swap_mode,
            f"must be one of {list(SWAP_MODES)}",
        )
        _check(
            self.processing_rows in PROCESSING_ROWS,
            f"{p}.processing_rows",
            self.processing_rows,
            f"must be one of {list(PROCESSING_ROWS)}",
        )
        _check(
            _is_number(self.gamma) and not math.isnan(self.gamma),
            f"{p}.gamma",
            self.gamma,
            "must be a number (an epoch)",
        )
        for name in ("pseudo_teacher", "detach_pseudo_teacher", "logit_stand"):
            value = getattr(self, name)
            _check(isinstance(value, bool), f"{p}.{name}", value, "must be true or false")

    def processing_params(self) -> dict[str, Any]:
        """The keyword parameters ``sld_core.process_teacher(logits, targets, self.teacher_processing,
        **params)`` takes for this config (the paper's soft-addition fraction and smoothing epsilon,
        0.1 each, are the core's defaults)."""
        if self.teacher_processing == "conditional_swap":
            return {"threshold": float(self.swap_threshold), "mode": self.swap_mode}
        if self.teacher_processing in ROW_CHOICE_PROCESSINGS:
            return {"rows": self.processing_rows}
        return {}


@dataclass(frozen=True)
class KDConfig(LogitSwitches):
    """Hinton KD (mdistiller ``CFG.KD``), with the :class:`LogitSwitches`."""

    temperature: float = 4.0  # mdistiller CFG.KD.TEMPERATURE
    ce_weight: float = 0.1  # mdistiller CFG.KD.LOSS.CE_WEIGHT
    kd_weight: float = 0.9  # mdistiller CFG.KD.LOSS.KD_WEIGHT

    _prefix: ClassVar[str] = "kd"

    def __post_init__(self) -> None:
        check_field_types(self, "kd")
        self._check_switches()
        _check(
            _is_number(self.temperature) and self.temperature > 0,
            "kd.temperature",
            self.temperature,
            "must be > 0",
        )
        for name in ("ce_weight", "kd_weight"):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, f"kd.{name}", value, "must be >= 0")


@dataclass(frozen=True)
class DKDConfig(LogitSwitches):
    """Decoupled KD (mdistiller ``CFG.DKD``), with the :class:`LogitSwitches`; beta is per pair in
    mdistiller's configs."""

    ce_weight: float = 1.0  # mdistiller CFG.DKD.CE_WEIGHT
    alpha: float = 1.0  # mdistiller CFG.DKD.ALPHA: target-class (TCKD) weight
    beta: float = 8.0  # mdistiller CFG.DKD.BETA: non-target (NCKD) weight; 2 for resnet56/110, 6 wrn/vgg
    temperature: float = 4.0  # mdistiller CFG.DKD.T
    warmup_epochs: int = 20  # mdistiller CFG.DKD.WARMUP: the KD term ramps in linearly

    _prefix: ClassVar[str] = "dkd"

    def __post_init__(self) -> None:
        check_field_types(self, "dkd")
        self._check_switches()
        _check(
            _is_number(self.temperature) and self.temperature > 0,
            "dkd.temperature",
            self.temperature,
            "must be > 0",
        )
        for name in ("ce_weight", "alpha", "beta"):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, f"dkd.{name}", value, "must be >= 0")
        _check(
            _is_int(self.warmup_epochs) and self.warmup_epochs >= 0,
            "dkd.warmup_epochs",
            self.warmup_epochs,
            "must be an integer >= 0",
        )


@dataclass(frozen=True)
class MLKDConfig(LogitSwitches):
    """Multi-Level Logit Distillation (Jin et al., CVPR 2023) as the published code trains it, with the
    :class:`LogitSwitches`: :meth:`core` gives the ``sld_core.MLKDConfig`` of its loss (the quirks of
    the published arithmetic and their switches are documented in :mod:`sld_core.mlkd`)."""

    temperature: float = 4.0  # T0, the first of the five temperatures (T0, 3, 5, 2, 6): cfg.KD.TEMPERATURE
    ce_weight: float = 0.1  # the MLKD release's cfg.KD.LOSS.CE_WEIGHT
    kd_weight: float = 0.9  # the MLKD release's cfg.KD.LOSS.KD_WEIGHT: every kd, cc and bc term
    mask_per_row: bool = False  # published (quirk): the confidence mask scales an already-reduced loss
    strong_reads_strong: bool = False  # published (quirk): the strong sum's T = 2, 6 terms read the weak view

    _prefix: ClassVar[str] = "mlkd"

    def __post_init__(self) -> None:
        check_field_types(self, "mlkd")
        self._check_switches()
        for name in ("mask_per_row", "strong_reads_strong"):
            value = getattr(self, name)
            _check(isinstance(value, bool), f"mlkd.{name}", value, "must be true or false")
        try:
            self.core()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mlkd.{exc}") from None

    def core(self) -> sld_core.MLKDConfig:
        """The loss settings as ``sld_core.MLKDConfig`` (what ``sld_core.mlkd_loss`` takes)."""
        return sld_core.MLKDConfig(
            temperature=self.temperature,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            logit_stand=self.logit_stand,
            mask_per_row=self.mask_per_row,
            strong_reads_strong=self.strong_reads_strong,
        )

    @property
    def temperatures(self) -> tuple[float, ...]:
        """``(T0, 3, 5, 2, 6)``: the temperatures of the instance-level terms (and the pseudo-teacher's)."""
        return self.core().temperatures


@dataclass(frozen=True)
class SLDConfig(LogitSwitches):
    """SLD as the harness trains it: the official recipe is multi-temperature KD with the swap as teacher
    processing and the pseudo-teacher on. With the defaults (and processing ``none`` or ``swap``, no
    logit standardization) it is exactly ``sld_core.SLDConfig`` and trains through the fused
    ``backends.sld_loss``; :meth:`core` gives that config."""

    teacher_processing: str = "swap"  # SLD.py swaps the teacher's target and top logits; "none": no swap
    pseudo_teacher: bool = True  # SLD.py: the swapped student is a second teacher after epoch gamma
    temperatures: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)  # SLD.py: KL terms summed, each * T^2
    ce_weight: float = 0.1  # cfg.KD.LOSS.CE_WEIGHT: the swapped teacher already carries the label
    kd_weight: float = 0.9  # cfg.KD.LOSS.KD_WEIGHT

    _prefix: ClassVar[str] = "sld"

    def __post_init__(self) -> None:
        check_field_types(self, "sld")
        self._check_switches()
        temperatures = self.temperatures
        _check(
            isinstance(temperatures, tuple) and temperatures and all(_is_number(t) for t in temperatures),
            "sld.temperatures",
            temperatures,
            "must be a non-empty list of numbers",
        )
        object.__setattr__(self, "temperatures", tuple(float(t) for t in temperatures))
        try:
            self.core()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sld.{exc}") from None

    def core(self) -> sld_core.SLDConfig:
        """The ``sld_core.SLDConfig`` of this config: the swap is its ``teacher_swap`` (other teacher
        processings and logit standardization are not part of it; ``harness.train.methods`` composes
        them)."""
        return sld_core.SLDConfig(
            temperatures=self.temperatures,
            gamma=self.gamma,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            teacher_swap=self.teacher_processing == "swap",
            pseudo_teacher=self.pseudo_teacher,
            detach_pseudo_teacher=self.detach_pseudo_teacher,
        )


DistillConfig = KDConfig | DKDConfig | MLKDConfig | SLDConfig
MethodConfig = CEConfig | DistillConfig
# The method name in a config selects which dataclass its `loss` section is. These are the base
# methods; readable names such as "ls-mlkd" or "sld-dkd" are a base plus switches (harness.method_names).
METHOD_CONFIGS: dict[str, type] = {
    "ce": CEConfig,
    "kd": KDConfig,
    "dkd": DKDConfig,
    "mlkd": MLKDConfig,
    "sld": SLDConfig,
}


@dataclass(frozen=True)
class OptimConfig:
    """SGD with a multistep schedule, stepped once per epoch."""

    epochs: int = 240  # official CIFAR-100 recipe
    batch_size: int = 64  # official recipe; the lr values below are tuned for it
    lr: float = 0.05  # mdistiller's default; a pair's recipe overrides it (0.025 for most SLD pairs)
    momentum: float = 0.9  # official recipe
    nesterov: bool = False  # official recipe (plain heavy-ball momentum)
    weight_decay: float = 5e-4  # official CIFAR configs (mdistiller's global default 1e-4 is ImageNet's)
    lr_milestones: tuple[int, ...] = (150, 180, 210)  # epochs after which lr is multiplied by lr_decay
    lr_decay: float = 0.1  # official recipe

    def __post_init__(self) -> None:
        check_field_types(self, "optim")
        _check(
            _is_int(self.epochs) and self.epochs >= 1, "optim.epochs", self.epochs, "must be an integer >= 1"
        )
        _check(
            _is_int(self.batch_size) and self.batch_size >= 2,
            "optim.batch_size",
            self.batch_size,
            "must be an integer >= 2 (BatchNorm needs two rows)",
        )
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "must lie in [0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(0 < self.lr_decay <= 1, "optim.lr_decay", self.lr_decay, "must lie in (0, 1]")
        m = self.lr_milestones
        _check(
            isinstance(m, tuple) and all(_is_int(e) and e >= 1 for e in m) and list(m) == sorted(set(m)),
            "optim.lr_milestones",
            m,
            "must be strictly increasing positive integers",
        )


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where it is, and how each batch is viewed.

    ``cifar100`` is held on the device and augmented there; ``imagenet`` (``train/<class>/``,
    ``val/<class>/`` image folders) and ``folder`` (any folder of class sub-folders) are decoded and
    augmented in DataLoader workers (``augment="imagenet"``), or, for a folder with ``augment="cifar"``,
    decoded once at ``image_size`` and then treated like CIFAR."""

    data_dir: str | None = None  # None: harness.data.cifar.default_data_dir() (cifar100 only)
    download: bool = True  # fetch the archive (md5-checked) when it is missing (cifar100 only)
    views: int = 2  # official SLD/MLKD CIFAR code: weak + strong view, loss summed; 1 = weak only
    limit_train: int | None = None  # N training images (demos, tests): CIFAR's first N, a folder's spread
    limit_test: int | None = None  # N test images only, likewise
    eval_batch_size: int = 512  # inference only: bigger batches just finish sooner
    dataset: str = "cifar100"  # cifar100 | imagenet | folder
    image_size: int | None = None  # training crop / test centre crop side; None: 32 (CIFAR-style), 224
    resize_size: int | None = None  # ImageNet-style test resize before the crop; None: image_size * 8 / 7
    augment: str | None = None  # folder: "imagenet" (streamed, the official ImageNet views) or "cifar"
    val_fraction: float | None = None  # folder without val/: held-out fraction of each class (seeded)
    split_seed: int = 0  # seeds that held-out split; it never changes with the training seed
    workers: int = 4  # streamed: DataLoader decode processes per rank
    classes: tuple[str, ...] | None = None  # class names in label order, recorded at the first start

    def __post_init__(self) -> None:
        check_field_types(self, "data")
        _check(self.dataset in DATASETS, "data.dataset", self.dataset, f"must be one of {list(DATASETS)}")
        _check(
            self.augment in (None, "imagenet", "cifar"),
            "data.augment",
            self.augment,
            "must be 'imagenet', 'cifar' or null",
        )
        _check(
            self.augment is None or self.dataset == "folder",
            "data.augment",
            self.augment,
            "applies to dataset 'folder' only",
        )
        for name in ("image_size", "resize_size"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= 8), f"data.{name}", value,
                   "must be None or an integer >= 8")
        _check(
            self.val_fraction is None or (isinstance(self.val_fraction, float) and 0 < self.val_fraction < 1),
            "data.val_fraction",
            self.val_fraction,
            "must be None or a number in (0, 1)",
        )
        _check(_is_int(self.split_seed) and self.split_seed >= 0, "data.split_seed", self.split_seed,
               "must be an integer >= 0")
        _check(_is_int(self.workers) and self.workers >= 0, "data.workers", self.workers,
               "must be an integer >= 0")
        _check(
            self.classes is None
            or (isinstance(self.classes, tuple) and all(isinstance(c, str) and c for c in self.classes)),
            "data.classes",
            self.classes,
            "must be None or a list of class names",
        )
        _check(self.views in (1, 2), "data.views", self.views, "must be 1 (weak) or 2 (weak + strong)")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            _check(
                value is None or (_is_int(value) and value >= 2),
                f"data.{name}",
                value,
                "must be None or an integer >= 2",
            )
        _check(
            _is_int(self.eval_batch_size) and self.eval_batch_size >= 1,
            "data.eval_batch_size",
            self.eval_batch_size,
            "must be an integer >= 1",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on except the device (``train(config, device)`` takes that)."""

    student: str  # a key of harness.models.MODELS
    method: str = "sld"  # the base method: a key of METHOD_CONFIGS / harness.train.methods.METHODS
    loss: MethodConfig = field(default_factory=SLDConfig)  # the method's own settings
    teacher: str | None = None  # model name; required by every method but "ce"
    teacher_checkpoint: str | None = None  # path; the CLI finds one when it is not given
    pair: str | None = None  # the pair id this run reproduces, for reports
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0  # seeds python, numpy, torch and the augmentation generator
    amp: str = "off"  # exact float32 by default; "bf16" is the fast choice on recent GPUs
    channels_last: bool = False  # NHWC activations: faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the student: minutes of warm-up, pays off only on long runs
    cuda_graphs: bool = False  # CUDA: replay each full-batch step as one graph (launch-bound small models)
    sync_bn: bool = False  # DDP, CUDA only: BatchNorm over the global batch; off: per rank, as officially
    # WRN students: three BatchNorm layers update their running statistics twice per step, as the
    # official WRN forward does (docs/official_differences.md); False: once, the clean behaviour.
    official_wrn_bn: bool = True
    out_dir: str = "runs/train"  # holds config.json, metrics.jsonl, last.pt and best.pt
    log_every: int = 50  # steps between progress updates; each is a CPU-GPU sync, so not every step
    trackers: tuple[str, ...] = ()  # TRACKERS names: where the epoch records (and step scalars) also go

    def __post_init__(self) -> None:
        check_field_types(self)  # also the nested configs: a TrainConfig built in Python is checked too
        _check(
            isinstance(self.student, str) and self.student != "", "student", self.student, "must name a model"
        )
        expected = METHOD_CONFIGS.get(self.method)
        _check(expected is not None, "method", self.method, f"must be one of {sorted(METHOD_CONFIGS)}")
        _check(
            type(self.loss) is expected,
            "loss",
            type(self.loss).__name__,
            f"must be a {expected.__name__} for method {self.method!r}",
        )
        if self.method != "ce":
            _check(bool(self.teacher), "teacher", self.teacher, f"is required by method {self.method!r}")
        if self.method == "mlkd":
            _check(
                self.data.views == 2,
                "data.views",
                self.data.views,
                "must be 2 for method 'mlkd' (its loss reads the weak and the strong view at once)",
            )
        _check(self.amp in AMP_MODES, "amp", self.amp, f"must be one of {list(AMP_MODES)}")
        _check(isinstance(self.sync_bn, bool), "sync_bn", self.sync_bn, "must be true or false")
        _check(isinstance(self.cuda_graphs, bool), "cuda_graphs", self.cuda_graphs, "must be true or false")
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "must be an integer >= 0")
        _check(
            _is_int(self.log_every) and self.log_every >= 1,
            "log_every",
            self.log_every,
            "must be an integer >= 1",
        )
        _check(
            all(name in TRACKERS for name in self.trackers) and len(set(self.trackers)) == len(self.trackers),
            "trackers",
            self.trackers,
            f"must name each of {list(TRACKERS)} at most once",
        )


def with_overrides(
    config: TrainConfig, overrides: dict[str, Any], *, skip_none: bool = True
) -> TrainConfig:
    """``config`` with dotted fields replaced, e.g. ``{"optim.lr": 0.1, "loss.gamma": 5}``. With
    ``skip_none`` (the default) ``None`` values are skipped (an option that was not given); without it
    ``None`` is a value like any other (``sld train --set data.image_size=null``). Every dataclass
    re-validates itself.

    >>> base = TrainConfig(student="resnet8", method="ce", loss=CEConfig())
    >>> with_overrides(base, {"optim.lr": 0.1, "seed": None}).optim.lr
    0.1
    """
    for path, value in overrides.items():
        if value is None and skip_none:
            continue
        config = _replace_path(config, path.split("."), value, path)
    return config


def _replace_path(obj: Any, parts: list[str], value: Any, path: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if parts[0] not in names:
        raise ConfigError(f"{path}: {type(obj).__name__} has no field {parts[0]!r}; fields: {sorted(names)}")
    if len(parts) > 1:
        value = _replace_path(getattr(obj, parts[0]), parts[1:], value, path)
    else:
        value = _coerce(value, _field_types(type(obj))[parts[0]], path)
    try:
        return dataclasses.replace(obj, **{parts[0]: value})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def train_config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`train_config_to_dict`; unknown or missing keys raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a training config must be a JSON object; got {type(data).__name__}")
    data = dict(data)
    method = data.get("method", "sld")
    if method not in METHOD_CONFIGS:
        raise ConfigError(f"method must be one of {sorted(METHOD_CONFIGS)}; got {method!r}")
    if "loss" in data:  # the one union-typed section: the method says which dataclass it is
        data["loss"] = _build(METHOD_CONFIGS[method], data["loss"], "loss")
    return _build(TrainConfig, data, "")


def flat_config(config: TrainConfig) -> dict[str, Any]:
    """The config as ``{"optim.epochs": 240, "loss.gamma": 150, ...}``; lists become tuples (hashable)."""

    def flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
        return out

    return flatten(train_config_to_dict(config), "")


def resume_conflicts(
    saved: TrainConfig, requested: TrainConfig, *, ignore: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """Why ``requested`` cannot continue the run ``saved`` describes: the fields outside
    :data:`RESUMABLE_FIELDS` (and ``ignore``) where the two differ, as ``"optim.lr: 0.05 -> 0.1"``,
    sorted. Empty when ``train(requested, resume=True)`` accepts the run, and when a finished run
    already is what ``requested`` asks for.

    >>> base = TrainConfig(student="resnet8", method="ce", loss=CEConfig())
    >>> resume_conflicts(base, with_overrides(base, {"optim.lr": 0.1, "out_dir": "elsewhere"}))
    ['optim.lr: 0.05 -> 0.1']
    """
    old, new = flat_config(saved), flat_config(requested)
    skipped = RESUMABLE_FIELDS | set(ignore)
    return [
        f"{name}: {old.get(name)!r} -> {new.get(name)!r}"
        for name in sorted(old.keys() | new.keys())
        if name not in skipped and old.get(name) != new.get(name)
    ]


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write ``config`` as indented JSON."""
    Path(path).write_text(json.dumps(train_config_to_dict(config), indent=2) + "\n")


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a config written by :func:`save_config` (e.g. a run's ``config.json``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    try:
        return train_config_from_dict(upgrade_config_dict(data))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# Loss keys of configs written before the teacher processing was a switch, and what they became.
_LEGACY_SWAP_KEYS = ("teacher_swap", "swap_teacher")  # sld's, and kd's / dkd's


def upgrade_config_dict(data: Any) -> Any:
    """A config dict written before the teacher processing became a switch, in today's keys: the loss's
    ``teacher_swap`` (sld) or ``swap_teacher`` (kd, dkd) flag becomes ``teacher_processing`` ``"swap"``
    or ``"none"``, so older runs still load, resume and are skipped when done. Anything else, and any
    dict that already has ``teacher_processing``, is returned as it is.

    >>> upgrade_config_dict({"method": "kd", "loss": {"temperature": 4.0, "swap_teacher": True}})["loss"]
    {'temperature': 4.0, 'teacher_processing': 'swap'}
    """
    loss = data.get("loss") if isinstance(data, dict) else None
    if not isinstance(loss, dict):
        return data
    for key in _LEGACY_SWAP_KEYS:  # a hand-edited legacy flag is checked like any other bool
        if key in loss and not isinstance(loss[key], bool):
            raise ConfigError(f"loss.{key} must be true or false; got {loss[key]!r}")
    if "teacher_processing" in loss:
        return data
    legacy = [key for key in _LEGACY_SWAP_KEYS if key in loss]
    if len(legacy) != 1:
        return data
    loss = dict(loss)
    loss["teacher_processing"] = "swap" if loss.pop(legacy[0]) else "none"
    return {**data, "loss": loss}


def _build(cls: type, values: Any, where: str) -> Any:
    """``cls(**values)`` from JSON: each value checked against its field's annotation (lists become
    tuples, objects nested dataclasses), a clear error for bad keys. ``where`` is the dotted path of
    ``values`` in the whole config ("" at the top)."""
    if not isinstance(values, dict):
        what = where or "a training config"
        raise ConfigError(f"{what} must be a JSON object; got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    hints = _field_types(cls)
    kwargs = {k: _coerce(v, hints[k], _dotted(where, k)) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:  # the dataclass's own range checks name the field already
        raise
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where or 'config'}: {exc}") from None
    except ValueError as exc:  # SLDConfig's own validation raises plain ValueError
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def check_field_types(obj: Any, where: str = "") -> None:
    """Check every field of the dataclass ``obj`` (and of the dataclasses nested in it) against its
    annotation, strictly (a tuple field holds a tuple); :class:`ConfigError` names the first field off.

    Every config class here calls it first in ``__post_init__``; :class:`TrainConfig` also checks its
    nested sections with it, so a section class that does not call it itself is covered inside a run.

    >>> check_field_types(OptimConfig(), "optim")  # every field holds its annotated type: no error
    """
    for name, hint in _field_types(type(obj)).items():
        value = getattr(obj, name)
        _coerce(value, hint, _dotted(where, name), strict=True)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_field_types(value, _dotted(where, name))


def _dotted(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a dataclass's fields (``from __future__ import annotations`` leaves
    strings; ``typing.get_type_hints`` resolves them in the class's module)."""
    hints = typing.get_type_hints(cls, include_extras=True)  # keeps INFINITY_OK
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str, *, strict: bool = False) -> Any:
    """``value`` as the field ``where`` of annotation ``hint`` takes it, or :class:`ConfigError`.

    JSON-shaped values are accepted and converted (lists for tuples, objects for dataclasses) unless
    ``strict``. bool is never an int or a float here (``True`` is not 1 epoch); floats must be finite;
    an int is a float (PEP 484's numeric tower)."""
    problem = f"{where} must be {_describe(hint)}; got {value!r}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Annotated:
        # inf passes; nan too, for the field's range check to name what the field takes
        unbounded = INFINITY_OK in args[1:] and args[0] is float
        if unbounded and isinstance(value, float) and not math.isfinite(value):
            return value
        return _coerce(value, args[0], where, strict=strict)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(problem)
        for arg in args:
            if arg is type(None) or (dataclasses.is_dataclass(arg) and not isinstance(value, arg)):
                continue  # a union of dataclasses takes instances only: a dict does not say which one
            try:
                return _coerce(value, arg, where, strict=strict)
            except ConfigError:
                continue
        raise ConfigError(problem)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(problem)
    if origin in (tuple, list):
        if not isinstance(value, origin if strict else (tuple, list)) or isinstance(value, str):
            raise ConfigError(problem)
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[X, Y]: one type per place
            if len(value) != len(args):
                raise ConfigError(problem)
            pairs = enumerate(zip(value, args))
            items = [_coerce(v, a, f"{where}[{i}]", strict=strict) for i, (v, a) in pairs]
        else:
            item = args[0] if args else Any
            items = [_coerce(v, item, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
        return origin(items)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict) and not strict:
            return _build(hint, value, where)
        raise ConfigError(problem)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(problem)
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value
        raise ConfigError(problem)
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            return value
        raise ConfigError(problem)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise ConfigError(problem)
    return value  # an annotation this checker does not know (a TypeVar, a Callable, ...)


def _describe(hint: Any) -> str:
    """An annotation in words, for messages: ``tuple[float, ...]`` -> "a list of numbers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _describe(args[0]) + (" (or inf)" if INFINITY_OK in args[1:] else "")
    if origin in (Union, types.UnionType):
        named = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(named)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
        item = _describe(args[0]) if args else "values"
        return f"a list of {_plural(item)}"
    if dataclasses.is_dataclass(hint):
        return f"a JSON object ({hint.__name__})"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(description: str) -> str:
    words = {
        "true or false": "true/false values",
        "an integer": "integers",
        "a finite number": "finite numbers",
        "a string": "strings",
    }
    return words.get(description, description)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {requirement}; got {value!r}")
