"""Training configuration: frozen dataclasses, one reason per default, JSON round trip.

The CLI only builds a :class:`TrainConfig`; the trainer only reads one. ``config.json`` written beside
every run loads back with :func:`load_config`, so any run can be repeated exactly. No torch here: the
CLI builds and checks configs before it pays for importing torch.

Defaults are the official CIFAR-100 recipe of the SLD code (built on mdistiller): 240 epochs, batch 64,
SGD momentum 0.9, weight decay 5e-4, lr x0.1 at epochs 150/180/210; a pair's recipe sets its lr.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sld_core import SLDConfig

__all__ = [
    "AMP_MODES",
    "DATASETS",
    "METHOD_CONFIGS",
    "CEConfig",
    "ConfigError",
    "DKDConfig",
    "DataConfig",
    "KDConfig",
    "MethodConfig",
    "RESUMABLE_FIELDS",
    "OptimConfig",
    "SLDConfig",
    "TrainConfig",
    "flat_config",
    "load_config",
    "resume_conflicts",
    "save_config",
    "train_config_from_dict",
    "train_config_to_dict",
    "with_overrides",
]

AMP_MODES = ("off", "bf16", "fp16")
DATASETS = ("cifar100", "imagenet", "folder")
# Fields a resumed run may change: they say where and how fast it runs, not what it computes.
RESUMABLE_FIELDS = frozenset(
    {
        "out_dir",
        "log_every",
        "compile",
        "cuda_graphs",
        "data.data_dir",
        "data.download",
        "data.eval_batch_size",
        "data.workers",
    }
)


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class CEConfig:
    """Cross-entropy on the labels alone: teachers and the no-distillation baseline."""


@dataclass(frozen=True)
class KDConfig:
    """Hinton KD (mdistiller ``CFG.KD``)."""

    temperature: float = 4.0  # mdistiller CFG.KD.TEMPERATURE
    ce_weight: float = 0.1  # mdistiller CFG.KD.LOSS.CE_WEIGHT
    kd_weight: float = 0.9  # mdistiller CFG.KD.LOSS.KD_WEIGHT
    swap_teacher: bool = False  # ablation: teach with sld_core.swap_logits(teacher) (the SLD swap alone)

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "kd.temperature", self.temperature, "must be > 0")
        for name in ("ce_weight", "kd_weight"):
            _check(getattr(self, name) >= 0, f"kd.{name}", getattr(self, name), "must be >= 0")


@dataclass(frozen=True)
class DKDConfig:
    """Decoupled KD (mdistiller ``CFG.DKD``); beta is per pair in mdistiller's configs."""

    ce_weight: float = 1.0  # mdistiller CFG.DKD.CE_WEIGHT
    alpha: float = 1.0  # mdistiller CFG.DKD.ALPHA: target-class (TCKD) weight
    beta: float = 8.0  # mdistiller CFG.DKD.BETA: non-target (NCKD) weight; 2 for resnet56/110, 6 wrn/vgg
    temperature: float = 4.0  # mdistiller CFG.DKD.T
    warmup_epochs: int = 20  # mdistiller CFG.DKD.WARMUP: the KD term ramps in linearly
    swap_teacher: bool = False  # ablation: teach with sld_core.swap_logits(teacher)

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "dkd.temperature", self.temperature, "must be > 0")
        for name in ("ce_weight", "alpha", "beta"):
            _check(getattr(self, name) >= 0, f"dkd.{name}", getattr(self, name), "must be >= 0")
        _check(
            isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0,
            "dkd.warmup_epochs",
            self.warmup_epochs,
            "must be an integer >= 0",
        )


MethodConfig = CEConfig | KDConfig | DKDConfig | SLDConfig
# The method name in a config selects which dataclass its `loss` section is.
METHOD_CONFIGS: dict[str, type] = {"ce": CEConfig, "kd": KDConfig, "dkd": DKDConfig, "sld": SLDConfig}


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
    method: str = "sld"  # a key of METHOD_CONFIGS / harness.train.methods.METHODS
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

    def __post_init__(self) -> None:
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


def with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``config`` with dotted fields replaced, e.g. ``{"optim.lr": 0.1, "loss.gamma": 5}``; ``None``
    values are skipped (an option that was not given). Every dataclass re-validates itself."""
    for path, value in overrides.items():
        if value is None:
            continue
        config = _replace_path(config, path.split("."), value, path)
    return config


def _replace_path(obj: Any, parts: list[str], value: Any, path: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if parts[0] not in names:
        raise ConfigError(f"{path}: {type(obj).__name__} has no field {parts[0]!r}; fields: {sorted(names)}")
    if len(parts) > 1:
        value = _replace_path(getattr(obj, parts[0]), parts[1:], value, path)
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
    nested = {"loss": METHOD_CONFIGS[method], "optim": OptimConfig, "data": DataConfig}
    for key, cls in nested.items():
        if key in data:
            data[key] = _build(cls, data[key], key)
    return _build(TrainConfig, data, "config")


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
        return train_config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _build(cls: type, values: Any, where: str) -> Any:
    """``cls(**values)`` with JSON lists turned back into tuples and a clear error for bad keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a JSON object; got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:  # SLDConfig's own validation raises plain ValueError
        raise ConfigError(f"{where}: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {requirement}; got {value!r}")
