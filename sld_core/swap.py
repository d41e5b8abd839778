r"""The swap (paper, Sec. 3.2): where a prediction is wrong, the target logit trades places with the
top logit, so the target becomes the maximum and every other value keeps its place.

.. math:: \mathrm{swap}(z, y)_k = z_m \text{ if } k = y;\; z_y \text{ if } k = m;\; z_k \text{ otherwise},
   \quad m = \arg\max_k z_k \text{ (first index on ties)}.

When ``m == y`` both cases pick ``z_y``, so correct rows come out unchanged with no extra mask.
"""

from __future__ import annotations

from typing import Any

from ._namespace import device_of, take_row
from .validation import index_targets, validate_logits_and_targets

__all__ = ["swap_logits", "swap_mask", "swap_at"]


def swap_at(x: Any, targets: Any, top: Any, *, xp: Any) -> Any:
    """Exchange ``x[b, targets[b]]`` and ``x[b, top[b]]`` in every row, as a new array.

    The positions are given rather than recomputed so that callers can swap a derived array (such as
    ``log_softmax(z / T)``) at the positions found on the raw logits ``z``.
    """
    columns = xp.arange(x.shape[1], device=device_of(x))
    is_target = columns == xp.expand_dims(targets, axis=1)
    is_top = columns == xp.expand_dims(top, axis=1)
    at_target = take_row(x, targets, xp=xp)
    at_top = take_row(x, top, xp=xp)
    return xp.where(is_target, at_top, xp.where(is_top, at_target, x))


def swap_logits(logits: Any, targets: Any, /, *, check_targets: bool = True) -> Any:
    """Swap the target and the top logit in every row whose top-1 prediction is wrong.

    Parameters
    ----------
    logits : array, shape (B, C), real floating
    targets : array, shape (B,), integer labels in ``[0, C)``
    check_targets : bool
        Check the values (labels in range, finite logits; one device sync); pass ``False`` in hot
        loops (labels are then clamped into ``[0, C)``).

    Returns
    -------
    array, shape (B, C), same namespace, dtype and device as ``logits``. The input is never modified.

    Examples
    --------
    >>> import numpy as np
    >>> swap_logits(np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]]), np.array([2, 1]))
    array([[2., 1., 3.],
           [0., 5., 1.]])
    """
    xp = validate_logits_and_targets(logits, targets, check_targets=check_targets)
    targets = index_targets(targets, logits.shape[1], xp=xp, check_targets=check_targets)
    return swap_at(logits, targets, xp.argmax(logits, axis=1), xp=xp)


def swap_mask(logits: Any, targets: Any, /, *, check_targets: bool = True) -> Any:
    """Boolean ``(B,)`` array: the rows :func:`swap_logits` changes (top-1 prediction wrong).
    Its mean is the swap rate a training run logs."""
    xp = validate_logits_and_targets(logits, targets, check_targets=check_targets)
    targets = index_targets(targets, logits.shape[1], xp=xp, check_targets=check_targets)
    return xp.argmax(logits, axis=1) != targets
