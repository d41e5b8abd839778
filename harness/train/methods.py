"""Distillation methods as free functions of logits (the mdistiller pattern), in a plain dict registry.

A method sees one training step whole: ``method(logits, *, epoch, config)`` with ``logits`` a
:class:`StepLogits` (every view's student and teacher logits and the labels), so a method that needs
several views at once (MLKD masks with the weak view's teacher confidence) has its place. It returns
``dict[str, Tensor]`` of 0-d tensors. Entries whose key starts with ``"loss"`` are the differentiable
terms: the trainer sums them and calls ``backward`` on the sum. Every other entry is a detached
diagnostic (a KL term before weighting, say) that the trainer only logs. SLD and KD report their parts
as diagnostics because the fused backend path differentiates ``total`` only.

``METHODS`` holds the base methods (``TrainConfig.method``). ``ce``, ``kd``, ``dkd`` and ``sld`` are a
loss of one view summed over the views (:func:`over_views`); ``mlkd`` reads both views at once. Every
method but ``ce`` takes the :class:`harness.config.LogitSwitches` of its config, composed from the
``sld_core`` pieces in this order:

1. teacher processing, on the raw teacher logits (:func:`process_teacher_logits`,
   ``sld_core.process_teacher``); every later step, MLKD's confidence masks included, sees the result;
2. logit standardization of the logits the distillation term compares (``sld_core.standardize_logits``;
   the hard-label cross-entropy keeps the raw student logits, as in the LS repository);
3. the pseudo-teacher after epoch gamma: the method's own distillation term once more, with the
   student's swapped logits (``sld_core.pseudo_teacher_logits``) as the target (KD: the KL terms at
   every temperature; DKD: TCKD and NCKD; MLKD: KD at its five temperatures on each view), weighted
   like the teacher's term.

KD and SLD with teacher processing ``none`` or ``swap`` and no standardization (the published KD and
SLD among them) take the fused ``backends.sld_loss``: KD is SLD's teacher term at one temperature, so
the temperature-scaled KL exists once in the project. Every other combination composes
``sld_core.kd_loss``, ``cross_entropy``, ``process_teacher`` and ``pseudo_teacher_logits``
(:func:`logit_kd_terms` with ``composed=True`` runs that route for any config, e.g. to check it against
the fused one). Only DKD's two terms, which SLD does not contain, are written here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import backends
import sld_core
from harness.config import CEConfig, DKDConfig, KDConfig, LogitSwitches, MLKDConfig, SLDConfig

__all__ = [
    "METHODS",
    "Method",
    "StepLogits",
    "ce",
    "dkd",
    "dkd_terms",
    "kd",
    "logit_kd_terms",
    "mlkd",
    "over_views",
    "process_teacher_logits",
    "processed_rows",
    "sld",
]


@dataclass(frozen=True)
class StepLogits:
    """Every view of one training step: weak view first, then the strong one (if any)."""

    student: tuple[torch.Tensor, ...]  # (B, C) per view, differentiable
    teacher: tuple[torch.Tensor, ...] | None  # (B, C) per view, no grad; None without a teacher
    targets: torch.Tensor  # int64 (B,)


Method = Callable[..., dict[str, torch.Tensor]]


def over_views(view_loss: Callable[..., dict[str, torch.Tensor]]) -> Method:
    """The method that sums ``view_loss`` (a loss of one view's logits) over a step's views, entry by
    entry: the official SLD/MLKD CIFAR code sums every loss over the weak and the strong view."""

    @functools.wraps(view_loss)
    def method(logits: StepLogits, *, epoch: int, config: Any) -> dict[str, torch.Tensor]:
        total: dict[str, torch.Tensor] = {}
        teachers = logits.teacher or (None,) * len(logits.student)
        for student, teacher in zip(logits.student, teachers):
            terms = view_loss(student, teacher, logits.targets, epoch=epoch, config=config)
            for name, value in terms.items():
                total[name] = total[name] + value if name in total else value
        return total

    return method


# ------------------------------------------------------------------------------------------- switches


def process_teacher_logits(
    teacher_logits: torch.Tensor, targets: torch.Tensor, config: LogitSwitches
) -> torch.Tensor:
    """The teacher's logits after ``config.teacher_processing`` (``sld_core.process_teacher``; the
    tensor itself for ``none``). Same shape, dtype and device."""
    if config.teacher_processing == "none":
        return teacher_logits
    return sld_core.process_teacher(
        teacher_logits, targets, config.teacher_processing, check_targets=False, **config.processing_params()
    )


def processed_rows(config: Any, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Boolean ``(B,)``: the rows the conditional swap of ``config`` changes (``None`` for every other
    processing: they change the rows the swap changes, the trainer's ``teacher_swap_rate``, or all).
    ``teacher_logits`` may hold several views along the rows, ``(k * B, C)``, for ``(B,)`` targets: they
    are repeated here, only where the mask is made (an op the other processings do not pay for)."""
    if not isinstance(config, LogitSwitches) or config.teacher_processing != "conditional_swap":
        return None
    if targets.shape[0] != teacher_logits.shape[0]:
        targets = targets.repeat(teacher_logits.shape[0] // targets.shape[0])
    return sld_core.conditional_swap_mask(
        teacher_logits,
        targets,
        threshold=float(config.swap_threshold),
        mode=config.swap_mode,
        check_targets=False,
    )


def _pseudo_on(config: LogitSwitches, epoch: int) -> bool:
    return config.pseudo_teacher and sld_core.pseudo_teacher_active(epoch, config.gamma)


def _pseudo_target(
    student_logits: torch.Tensor, targets: torch.Tensor, config: LogitSwitches
) -> torch.Tensor:
    return sld_core.pseudo_teacher_logits(
        student_logits, targets, detach=config.detach_pseudo_teacher, check_targets=False
    )


def _standardized(logits: torch.Tensor) -> torch.Tensor:
    # float32 first: standardize_logits rounds half-precision results back to the input dtype.
    return sld_core.standardize_logits(logits.float())


# ---------------------------------------------------------------------------------------- the methods


def ce(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: CEConfig,
) -> dict[str, torch.Tensor]:
    """Cross-entropy on the labels; the teacher (if any) is ignored."""
    return {"loss_ce": F.cross_entropy(student_logits.float(), targets)}


@functools.cache
def _fused_config(config: KDConfig | SLDConfig | sld_core.SLDConfig) -> sld_core.SLDConfig | None:
    """The ``sld_core.SLDConfig`` that ``backends.sld_loss`` computes ``config`` with, or ``None`` where
    the fused path does not apply (another teacher processing, logit standardization)."""
    if isinstance(config, sld_core.SLDConfig):  # the core's own config (Python callers): fused as it is
        return config
    if config.logit_stand or config.teacher_processing not in ("none", "swap"):
        return None
    if isinstance(config, SLDConfig):
        return config.core()
    # Hinton KD = T^2 * KL(softmax(t/T) || softmax(s/T)) at one T: SLD's teacher term at one temperature.
    return sld_core.SLDConfig(
        temperatures=(config.temperature,),
        gamma=config.gamma,
        ce_weight=config.ce_weight,
        kd_weight=config.kd_weight,
        teacher_swap=config.teacher_processing == "swap",
        pseudo_teacher=config.pseudo_teacher,
        detach_pseudo_teacher=config.detach_pseudo_teacher,
    )


def logit_kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: KDConfig | SLDConfig,
    composed: bool = False,
) -> dict[str, torch.Tensor]:
    r"""Multi-temperature KD with the switches of ``config``, for one view:
    ``ce_weight * CE(s) + kd_weight * (KD(s, P(t)) + [epoch > gamma] KD(s, swap(s)))``, ``KD`` the
    ``T^2``-weighted KL summed over the temperatures (one for KD, ``config.temperatures`` for SLD),
    ``P`` the teacher processing, both sides standardized under ``logit_stand``.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor, shape (B, C)
    targets : Tensor, shape (B,), int64
    epoch : int
        Counted from 1; the pseudo-teacher term is on for ``epoch > config.gamma``.
    config : KDConfig or SLDConfig
    composed : bool
        Compose the ``sld_core`` functions even where the fused ``backends.sld_loss`` applies.

    Returns
    -------
    dict with 0-d tensors ``total`` (differentiable), ``ce``, ``kl_teacher``, ``kl_pseudo`` (the
    last two with their ``T**2`` factors, before ``kd_weight``).

    Examples
    --------
    >>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    >>> fused = logit_kd_terms(s, t, y, epoch=200, config=SLDConfig())
    >>> composed = logit_kd_terms(s, t, y, epoch=200, config=SLDConfig(), composed=True)
    >>> torch.allclose(fused["total"], composed["total"])
    True
    """
    core = None if composed else _fused_config(config)
    if core is not None:
        terms = backends.sld_loss(
            student_logits, teacher_logits, targets, epoch=epoch, config=core, check_targets=False
        )  # label range is checked once, when the data loads
        return {"total": terms.total, "ce": terms.ce, "kl_teacher": terms.teacher, "kl_pseudo": terms.pseudo}
    temperatures = config.temperatures if isinstance(config, SLDConfig) else (config.temperature,)
    target = process_teacher_logits(teacher_logits, targets, config)
    ce_term = sld_core.cross_entropy(student_logits, targets, check_targets=False)
    kl_teacher = sld_core.kd_loss(student_logits, target, temperatures, standardize=config.logit_stand)
    if _pseudo_on(config, epoch):
        pseudo = _pseudo_target(student_logits, targets, config)
        kl_pseudo = sld_core.kd_loss(student_logits, pseudo, temperatures, standardize=config.logit_stand)
    else:
        kl_pseudo = torch.zeros((), dtype=kl_teacher.dtype, device=kl_teacher.device)
    total = config.ce_weight * ce_term + config.kd_weight * (kl_teacher + kl_pseudo)
    return {"total": total, "ce": ce_term, "kl_teacher": kl_teacher, "kl_pseudo": kl_pseudo}


