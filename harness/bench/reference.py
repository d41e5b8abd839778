"""The naive eager PyTorch formulation of SLD, written the way the paper's algorithm (and the official
mdistiller-based code) spells it: clone + index swap, one ``F.kl_div`` per temperature and term, and
autograd for the backward pass. It is the baseline every fast path is timed against, and an independent
check of their gradients in the tests.

Nothing here is tuned; please keep it that way.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["reference_swap", "reference_sld_loss", "reference_sld_loss_and_grad"]


def reference_swap(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return a clone of ``logits`` (B, C) with, in each row whose argmax is not the target, the target
    logit and the max logit exchanged. Autograd flows through the clone, as in the official code."""
    swapped = torch.clone(logits)
    max_idx = torch.argmax(logits, dim=1)  # first index on ties
    mask = targets != max_idx
    rows = torch.nonzero(mask).squeeze(1)
    tgt, mx = targets[rows], max_idx[rows]
    swapped[rows, tgt], swapped[rows, mx] = logits[rows, mx], logits[rows, tgt]
    return swapped


def _kd(log_student: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    prob_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, prob_teacher, reduction="none").sum(1).mean() * temperature**2


def reference_sld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: Any = None,
) -> dict[str, torch.Tensor]:
    """SLD loss terms for one view, naively: ``{"total", "ce", "teacher", "pseudo"}`` as 0-d tensors.

    ``config`` is an ``sld_core.SLDConfig`` (or anything with the same attributes); ``None`` means the
    official recipe. Half-precision logits are upcast to float32 first, like every other path.
    """
    if config is None:
        import sld_core

        config = sld_core.SLDConfig()
    s = student_logits.float() if student_logits.dtype in (torch.float16, torch.bfloat16) else student_logits
    t = teacher_logits.detach()
    t = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    if config.teacher_swap:
        t = reference_swap(t, targets)
    pseudo_on = config.pseudo_teacher and epoch > config.gamma
    if pseudo_on:
        s_swapped = reference_swap(s, targets)
        if config.detach_pseudo_teacher:
            s_swapped = s_swapped.detach()
    zero = s.new_zeros(())
    teacher, pseudo = zero, zero
    for temperature in config.temperatures:
        temperature = float(temperature)
        log_student = F.log_softmax(s / temperature, dim=1)
        teacher = teacher + _kd(log_student, t, temperature)
        if pseudo_on:
            pseudo = pseudo + _kd(log_student, s_swapped, temperature)
    ce = F.cross_entropy(s, targets)
    total = config.ce_weight * ce + config.kd_weight * (teacher + pseudo)
    return {"total": total, "ce": ce, "teacher": teacher, "pseudo": pseudo}


def reference_sld_loss_and_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    epoch: int,
    config: Any = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Loss terms (detached) and d total / d student_logits by autograd, gradient in the input dtype."""
    s = student_logits.detach().requires_grad_(True)
    terms = reference_sld_loss(s, teacher_logits, targets, epoch=epoch, config=config)
    (grad,) = torch.autograd.grad(terms["total"], s)
    return {k: v.detach() for k, v in terms.items()}, grad
