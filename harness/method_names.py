"""Readable method names: one grammar for ``sld train --method``, the ``sld reproduce`` grid, the report
and ``sld pairs``. No torch here.

Every run trains a *base* method (``TrainConfig.method``: ``ce``, ``kd``, ``dkd``, ``mlkd``, ``sld``)
with the :class:`harness.config.LogitSwitches` of its loss set one way or another. A name says both::

    name       := ["ls-"] core
    core       := "sld-" BASE                        BASE with the swap and the pseudo-teacher
                | base ["@" PROCESSING] ["+pt"]
    base       := "ce" | "kd" | "dkd" | "mlkd" | "sld"     (BASE: the same without "ce" and "sld")
    PROCESSING := "none" | "swap" | "cswap-lt" GAP | "cswap-ge" GAP | "max-add"
                | ("soft-add" | "double" | "halve" | "smooth") ["-all"]

- ``ls-`` switches logit standardization on, with the published rewrite of the method's temperature
  and weights (:func:`harness.recipes.logit_standardized`);
- ``@PROCESSING`` replaces the base's teacher processing (none for kd, dkd, mlkd; the swap for sld):
  ``swap``; ``cswap-ltG`` / ``cswap-geG``, the conditional swap where the teacher's probability gap
  ``p[top] - p[target]`` is below ``G`` / at least ``G``; ``soft-add`` (``z_y += 0.1 z_y``),
  ``max-add`` (``z_y = max z``), ``double`` (``z_y *= 2``), ``halve`` (``z_y /= 2``), ``smooth`` (the
  label-smoothed one-hot, eps = 0.1), each on the rows the teacher gets wrong, or on every row with
  ``-all`` (:mod:`sld_core.processing` states each rule exactly);
- ``+pt`` adds the pseudo-teacher (the student's own swapped logits as a second target after epoch
  gamma; the sld base has it already);
- ``sld-kd``, ``sld-dkd``, ``sld-mlkd`` are SLD's two ingredients on another loss: ``X@swap+pt``.

So ``sld`` is multi-temperature KD + swap + pseudo-teacher, ``sld-dkd`` is "SLD on DKD", ``kd+pt`` is
"KD + pseudo-teacher" and ``sld@max-add`` is SLD with max-addition in place of the swap.
:func:`method_label` names a config the same way (the canonical spelling: ``kd@swap+pt`` is labelled
``sld-kd``), so a run started with ``sld train --method kd --teacher-processing swap --pseudo-teacher``
is reported beside the grid's ``sld-kd`` runs. Parameters that are not part of a name (gamma,
temperatures, detaching, the sld base's pseudo-teacher switched off) show up in the report as the
fields that set a row apart.

>>> spec = parse_method("ls-sld-dkd")
>>> (spec.base, spec.logit_stand, spec.switches())
('dkd', True, {'teacher_processing': 'swap', 'pseudo_teacher': True})
>>> canonical_name("kd@swap+pt"), canonical_name("sld@cswap-lt.50")
('sld-kd', 'sld@cswap-lt0.5')
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from harness.config import (
    METHOD_CONFIGS,
    ROW_CHOICE_PROCESSINGS,
    CEConfig,
    ConfigError,
    LogitSwitches,
    TrainConfig,
)

__all__ = [
    "BASES",
    "NAMED_METHODS",
    "MethodSpec",
    "NamedMethod",
    "canonical_name",
    "label_of",
    "method_label",
    "parse_method",
    "processing_token",
]

BASES = tuple(METHOD_CONFIGS)  # ce, kd, dkd, mlkd, sld
_SLD_ON = ("kd", "dkd", "mlkd")  # the bases "sld-X" puts SLD's swap and pseudo-teacher on
# Processing tokens of a name <-> sld_core.process_teacher names (the conditional swap is parsed apart).
_TOKENS = {
    "none": "none",
    "swap": "swap",
    "soft-add": "soft_addition",
    "max-add": "max_addition",
    "double": "double_target",
    "halve": "halve_target",
    "smooth": "label_smoothing",
}
_TOKEN_OF = {processing: token for token, processing in _TOKENS.items()}
_CSWAP = {"lt": "below", "ge": "at_least"}
_CSWAP_TOKEN = {mode: token for token, mode in _CSWAP.items()}
_GRAMMAR = "[ls-]base[@processing][+pt] or [ls-]sld-{kd,dkd,mlkd} (see harness.method_names)"


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name: the base method and the switches the name sets (``None``: the base's
    own default)."""

    base: str
    teacher_processing: str | None = None
    swap_threshold: float | None = None
    swap_mode: str | None = None
    processing_rows: str | None = None
    pseudo_teacher: bool | None = None
    logit_stand: bool = False

    def switches(self) -> dict[str, Any]:
        """The :class:`~harness.config.LogitSwitches` fields the name sets (logit standardization aside:
        it comes with the rewrite of :func:`harness.recipes.logit_standardized`)."""
        fields = ("teacher_processing", "swap_threshold", "swap_mode", "processing_rows", "pseudo_teacher")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}

    def apply(self, loss: Any) -> Any:
        """``loss`` (a config of :attr:`base`) with :meth:`switches` set; ``logit_stand`` is left to
        the caller's rewrite."""
        switches = self.switches()
        if not switches:
            return loss
        try:
            return dataclasses.replace(loss, **switches)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class NamedMethod:
    """A method the tables list by name, with what it is and which published number it is compared
    with (a field of :class:`harness.paper_results.PublishedResult`, or ``None``)."""

    name: str
    description: str
    published: str | None = None


