"""Swapped Logit Distillation (Limantoro et al., arXiv:2504.20108), written once against the Python
array API: the same code runs on NumPy, CuPy, PyTorch, JAX and array-api-strict. No framework is
imported here; the namespace comes from the caller's arrays (array-api-compat)."""

from .kd import cross_entropy, kd_loss, pseudo_teacher_logits
from .loss import LossTerms, SLDConfig, config_to_dict, sld_loss, sld_loss_and_grad
from .mlkd import MLKDConfig, MLKDTerms, confidence_masks, mlkd_config_to_dict, mlkd_loss, numpy_median
from .processing import (
    TEACHER_PROCESSORS,
    conditional_swap,
    conditional_swap_mask,
    double_target,
    halve_target,
    label_smoothing,
    max_addition,
    no_processing,
    process_teacher,
    soft_addition,
)
from .schedule import linear_warmup, pseudo_teacher_active
from .standardize import standardize_logits
from .swap import swap_at, swap_logits, swap_mask
from .validation import validate_epoch, validate_inputs, validate_logits_and_targets

__version__ = "0.1.0"

__all__ = [
    "LossTerms",
    "MLKDConfig",
    "MLKDTerms",
    "SLDConfig",
    "TEACHER_PROCESSORS",
    "conditional_swap",
    "conditional_swap_mask",
    "confidence_masks",
    "config_to_dict",
    "cross_entropy",
    "double_target",
    "halve_target",
    "kd_loss",
    "label_smoothing",
    "linear_warmup",
    "max_addition",
    "mlkd_config_to_dict",
    "mlkd_loss",
    "no_processing",
    "numpy_median",
    "process_teacher",
    "pseudo_teacher_active",
    "pseudo_teacher_logits",
    "sld_loss",
    "sld_loss_and_grad",
    "soft_addition",
    "standardize_logits",
    "swap_at",
    "swap_logits",
    "swap_mask",
    "validate_epoch",
    "validate_inputs",
    "validate_logits_and_targets",
]
