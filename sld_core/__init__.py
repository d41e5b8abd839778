"""Swapped Logit Distillation (Limantoro et al., arXiv:2504.20108), written once against the Python
array API: the same code runs on NumPy, CuPy, PyTorch, JAX and array-api-strict. No framework is
imported here; the namespace comes from the caller's arrays (array-api-compat)."""

from .loss import LossTerms, SLDConfig, config_to_dict, sld_loss, sld_loss_and_grad
from .schedule import linear_warmup, pseudo_teacher_active
from .swap import swap_at, swap_logits, swap_mask
from .validation import validate_epoch, validate_inputs, validate_logits_and_targets

__version__ = "0.1.0"

__all__ = [
    "LossTerms",
    "SLDConfig",
    "config_to_dict",
    "linear_warmup",
    "pseudo_teacher_active",
    "sld_loss",
    "sld_loss_and_grad",
    "swap_at",
    "swap_logits",
    "swap_mask",
    "validate_epoch",
    "validate_inputs",
    "validate_logits_and_targets",
]
