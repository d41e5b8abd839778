"""Input checks shared by the generic core and the backend fast paths.

Shape, dtype, library and device are always checked (free: no data is read). The *values* -- labels
in ``[0, C)``, finite logits -- cost a device sync and a pass over the data, and are checked only with
``check_targets=True`` (the default); the generic core reduces every condition into one small array
and reads it once, the fused kernels report them from the pass they make anyway.

With ``check_targets=False`` the caller vouches for the values. Every path then clamps labels into
``[0, C)`` before it indexes with them (so nothing reads or writes out of bounds, and all backends
return the same numbers: those of the clamped labels); NaN or inf logits give NaN/inf losses.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._namespace import array_namespace, compute_dtype, device_of, same_device

__all__ = ["index_targets", "raise_for_counts", "raise_for_values", "validate_epoch", "validate_inputs",
           "validate_logits_and_targets"]


def validate_epoch(epoch: Any) -> None:
    """Raise unless ``epoch`` is a real number ``>= 0``: an ``int``, a finite ``float`` or a NumPy
    integer/floating scalar. ``bool`` and strings are refused (``"200" > 150`` is a ``TypeError`` far
    from the call; ``True`` is almost certainly a mistake).

    Raises
    ------
    TypeError
        ``epoch`` is not a real number (or is a ``bool``).
    ValueError
        ``epoch`` is NaN, infinite or negative.

    Examples
    --------
    >>> validate_epoch(151)
    >>> validate_epoch(-1)
    Traceback (most recent call last):
    ...
    ValueError: epoch must be a finite number >= 0; got -1
    """
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Real):
        raise TypeError(f"epoch must be a real number (int or float); got {type(epoch).__name__} {epoch!r}")
    if not (math.isfinite(epoch) and epoch >= 0):
        raise ValueError(f"epoch must be a finite number >= 0; got {epoch!r}")


def raise_for_values(*, nonfinite: dict[str, bool], bad_labels: bool, targets: Any, num_classes: int,
                     xp: Any) -> None:
    """Raise one ``ValueError`` naming every value problem found (no-op when there is none).

    ``nonfinite`` maps an input's name (``"student_logits"``, ...) to whether it holds NaN or inf;
    ``bad_labels`` says some label lies outside ``[0, num_classes)`` (the message then reads the range
    of ``targets``; that extra sync happens only on the way to the error). The fused backends call this
    with the flags their kernels return, so every path words the error alike.
    """
    problems = [f"{name} holds NaN or inf" for name, bad in nonfinite.items() if bad]
    if bad_labels:
        low, high = int(xp.min(targets)), int(xp.max(targets))
        problems.append(f"targets must lie in [0, {num_classes}); got values from {low} to {high}")
    if problems:
        raise ValueError("; ".join(problems))


def raise_for_counts(counts: Any, *, targets: Any, num_classes: int, xp: Any) -> None:
    """:func:`raise_for_values` from the three counts a fused kernel returns: rows with non-finite
    student logits, with non-finite teacher logits, and labels outside ``[0, num_classes)`` (host
    numbers, already read back)."""
    bad_student, bad_teacher, bad_labels = (float(c) > 0 for c in counts)
    if bad_student or bad_teacher or bad_labels:
        raise_for_values(nonfinite={"student_logits": bad_student, "teacher_logits": bad_teacher},
                         bad_labels=bad_labels, targets=targets, num_classes=num_classes, xp=xp)


def _check_values(xp: Any, targets: Any, num_classes: int, logits: dict[str, Any]) -> None:
    # One 0-d integer holds every condition (bit i: logits i non-finite, top bit: labels), so the
    # check costs one device sync however many inputs there are.
    code = xp.astype(xp.min(targets) < 0, xp.int32) | xp.astype(xp.max(targets) >= num_classes, xp.int32)
    for bit, array in enumerate(logits.values(), start=1):
        code = code | (xp.astype(xp.any(~xp.isfinite(array)), xp.int32) << bit)
    code = int(code)  # the sync
    if code:
        raise_for_values(nonfinite={name: bool(code >> bit & 1) for bit, name in enumerate(logits, start=1)},
                         bad_labels=bool(code & 1), targets=targets, num_classes=num_classes, xp=xp)


def index_targets(targets: Any, num_classes: int, *, xp: Any, check_targets: bool) -> Any:
    """``targets`` as the namespace's default index dtype (torch's ``gather`` needs int64, JAX without
    x64 uses int32), clamped into ``[0, num_classes)`` when the values were not checked."""
    index_dtype = xp.__array_namespace_info__().default_dtypes()["indexing"]
    if targets.dtype != index_dtype:
        targets = xp.astype(targets, index_dtype)
    if not check_targets:
        targets = xp.clip(targets, 0, num_classes - 1)
    return targets


def _check_structure(logits: Any, targets: Any, name: str, xp: Any) -> None:
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


def validate_logits_and_targets(logits: Any, targets: Any, *, check_targets: bool = True,
                                name: str = "logits", xp: Any = None) -> Any:
    """Check one ``(B, C)`` logits array against its ``(B,)`` integer targets; return the namespace.

    Raises
    ------
    TypeError
        Arrays from different libraries, non-floating logits, non-integer targets.
    ValueError
        Wrong ranks or lengths, an empty batch, fewer than two classes, arrays on different devices,
        or (with ``check_targets``) a label outside ``[0, C)`` or a NaN/inf logit.
    """
    xp = array_namespace(logits, targets) if xp is None else xp
    _check_structure(logits, targets, name, xp)
    if check_targets:
        _check_values(xp, targets, logits.shape[1], {name: logits})
    return xp


def validate_inputs(student_logits: Any, teacher_logits: Any, targets: Any, *,
                    check_targets: bool = True) -> Any:
    """Check the three inputs of the SLD loss; return their namespace.

    Always: one library, 2-D logits of one shape on one device, real floating logits, one integer
    label per row. With ``check_targets`` also the values (one device sync for all of them): labels in
    ``[0, C)`` and finite logits; the error names the input at fault.

    Examples
    --------
    >>> import numpy as np
    >>> validate_inputs(np.zeros((2, 3)), np.array([[0.0, np.nan, 1.0]] * 2), np.array([0, 1]))
    Traceback (most recent call last):
    ...
    ValueError: teacher_logits holds NaN or inf (check_targets=True checks these values)
    """
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
    _check_structure(student_logits, targets, "student_logits", xp)
    if check_targets:
        _check_values(xp, targets, student_logits.shape[1],
                      {"student_logits": student_logits, "teacher_logits": teacher_logits})
    return xp
