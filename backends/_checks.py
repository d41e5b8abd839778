"""The input checks of the fused paths that run before the kernel, made cheap for the common case.

:func:`sld_core.validate_inputs` with ``check_targets=False`` reads only each input's type, shape,
dtype and device, so its verdict is a function of those: :func:`check_structure` runs it once per
layout and afterwards only looks the layout up (a dict lookup instead of ~10 us of namespace and
device queries, a large share of a small call). Values (labels in range, finite logits) are not
part of it: the compiled kernels report them from their own pass.
"""

from __future__ import annotations

from typing import Any

import sld_core

__all__ = ["check_epoch", "check_structure"]

# Layouts seen to pass; bounded so a process that sees ever new shapes cannot grow it without end.
_PASSED: set[tuple[Any, ...]] = set()
_MAX_LAYOUTS = 1024


def check_structure(student_logits: Any, teacher_logits: Any, targets: Any) -> None:
    """Raise what ``sld_core.validate_inputs(..., check_targets=False)`` raises for these inputs; a
    layout that passed once passes again without the call.

    Examples
    --------
    >>> import numpy as np
    >>> check_structure(np.zeros((2, 3)), np.zeros((2, 3)), np.array([0, 1]))
    >>> check_structure(np.zeros((2, 3)), np.zeros((2, 4)), np.array([0, 1]))
    Traceback (most recent call last):
    ...
    ValueError: student_logits and teacher_logits must have the same shape; got (2, 3) and (2, 4)
    """
    # each input's type, shape, dtype and device, in one flat tuple (nested ones built by a helper cost
    # ~1 us more with cold caches)
    s, t, y = student_logits, teacher_logits, targets
    key = (type(s), s.shape, s.dtype, getattr(s, "device", None), type(t), t.shape, t.dtype,
           getattr(t, "device", None), type(y), y.shape, y.dtype, getattr(y, "device", None))
    if key in _PASSED:
        return
    sld_core.validate_inputs(student_logits, teacher_logits, targets, check_targets=False)
    if len(_PASSED) >= _MAX_LAYOUTS:
        _PASSED.clear()
    _PASSED.add(key)


def check_epoch(epoch: Any) -> None:
    """:func:`sld_core.validate_epoch`, skipped for the usual ``int >= 0`` (which it accepts; the call
    itself costs microseconds with cold caches, a noticeable share of a small step).

    Examples
    --------
    >>> check_epoch(151)
    >>> check_epoch(True)
    Traceback (most recent call last):
    ...
    TypeError: epoch must be a real number (int or float); got bool True
    """
    if type(epoch) is not int or epoch < 0:
        sld_core.validate_epoch(epoch)
