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
from typing import Any, Literal, Union

from sld_core import SLDConfig

__all__ = [
    "AMP_MODES",
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
    "check_field_types",
    "flat_config",
    "load_config",
    "resume_conflicts",
    "save_config",
    "train_config_from_dict",
    "train_config_to_dict",
    "with_overrides",
]

AMP_MODES = ("off", "bf16", "fp16")
# Fields a resumed run may change: they say where and how fast it runs, not what it computes.
RESUMABLE_FIELDS = frozenset(
    {"out_dir", "log_every", "compile", "data.data_dir", "data.download", "data.eval_batch_size"}
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
        check_field_types(self, "kd")
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
        check_field_types(self, "dkd")
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
    """Where the CIFAR-100 archive is and how each batch is viewed."""

    data_dir: str | None = None  # None: harness.data.cifar.default_data_dir()
    download: bool = True  # fetch the archive (md5-checked) when it is missing
    views: int = 2  # official SLD/MLKD CIFAR code: weak + strong view, loss summed; 1 = weak only
    limit_train: int | None = None  # first N training images only: demos and tests
    limit_test: int | None = None  # first N test images only: demos and tests
    eval_batch_size: int = 512  # inference only: bigger batches just finish sooner

    def __post_init__(self) -> None:
        check_field_types(self, "data")
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
    sync_bn: bool = False  # DDP, CUDA only: BatchNorm over the global batch; off: per rank, as officially
    out_dir: str = "runs/train"  # holds config.json, metrics.jsonl, last.pt and best.pt
    log_every: int = 50  # steps between progress updates; each is a CPU-GPU sync, so not every step

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
        _check(self.amp in AMP_MODES, "amp", self.amp, f"must be one of {list(AMP_MODES)}")
        _check(isinstance(self.sync_bn, bool), "sync_bn", self.sync_bn, "must be true or false")
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
        return train_config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
    hints = typing.get_type_hints(cls)
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


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {requirement}; got {value!r}")