def sld(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: SLDConfig,
) -> dict[str, torch.Tensor]:
    """Swapped Logit Distillation of one view (:func:`logit_kd_terms`; the official recipe goes through
    the fused ``backends.sld_loss``).

    Diagnostics: ``ce`` (unweighted cross-entropy), ``kl_teacher`` and ``kl_pseudo`` (summed over the
    temperatures, with their ``T**2`` factors, before ``kd_weight``).
    """
    core = _fused_config(config)
    if core is not None:  # the official recipe: straight to the fused path, nothing in between
        fused = backends.sld_loss(
            student_logits, teacher_logits, targets, epoch=epoch, config=core, check_targets=False
        )  # label range is checked once, when the data loads
        return {
            "loss_sld": fused.total,
            "ce": fused.ce.detach(),
            "kl_teacher": fused.teacher.detach(),
            "kl_pseudo": fused.pseudo.detach(),
        }
    terms = logit_kd_terms(student_logits, teacher_logits, targets, epoch=epoch, config=config, composed=True)
    return {
        "loss_sld": terms["total"],
        "ce": terms["ce"].detach(),
        "kl_teacher": terms["kl_teacher"].detach(),
        "kl_pseudo": terms["kl_pseudo"].detach(),
    }


def kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: KDConfig,
) -> dict[str, torch.Tensor]:
    """Hinton KD, ``ce_weight * CE + kd_weight * T^2 * KL(p_teacher^T || p_student^T)``, with the
    switches of ``config`` (:func:`logit_kd_terms`): e.g. ``teacher_processing="swap"`` is the SLD swap
    without SLD's temperatures or pseudo-teacher. ``kl_pseudo`` is recorded when the pseudo-teacher is
    switched on."""
    terms = logit_kd_terms(student_logits, teacher_logits, targets, epoch=epoch, config=config)
    out = {"loss_kd": terms["total"], "ce": terms["ce"].detach(), "kl_teacher": terms["kl_teacher"].detach()}
    if config.pseudo_teacher:
        out["kl_pseudo"] = terms["kl_pseudo"].detach()
    return out


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Decoupled KD's two parts (Zhao et al., CVPR 2022), each ``T^2 * mean over the batch``.

    TCKD is the KL between the binary distributions (target, everything else); NCKD is the KL between
    the distributions over the non-target classes, renormalized. Both are computed in log space from
    ``log_softmax``, so no ``-1000 * mask`` trick and no ``log(0)``. ``teacher_logits`` is not detached
    here: a pseudo-teacher target passes its gradient on.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor, shape (B, C)
    targets : Tensor, shape (B,), int64
    temperature : float

    Returns
    -------
    (tckd, nckd) : 0-d float32 tensors
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    is_target = F.one_hot(targets, log_q.shape[1]).bool()

    def split(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # log p_target, log(1 - p_target) and log of the renormalized non-target distribution.
        log_target = log_probs.gather(1, targets[:, None]).squeeze(1)
        log_rest = torch.logsumexp(log_probs.masked_fill(is_target, float("-inf")), dim=1)
        return log_target, log_rest, log_probs - log_rest[:, None]

    q_target, q_rest, q_other = split(log_q)
    p_target, p_rest, p_other = split(log_p)
    tckd = (p_target.exp() * (p_target - q_target) + p_rest.exp() * (p_rest - q_rest)).mean()
    nckd_rows = torch.where(is_target, 0.0, p_other.exp() * (p_other - q_other)).sum(dim=1)
    scale = temperature**2
    return scale * tckd, scale * nckd_rows.mean()


def dkd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: DKDConfig,
) -> dict[str, torch.Tensor]:
    """DKD as mdistiller trains it: ``ce_weight * CE + warmup(epoch) * (alpha * TCKD + beta * NCKD)``,
    the warm-up rising linearly over ``config.warmup_epochs`` (``sld_core.linear_warmup``), with the
    switches of ``config``: TCKD and NCKD against the processed teacher, on standardized logits under
    ``logit_stand`` (CE on the raw ones), and with the pseudo-teacher a second ``alpha * TCKD + beta *
    NCKD`` against the student's swapped logits (diagnostics ``pseudo_tckd``, ``pseudo_nckd``)."""
    target = process_teacher_logits(teacher_logits, targets, config)
    if config.logit_stand:
        student, target = _standardized(student_logits), _standardized(target)
    else:
        student = student_logits
    tckd, nckd = dkd_terms(student, target, targets, config.temperature)
    distill = config.alpha * tckd + config.beta * nckd
    diagnostics = {"tckd": tckd.detach(), "nckd": nckd.detach()}
    if config.pseudo_teacher:
        if _pseudo_on(config, epoch):
            # The swap commutes with standardization (a permutation of the row), so the standardized
            # student's swap is the standardized pseudo-teacher.
            pseudo_tckd, pseudo_nckd = dkd_terms(
                student, _pseudo_target(student, targets, config), targets, config.temperature
            )
        else:
            pseudo_tckd = pseudo_nckd = torch.zeros((), device=tckd.device)
        distill = distill + config.alpha * pseudo_tckd + config.beta * pseudo_nckd
        diagnostics |= {"pseudo_tckd": pseudo_tckd.detach(), "pseudo_nckd": pseudo_nckd.detach()}
    warmup = sld_core.linear_warmup(epoch, config.warmup_epochs)
    return {
        "loss_ce": config.ce_weight * F.cross_entropy(student_logits.float(), targets),
        "loss_dkd": warmup * distill,
        **diagnostics,
    }


