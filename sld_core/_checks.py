"""Input checks for the functions that take logits without labels (standardization, the KD term).
They say the same things as :mod:`sld_core.validation`, which covers logits that come with labels."""

from __future__ import annotations

import math
from typing import Any

from ._namespace import array_namespace, compute_dtype, device_of, same_device

__all__ = ["check_logits", "check_logit_pair", "check_temperatures"]


def check_logits(logits: Any, *, name: str = "logits", xp: Any = None) -> Any:
    """Check one ``(B, C)`` real floating logits array (B >= 1, C >= 2); return its namespace."""
    xp = array_namespace(logits) if xp is None else xp
    if logits.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, num_classes); got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(logits.shape)})")
    if logits.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes; got shape {tuple(logits.shape)}")
    compute_dtype(logits.dtype, xp)  # raises for non-floating logits
    return xp


def check_logit_pair(a: Any, b: Any, *, names: tuple[str, str]) -> Any:
    """Check two logits arrays of one library, device and shape; return their namespace."""
    xp = array_namespace(a, b)
    check_logits(a, name=names[0], xp=xp)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    compute_dtype(b.dtype, xp)
    if not same_device(a, b):
        raise ValueError(f"{names[0]} is on {device_of(a)} but {names[1]} is on {device_of(b)}")
    return xp


def check_temperatures(temperatures: Any) -> tuple[float, ...]:
    """``temperatures`` (one number or a sequence) as a non-empty tuple of finite positive floats."""
    if isinstance(temperatures, (bool, str, bytes)):
        raise TypeError(f"temperatures must be numbers; got {temperatures!r}")
    values = (temperatures,) if isinstance(temperatures, (int, float)) else tuple(temperatures)
    if not values:
        raise ValueError("temperatures must name at least one temperature")
    try:
        if any(isinstance(t, (bool, str, bytes)) for t in values):
            raise TypeError
        values = tuple(float(t) for t in values)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"temperatures must be numbers; got {temperatures!r}") from exc
    bad = [t for t in values if not (math.isfinite(t) and t > 0)]
    if bad:
        raise ValueError(f"temperatures must be finite and positive; got {bad}")
    return values
