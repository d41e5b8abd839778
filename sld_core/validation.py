"""Input checks shared by the generic core and the backend fast paths. Shape, dtype, library and
device are always checked (free); the label range costs a device sync and can be switched off."""

from __future__ import annotations

from typing import Any

from ._namespace import array_namespace, compute_dtype, device_of, same_device

__all__ = ["validate_inputs", "validate_logits_and_targets"]


def validate_logits_and_targets(logits: Any, targets: Any, *, check_targets: bool = True,
                                name: str = "logits", xp: Any = None) -> Any:
    """Check one ``(B, C)`` logits array against its ``(B,)`` integer targets; return the namespace.

    Raises
    ------
    TypeError
        Arrays from different libraries, non-floating logits, non-integer targets.
    ValueError
        Wrong ranks or lengths, an empty batch, fewer than two classes, arrays on different devices,
        or (with ``check_targets``) a label outside ``[0, C)``.
    """
    xp = array_namespace(logits, targets) if xp is None else xp
    if logits.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, num_classes); got shape {tuple(logits.shape)}")
    batch, num_classes = logits.shape
    if batch == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(logits.shape)})")
    if num_classes < 2:
        raise ValueError(f"{name} needs at least 2 classes; got shape {tuple(logits.shape)}")
    compute_dtype(logits.dtype, xp)  # raises for non-floating logits
    if targets.ndim != 1 or targets.shape[0] != batch:
        raise ValueError(
            f"targets must be 1-D with one label per row ({batch},); got shape {tuple(targets.shape)}"
        )
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(f"targets must have an integer dtype; got {targets.dtype}")
    if not same_device(logits, targets):
        raise ValueError(f"{name} is on {device_of(logits)} but targets are on {device_of(targets)}")
    if check_targets:
        # bool() of a device array waits for the device: this is the sync `check_targets=False` avoids.
        low, high = xp.min(targets), xp.max(targets)
        if bool(low < 0) or bool(high >= num_classes):
            raise ValueError(
                f"targets must lie in [0, {num_classes}); got values from {int(low)} to {int(high)}"
            )
    return xp


def validate_inputs(student_logits: Any, teacher_logits: Any, targets: Any, *,
                    check_targets: bool = True) -> Any:
    """Check the three inputs of the SLD loss; return their namespace (see
    :func:`validate_logits_and_targets` for what is checked)."""
    xp = array_namespace(student_logits, teacher_logits, targets)
    if student_logits.ndim != 2:
        raise ValueError(
            f"student_logits must be 2-D (batch, num_classes); got shape {tuple(student_logits.shape)}"
        )
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            "student_logits and teacher_logits must have the same shape; got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not same_device(student_logits, teacher_logits):
        raise ValueError(
            f"student_logits is on {device_of(student_logits)} but teacher_logits is on "
            f"{device_of(teacher_logits)}"
        )
    compute_dtype(teacher_logits.dtype, xp)
    validate_logits_and_targets(student_logits, targets, check_targets=check_targets,
                                name="student_logits", xp=xp)
    return xp