# The methods `sld pairs --pair P` lists and reports order rows by: the paper's main table first, then
# its ablations. Every name is canonical (tests/test_methods.py checks it).
NAMED_METHODS: dict[str, NamedMethod] = {
    m.name: m
    for m in (
        NamedMethod("ce", "cross-entropy alone: the student trained without a teacher", "student_top1"),
        NamedMethod("kd", "Hinton KD, T = 4, CE 0.1 / KD 0.9 (mdistiller)", "kd"),
        NamedMethod("dkd", "decoupled KD (mdistiller): per-pair beta, 20-epoch warm-up", "dkd"),
        NamedMethod("mlkd", "multi-level logit distillation as published (2 views, 480 epochs)", "mlkd"),
        NamedMethod("ls-mlkd", "MLKD on standardized logits (the LS repository's rewrite)", "ls_mlkd"),
        NamedMethod("sld", "SLD: KD at T = 1..6 + swap + pseudo-teacher after epoch 150 (2 views)", "sld"),
        NamedMethod("ls-kd", "KD on standardized logits (LS: T = base, KD weight 9, CE 1)", "ls_kd"),
        NamedMethod("ls-dkd", "DKD on standardized logits (LS: alpha, beta x KD weight, T = base)", "ls_dkd"),
        NamedMethod("ls-sld", "SLD on standardized logits (no published recipe: SLD's own weights)"),
        NamedMethod("kd@swap", "KD taught by the swapped teacher (the swap alone)"),
        NamedMethod("dkd@swap", "DKD taught by the swapped teacher"),
        NamedMethod("mlkd@swap", "MLKD taught by the swapped teacher"),
        NamedMethod("kd+pt", "KD + the pseudo-teacher"),
        NamedMethod("dkd+pt", "DKD + the pseudo-teacher (a second DKD term)"),
        NamedMethod("mlkd+pt", "MLKD + the pseudo-teacher (multi-temperature KD on each view)"),
        NamedMethod("sld-kd", "single-temperature SLD: KD (T = 4) + swap + pseudo-teacher"),
        NamedMethod("sld-dkd", "SLD on DKD: DKD + swap + pseudo-teacher"),
        NamedMethod("sld-mlkd", "SLD on MLKD: MLKD + swap + pseudo-teacher"),
        NamedMethod("sld@none", "SLD without the swap: KD at T = 1..6 + pseudo-teacher"),
        NamedMethod("sld@soft-add", "SLD with soft addition (z_y += 0.1 z_y) in place of the swap"),
        NamedMethod("sld@max-add", "SLD with max addition (z_y = max z) in place of the swap"),
        NamedMethod("sld@double", "SLD with the target logit doubled in place of the swap"),
        NamedMethod("sld@halve", "SLD with the target logit halved in place of the swap"),
        NamedMethod("sld@smooth", "SLD with the label-smoothed one-hot (eps 0.1) in place of the swap"),
        NamedMethod("sld@cswap-lt0.5", "SLD swapping only where p[top] - p[target] < 0.5"),
        NamedMethod("sld@cswap-ge0.5", "SLD swapping only where p[top] - p[target] >= 0.5"),
    )
}


