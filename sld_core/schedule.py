"""Loss schedules. Epochs count from 1, as in the official training loop: with ``gamma = 150`` the
pseudo-teacher joins at epoch 151 of 240."""

from __future__ import annotations

__all__ = ["pseudo_teacher_active", "linear_warmup"]


def pseudo_teacher_active(epoch: int, gamma: float) -> bool:
    """The paper's loss scheduling: the student's own swapped logits teach it only after epoch ``gamma``
    (early on the student is too poor a teacher)."""
    return epoch > gamma


def linear_warmup(epoch: float, warmup_epochs: float) -> float:
    """Weight rising linearly from ``1/warmup_epochs`` at epoch 1 to 1 at ``warmup_epochs`` (DKD's
    schedule, ``min(epoch / warmup, 1)``); 1 when ``warmup_epochs <= 0``."""
    if warmup_epochs <= 0:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)
