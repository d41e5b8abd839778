"""Model specs: a built-in name, an import path ``package.module:callable``, or an ``sld.models`` entry point.

A spec is a plain string, so a run's config can record it and a new process rebuild the same model:

==============================  ====================================================================
spec                            resolves to
==============================  ====================================================================
``"wrn_40_2"``, ``"resnet18"``  the built-in zoo (``harness.models.MODELS``); built-in names win
``"my_pkg.models:student"``     ``import my_pkg.models`` then its attribute ``student`` (dots allowed
                                after the colon: ``"my_pkg.zoo:Factory.small"``)
``"tiny"``                      the entry point ``tiny`` of group ``sld.models`` of an installed
                                distribution, e.g. ``[project.entry-points."sld.models"]``
                                ``tiny = "my_pkg.models:student"`` in its ``pyproject.toml``
==============================  ====================================================================

The callable takes ``num_classes`` (as a keyword) and returns a ``torch.nn.Module`` mapping
``(N, 3, H, W)`` images to ``(N, num_classes)`` logits. :func:`model_info` tells the zoos apart (the
CIFAR ``ResNet18`` and the ImageNet ``resnet18`` are different networks).

Examples
--------
>>> make = resolve_model("resnet8x4")
>>> make.info
ModelInfo(dataset='cifar100', input_size=32, num_classes=100)
>>> type(make(num_classes=10)).__name__
'ResNet'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from harness.models.imagenet import IMAGENET_MODELS
from harness.models.zoo import MODELS

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelConstructor",
    "ModelInfo",
    "ModelSpecError",
    "model_info",
    "plugin_models",
    "resolve_model",
]

ENTRY_POINT_GROUP = "sld.models"


class ModelSpecError(ValueError):
    """A model spec that names no model, or whose callable cannot be imported, called or used."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is built for: the listing's tag and ``build_model``'s default class count.

    ``dataset`` is ``"cifar100"``, ``"imagenet"`` or ``"plugin"``; ``input_size`` the side of the images
    of its published recipe; ``num_classes`` the default head. A plug-in's are ``None``: its callable
    keeps its own default.
    """

    dataset: str
    input_size: int | None
    num_classes: int | None


CIFAR100_INFO = ModelInfo("cifar100", 32, 100)
IMAGENET_INFO = ModelInfo("imagenet", 224, 1000)
PLUGIN_INFO = ModelInfo("plugin", None, None)


@dataclass(frozen=True)
class ModelConstructor:
    """A resolved spec: ``constructor(num_classes=...)`` builds a fresh model and checks what came back.

    ``source`` says where the callable was found (``"built-in"``, ``"import path"`` or ``"entry point
    NAME = VALUE (DIST)"``), for messages and listings.
    """

    spec: str
    source: str
    info: ModelInfo
    factory: Callable[..., object]

    def __call__(self, num_classes: int | None = None, **options: object) -> nn.Module:
        """Build the model; ``None`` means the model's own default class count (see :class:`ModelInfo`);
        ``options`` are keywords of its constructor (an unknown one is a ``ValueError``)."""
        if num_classes is None:
            num_classes = self.info.num_classes
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if options:
            try:
                accepted = inspect.signature(self.factory).parameters
            except (TypeError, ValueError):  # a callable without a signature: let it take or refuse them
                accepted = options
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise ValueError(f"model {self.spec!r} takes no option {', '.join(map(repr, unknown))}")
        sized = {} if num_classes is None else {"num_classes": num_classes}
        model = self.factory(**sized, **options)
        if not isinstance(model, nn.Module):
            raise ModelSpecError(
                f"model {self.spec!r} ({self.source}) returned a {type(model).__name__}, "
                "expected a torch.nn.Module"
            )
        return model


def resolve_model(spec: str) -> ModelConstructor:
    """The constructor a model spec names (see the module docstring for the three kinds of spec).

    Parameters
    ----------
    spec
        A built-in name, ``"package.module:attribute"``, or an entry-point name of group ``sld.models``.

    Returns
    -------
    ModelConstructor
        Call it with ``num_classes`` to build a model; ``.info`` tags its dataset and defaults.

    Raises
    ------
    ModelSpecError
        Unknown name (the message lists the built-in and entry-point names), a module that cannot be
        imported (or raises while importing), a missing attribute, an attribute that is not callable, or
        an entry point that cannot be loaded. Each message names the spec.

    Examples
    --------
    >>> resolve_model("resnet50").info.dataset
    'imagenet'
    >>> resolve_model("my_pkg.models:build_student")(num_classes=10)  # doctest: +SKIP
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"a model spec must be a non-empty string, got {spec!r}")
    if spec in MODELS:
        info = IMAGENET_INFO if spec in IMAGENET_MODELS else CIFAR100_INFO
        return ModelConstructor(spec, "built-in", info, MODELS[spec])
    if ":" in spec:
        return ModelConstructor(spec, "import path", PLUGIN_INFO, _import_callable(spec))
    entry_points = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if not entry_points:
        plugins = sorted(plugin_models())
        raise ModelSpecError(
            f"unknown model {spec!r}; valid names: {', '.join(sorted(MODELS))}"
            + (f"; entry points ({ENTRY_POINT_GROUP}): {', '.join(plugins)}" if plugins else "")
            + "; or an import path 'package.module:callable'"
        )
    if len({ep.value for ep in entry_points}) > 1:
        found = ", ".join(f"{ep.value} ({_dist_name(ep)})" for ep in entry_points)
        raise ModelSpecError(
            f"model {spec!r} is defined by several {ENTRY_POINT_GROUP} entry points: {found}"
        )
    ep = entry_points[0]
    source = f"entry point {ep.name} = {ep.value} ({_dist_name(ep)})"
    try:
        factory = ep.load()
    except Exception as exc:  # the plug-in's import can raise anything; report it against the spec
        raise ModelSpecError(
            f"model {spec!r}: loading {source} failed ({type(exc).__name__}: {exc})"
        ) from exc
    if not callable(factory):
        raise ModelSpecError(f"model {spec!r}: {source} is not callable (type {type(factory).__name__})")
    return ModelConstructor(spec, source, PLUGIN_INFO, factory)


def model_info(spec: str) -> ModelInfo:
    """:class:`ModelInfo` of a spec (resolving it; a plug-in is imported but not built).

    Examples
    --------
    >>> model_info("ResNet18").dataset, model_info("resnet18").dataset
    ('cifar100', 'imagenet')
    """
    return resolve_model(spec).info


def plugin_models() -> dict[str, str]:
    """Entry points of group ``sld.models`` of the installed distributions: ``{name: "module:attr"}``
    (nothing is imported)."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _import_callable(spec: str) -> Callable[..., object]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelSpecError(f"model spec {spec!r} must look like 'package.module:callable'")
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(
            f"model {spec!r}: cannot import module {module_name!r} ({exc}); is its package installed "
            "or on PYTHONPATH?"
        ) from exc
    except Exception as exc:  # the user's module raised while importing
        raise ModelSpecError(
            f"model {spec!r}: importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attribute.split(".")[:i]])
            raise ModelSpecError(f"model {spec!r}: {owner!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"model {spec!r}: {attribute!r} is not callable (type {type(obj).__name__})")
    return obj


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "unknown distribution"