def parse_method(name: str) -> MethodSpec:
    """The base method and switches a name stands for (grammar in the module docstring).

    Raises
    ------
    ConfigError
        ``name`` does not follow the grammar; the message says which part does not.

    Examples
    --------
    >>> parse_method("kd@soft-add-all+pt").switches()
    {'teacher_processing': 'soft_addition', 'processing_rows': 'all', 'pseudo_teacher': True}
    >>> parse_method("sld@cswap-ge0.3").switches()
    {'teacher_processing': 'conditional_swap', 'swap_threshold': 0.3, 'swap_mode': 'at_least'}
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a method name must be a non-empty string; got {name!r}")
    text = name.strip().lower()
    logit_stand = text.startswith("ls-")
    core = text[3:] if logit_stand else text
    if core.startswith("sld-"):
        base = core[4:]
        if base not in _SLD_ON:
            raise ConfigError(
                f"unknown method {name!r}: sld-X puts SLD's swap and pseudo-teacher on X, one of "
                f"{', '.join(_SLD_ON)} (names: {_GRAMMAR})"
            )
        return MethodSpec(base, teacher_processing="swap", pseudo_teacher=True, logit_stand=logit_stand)
    pseudo = core.endswith("+pt")
    if pseudo:
        core = core[: -len("+pt")]
    base, at, token = core.partition("@")
    if base not in BASES:
        raise ConfigError(
            f"unknown method {name!r}: the base must be one of {', '.join(BASES)} (names: {_GRAMMAR})"
        )
    if base == "ce" and (logit_stand or pseudo or token):
        raise ConfigError(f"method {name!r}: ce has no teacher, so no ls-, @processing or +pt")
    if base == "sld" and pseudo:
        raise ConfigError(f"method {name!r}: sld has the pseudo-teacher already; drop the +pt")
    if at and not token:
        raise ConfigError(f"method {name!r}: '@' must be followed by a teacher processing")
    spec = MethodSpec(base, pseudo_teacher=True if pseudo else None, logit_stand=logit_stand)
    return dataclasses.replace(spec, **_parse_processing(token, name)) if token else spec


def _parse_processing(token: str, name: str) -> dict[str, Any]:
    if token.startswith("cswap-"):
        mode, gap = _CSWAP.get(token[6:8]), token[8:]
        try:
            threshold = float(gap)
        except ValueError:
            threshold = math.nan
        if mode is None or math.isnan(threshold) or threshold < 0:
            raise ConfigError(
                f"method {name!r}: the conditional swap is cswap-ltG (gap < G) or cswap-geG (gap >= G) "
                f"with a probability gap G >= 0, e.g. cswap-lt0.5; got {token!r}"
            )
        return {"teacher_processing": "conditional_swap", "swap_threshold": threshold, "swap_mode": mode}
    given, rows = token, None
    if token.endswith("-all"):
        token, rows = token[: -len("-all")], "all"
    processing = _TOKENS.get(token)
    if processing is None or (rows is not None and processing not in ROW_CHOICE_PROCESSINGS):
        choices = ", ".join(
            [*_TOKENS, "cswap-ltG", "cswap-geG", "soft-add-all", "double-all", "halve-all", "smooth-all"]
        )
        raise ConfigError(f"method {name!r}: unknown teacher processing {given!r}; choose one of {choices}")
    return {"teacher_processing": processing} | ({"processing_rows": rows} if rows else {})


def processing_token(loss: LogitSwitches) -> str:
    """How a name spells the teacher processing of ``loss`` (``none``, ``swap``, ``cswap-lt0.5``,
    ``soft-add-all``, ...)."""
    processing = loss.teacher_processing
    if processing == "conditional_swap":
        return f"cswap-{_CSWAP_TOKEN[loss.swap_mode]}{float(loss.swap_threshold):g}"
    token = _TOKEN_OF[processing]
    if processing in ROW_CHOICE_PROCESSINGS and loss.processing_rows == "all":
        token += "-all"
    return token


def label_of(base: str, loss: Any) -> str:
    """The canonical name of base method ``base`` trained with the loss config ``loss``.

    >>> from harness.config import DKDConfig, SLDConfig
    >>> label_of("dkd", DKDConfig(teacher_processing="swap", pseudo_teacher=True))
    'sld-dkd'
    >>> label_of("sld", SLDConfig(teacher_processing="max_addition", logit_stand=True))
    'ls-sld@max-add'
    """
    if base == "ce" or isinstance(loss, CEConfig):
        return "ce"
    prefix = "ls-" if loss.logit_stand else ""
    if base == "sld":
        token = processing_token(loss)
        return prefix + ("sld" if token == "swap" else f"sld@{token}")
    if loss.teacher_processing == "swap" and loss.pseudo_teacher:
        return f"{prefix}sld-{base}"
    token = processing_token(loss)
    return prefix + base + ("" if token == "none" else f"@{token}") + ("+pt" if loss.pseudo_teacher else "")


def method_label(config: TrainConfig) -> str:
    """The canonical name of the method ``config`` trains (what reports call its runs)."""
    return label_of(config.method, config.loss)


def canonical_name(name: str) -> str:
    """``name`` spelled canonically: the :func:`method_label` of any config it resolves to."""
    spec = parse_method(name)
    loss = spec.apply(METHOD_CONFIGS[spec.base]())
    if spec.logit_stand:
        loss = dataclasses.replace(loss, logit_stand=True)
    return label_of(spec.base, loss)