@functools.cache
def _mlkd_core(config: MLKDConfig) -> sld_core.MLKDConfig:
    return config.core()


def mlkd(logits: StepLogits, *, epoch: int, config: MLKDConfig) -> dict[str, torch.Tensor]:
    """MLKD (or LS-MLKD) of one step, as the published code computes it: ``sld_core.mlkd_loss`` of the
    weak and the strong view (its quirks and their switches: :mod:`sld_core.mlkd`), the four terms the
    published distiller returns (``loss_ce``, ``loss_kd``, ``loss_cc``, ``loss_bc``, weights included).

    With the switches: both teacher views are processed first (the confidence masks then come from the
    processed weak view; the swap leaves each row's top probability, hence the row mask, unchanged); the
    pseudo-teacher adds ``loss_pseudo = kd_weight * sum over views and T in (T0, 3, 5, 2, 6) of
    T^2 KL(swap(s)/T || s/T)``, standardized under ``logit_stand``.

    Raises
    ------
    ValueError
        The step does not have exactly two views (weak, strong) or has no teacher.
    """
    if logits.teacher is None or len(logits.student) != 2 or len(logits.teacher) != 2:
        raise ValueError("mlkd needs a teacher and exactly two views (weak, strong): set data.views = 2")
    targets = logits.targets
    student_weak, student_strong = logits.student
    teacher_weak, teacher_strong = (process_teacher_logits(t, targets, config) for t in logits.teacher)
    terms = sld_core.mlkd_loss(
        student_weak,
        student_strong,
        teacher_weak,
        teacher_strong,
        targets,
        config=_mlkd_core(config),
        check_targets=False,
    )
    out = {"loss_ce": terms.ce, "loss_kd": terms.kd, "loss_cc": terms.cc, "loss_bc": terms.bc}
    if config.pseudo_teacher:
        pseudo = torch.zeros((), device=targets.device)
        if _pseudo_on(config, epoch):
            for student in logits.student:
                target = _pseudo_target(student, targets, config)
                pseudo = pseudo + sld_core.kd_loss(
                    student, target, config.temperatures, standardize=config.logit_stand
                )
        out["loss_pseudo"] = config.kd_weight * pseudo
    return out


# name -> method; config.method selects one. All but mlkd are a view loss summed over the views.
METHODS: dict[str, Method] = {
    "ce": over_views(ce),
    "kd": over_views(kd),
    "dkd": over_views(dkd),
    "mlkd": mlkd,
    "sld": over_views(sld),
}
