"""Distillation methods as free functions of logits (the mdistiller pattern), in a plain dict registry.

A method sees one training step whole: ``method(logits, *, epoch, config)`` with ``logits`` a
:class:`StepLogits` (every view's student and teacher logits and the labels), so a method that needs
several views at once (MLKD masks with the weak view's teacher confidence) has its place. It returns
``dict[str, Tensor]`` of 0-d tensors. Entries whose key starts with ``"loss"`` are the differentiable
terms: the trainer sums them and calls ``backward`` on the sum. Every other entry is a detached
diagnostic (a KL term before weighting, say) that the trainer only logs. SLD and KD report their parts
as diagnostics because the fused backend path differentiates ``total`` only.

Most methods are a loss of one view summed over the views: ``ce``, ``kd``, ``dkd`` and ``sld`` below
are those view losses, ``view_loss(student_logits, teacher_logits, targets, *, epoch, config)``, and
:func:`over_views` makes a method of one.

The SLD math lives in ``sld_core`` and its fast paths in ``backends``; KD is routed through the same
``backends.sld_loss`` (one temperature, no pseudo-teacher), so the temperature-scaled KL exists once in
the project. Only DKD, which SLD does not contain, is written here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import backends
from harness.config import CEConfig, DKDConfig, KDConfig
from sld_core import SLDConfig, linear_warmup, swap_logits

__all__ = ["METHODS", "Method", "StepLogits", "ce", "dkd", "dkd_terms", "kd", "over_views", "sld"]


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


def sld(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: SLDConfig,
) -> dict[str, torch.Tensor]:
    """Swapped Logit Distillation of one view, through ``backends.sld_loss``.

    Diagnostics: ``ce`` (unweighted cross-entropy), ``kl_teacher`` and ``kl_pseudo`` (summed over the
    temperatures, with their ``T**2`` factors, before ``kd_weight``).
    """
    terms = backends.sld_loss(
        student_logits, teacher_logits, targets, epoch=epoch, config=config, check_targets=False
    )  # label range is checked once, when the data loads
    return {
        "loss_sld": terms.total,
        "ce": terms.ce.detach(),
        "kl_teacher": terms.teacher.detach(),
        "kl_pseudo": terms.pseudo.detach(),
    }


@functools.cache
def _kd_as_sld(config: KDConfig) -> SLDConfig:
    # Hinton KD = T^2 * KL(softmax(t/T) || softmax(s/T)) at one T: exactly SLD's teacher term with
    # a single temperature, no pseudo-teacher, and the swap only when asked for.
    return SLDConfig(
        temperatures=(config.temperature,),
        ce_weight=config.ce_weight,
        kd_weight=config.kd_weight,
        teacher_swap=config.swap_teacher,
        pseudo_teacher=False,
    )


def kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: KDConfig,
) -> dict[str, torch.Tensor]:
    """Hinton KD, ``ce_weight * CE + kd_weight * T^2 * KL(p_teacher^T || p_student^T)``.

    With ``config.swap_teacher`` the teacher's logits are swapped first (``sld_core.swap_logits``): the
    SLD swap without SLD's multiple temperatures or pseudo-teacher.
    """
    terms = backends.sld_loss(
        student_logits, teacher_logits, targets, epoch=epoch, config=_kd_as_sld(config), check_targets=False
    )
    return {"loss_kd": terms.total, "ce": terms.ce.detach(), "kl_teacher": terms.teacher.detach()}


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Decoupled KD's two parts (Zhao et al., CVPR 2022), each ``T^2 * mean over the batch``.

    TCKD is the KL between the binary distributions (target, everything else); NCKD is the KL between
    the distributions over the non-target classes, renormalized. Both are computed in log space from
    ``log_softmax``, so no ``-1000 * mask`` trick and no ``log(0)``.

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
    the warm-up rising linearly over ``config.warmup_epochs`` (``sld_core.linear_warmup``)."""
    if config.swap_teacher:
        teacher_logits = swap_logits(teacher_logits, targets, check_targets=False)
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, config.temperature)
    warmup = linear_warmup(epoch, config.warmup_epochs)
    return {
        "loss_ce": config.ce_weight * F.cross_entropy(student_logits.float(), targets),
        "loss_dkd": warmup * (config.alpha * tckd + config.beta * nckd),
        "tckd": tckd.detach(),
        "nckd": nckd.detach(),
    }


# name -> method (each a view loss summed over the views); config.method selects one.
METHODS: dict[str, Method] = {
    "ce": over_views(ce),
    "kd": over_views(kd),
    "dkd": over_views(dkd),
    "sld": over_views(sld),
}
