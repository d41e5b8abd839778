r"""Teacher processing: ways to change a teacher's logits before any logit loss sees them. The paper
puts the swap here, as a preprocessing step for any logit loss, and its ablation compares it with
other ways to fix a wrong teacher, which it rejects. Each function maps logits ``z`` (B, C) and labels ``y``
(B,) to new logits of the same shape, dtype and device; ``m = argmax_k z_k`` (first index on ties) and
a row is *wrong* when ``m != y``.

- ``none``: ``z`` unchanged (plain KD);
- ``swap``: in wrong rows, ``z_y`` and ``z_m`` trade places (SLD, :func:`sld_core.swap_logits`);
- ``conditional_swap``: the swap, only in the wrong rows whose probability gap ``p_m - p_y`` (softmax
  at T = 1) is ``< threshold`` (``mode="below"``) or ``>= threshold`` (``mode="at_least"``);
- ``soft_addition``: ``z_y <- z_y + 0.1 z_y``;
- ``max_addition``: ``z_y <- max_k z_k``;
- ``double_target``: ``z_y <- 2 z_y``; ``halve_target``: ``z_y <- z_y / 2``;
- ``label_smoothing``: the row becomes ``log((1 - eps) e_y + eps / C)``, eps = 0.1.

Which rows: the alternatives stand in for the swap as ways to fix a *wrong* teacher, so by default
each changes only the wrong rows (``rows="wrong"``), the rows the swap changes; ``rows="all"``
applies the rule to every row (``none``, ``swap``, the conditional swap and ``max_addition`` have no
such switch: on a correct row they are the identity anyway).

Softmax ignores a constant added to a row, but the multiplicative rules (soft addition, doubling,
halving) do not: their effect depends on the network's arbitrary logit offset, and for a negative
``z_y`` they move the target the other way (soft addition and doubling *lower* it, halving raises it).
They are implemented literally, as stated, since that is what the ablation names.

>>> import numpy as np
>>> z = np.array([[1.0, 3.0, 2.0]]); y = np.array([0])
>>> process_teacher(z, y, "swap"), process_teacher(z, y, "max_addition")
(array([[3., 1., 2.]]), array([[3., 3., 2.]]))
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from ._namespace import compute_dtype, device_of, take_row
from .swap import swap_at, swap_logits
from .temperature_kl import log_softmax
from .validation import validate_logits_and_targets

__all__ = [
    "TEACHER_PROCESSORS",
    "ROWS",
    "conditional_swap",
    "conditional_swap_mask",
    "double_target",
    "halve_target",
    "label_smoothing",
    "max_addition",
    "no_processing",
    "process_teacher",
    "soft_addition",
]

ROWS = ("wrong", "all")
MODES = ("below", "at_least")


def no_processing(logits: Any, targets: Any, /, *, check_targets: bool = True) -> Any:
    """The identity: the teacher as it is (plain KD). Returns ``logits`` itself, not a copy.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[1.0, 3.0]])
    >>> no_processing(z, np.array([0])) is z
    True
    """
    validate_logits_and_targets(logits, targets, check_targets=check_targets)
    return logits


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _check_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, not nan")
    return float(value)


def conditional_swap_mask(logits: Any, targets: Any, /, *, threshold: float, mode: str = "below",
                          check_targets: bool = True) -> Any:
    r"""Boolean ``(B,)`` array: the rows :func:`conditional_swap` changes (its mean is the swap rate).

    A row is selected when it is wrong (``argmax != y``) and its probability gap
    :math:`g = p_m - p_y`, with :math:`p = \mathrm{softmax}(z)` at T = 1 computed in the compute dtype
    (float32 for half precision), satisfies ``g < threshold`` (``mode="below"``, strict) or
    ``g >= threshold`` (``mode="at_least"``). Since :math:`0 \le g < 1` in exact arithmetic, a
    threshold ``>= 1`` (or ``inf``) selects every wrong row in ``"below"`` mode and none in
    ``"at_least"`` mode, even where ``g`` rounds to 1; ``0`` selects none / every wrong row. The two
    modes split the wrong rows between them for every threshold.
    """
    xp = validate_logits_and_targets(logits, targets, check_targets=check_targets)
    threshold = _check_number(threshold, "threshold")
    if threshold < 0:
        raise ValueError(f"threshold is a probability gap and must be >= 0; got {threshold}")
    _check_choice(mode, "mode", MODES)
    top = xp.argmax(logits, axis=1)
    wrong = top != targets
    if threshold >= 1:
        below = xp.ones_like(wrong)
    else:
        z = xp.astype(logits, compute_dtype(logits.dtype, xp), copy=False)
        p = xp.exp(log_softmax(z, xp=xp))
        gap = xp.squeeze(take_row(p, top, xp=xp) - take_row(p, targets, xp=xp), axis=1)
        below = gap < threshold
    return wrong & below if mode == "below" else wrong & ~below


def conditional_swap(logits: Any, targets: Any, /, *, threshold: float, mode: str = "below",
                     check_targets: bool = True) -> Any:
    r"""The SLD swap, only in the wrong rows whose teacher probability gap ``p[argmax] - p[y]``
    (softmax at T = 1) is below ``threshold`` (``mode="below"``, strict ``<``), or at least
    ``threshold`` (``mode="at_least"``, ``>=``); other rows are unchanged.

    ``mode="below"`` with ``threshold >= 1`` (or ``inf``) is the plain swap and with ``0`` no change;
    see :func:`conditional_swap_mask` for the exact row rule.

    Parameters
    ----------
    logits : array, shape (B, C), real floating
    targets : array, shape (B,), integer labels in ``[0, C)``
    threshold : float
        A probability gap, ``>= 0`` (``inf`` allowed).
    mode : {"below", "at_least"}
    check_targets : bool
        Check the label range (one device sync); pass ``False`` in hot loops.

    Returns
    -------
    array, shape (B, C), same namespace, dtype and device as ``logits`` (each row a permutation of the
    input row). Autograd flows through, as through :func:`sld_core.swap_logits`.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[0.0, 0.1, -5.0], [0.0, 5.0, -5.0]]); y = np.array([0, 0])  # gaps 0.02, 0.99
    >>> conditional_swap(z, y, threshold=0.5)
    array([[ 0.1,  0. , -5. ],
           [ 0. ,  5. , -5. ]])
    >>> conditional_swap(z, y, threshold=0.5, mode="at_least")
    array([[ 0. ,  0.1, -5. ],
           [ 5. ,  0. , -5. ]])
    """
    xp = validate_logits_and_targets(logits, targets, check_targets=check_targets)
    rows = conditional_swap_mask(logits, targets, threshold=threshold, mode=mode, check_targets=False)
    # Swapping the target with itself is the identity: unselected rows keep their logits.
    partner = xp.where(rows, xp.argmax(logits, axis=1), targets)
    return swap_at(logits, targets, partner, xp=xp)


def _replace_target(logits: Any, targets: Any, new_target: Callable[[Any, Any, Any], Any], *, rows: str,
                    check_targets: bool) -> Any:
    """``logits`` with ``z_y`` replaced by ``new_target(z_y, z, xp)`` (a ``(B, 1)`` column) in the
    selected rows, computed in the compute dtype and rounded once to the input dtype."""
    xp = validate_logits_and_targets(logits, targets, check_targets=check_targets)
    _check_choice(rows, "rows", ROWS)
    z = xp.astype(logits, compute_dtype(logits.dtype, xp), copy=False)
    columns = xp.arange(z.shape[1], device=device_of(z))
    change = columns == xp.expand_dims(targets, axis=1)
    if rows == "wrong":
        change = change & xp.expand_dims(xp.argmax(z, axis=1) != targets, axis=1)
    out = xp.where(change, new_target(take_row(z, targets, xp=xp), z, xp), z)
    return xp.astype(out, logits.dtype, copy=False)


def soft_addition(logits: Any, targets: Any, /, *, fraction: float = 0.1, rows: str = "wrong",
                  check_targets: bool = True) -> Any:
    """Add to the target logit ``fraction`` (10 %) of itself: ``z_y <- z_y + fraction * z_y``, literally,
    so a negative ``z_y`` *decreases* (moves away from zero) and ``z_y = 0`` stays put.

    Parameters
    ----------
    logits : array, shape (B, C), real floating
    targets : array, shape (B,), integer labels in ``[0, C)``
    fraction : float
        Finite; the paper's value is 0.1.
    rows : {"wrong", "all"}
        Change only the rows whose top-1 prediction is wrong (default), or every row.
    check_targets : bool
        Check the label range (one device sync); pass ``False`` in hot loops.

    Returns
    -------
    array, shape (B, C), same namespace, dtype and device as ``logits``; only the target column of the
    selected rows differs. Differentiable.

    Examples
    --------
    >>> import numpy as np
    >>> soft_addition(np.array([[2.0, 3.0], [-2.0, 3.0], [4.0, 1.0]]), np.array([0, 0, 0]))
    array([[ 2.2,  3. ],
           [-2.2,  3. ],
           [ 4. ,  1. ]])
    """
    fraction = _check_number(fraction, "fraction")
    if not math.isfinite(fraction):
        raise ValueError(f"fraction must be finite; got {fraction}")
    return _replace_target(logits, targets, lambda zy, z, xp: zy + fraction * zy, rows=rows,
                           check_targets=check_targets)


def max_addition(logits: Any, targets: Any, /, *, check_targets: bool = True) -> Any:
    """Raise the target logit to the row maximum, ``z_y <- max_k z_k``: a wrong row's target ties with
    its top class (the top keeps its value); a correct row is unchanged.

    Parameters
    ----------
    logits : array, shape (B, C), real floating
    targets : array, shape (B,), integer labels in ``[0, C)``
    check_targets : bool
        Check the label range (one device sync); pass ``False`` in hot loops.

    Returns
    -------
    array, shape (B, C), same namespace, dtype and device as ``logits``. Differentiable (the new target
    takes its gradient from the maximum).

    Examples
    --------
    >>> import numpy as np
    >>> max_addition(np.array([[1.0, 3.0, 2.0]]), np.array([2]))
    array([[1., 3., 3.]])
    """
    return _replace_target(logits, targets, lambda zy, z, xp: xp.max(z, axis=1, keepdims=True),
                           rows="all", check_targets=check_targets)


def double_target(logits: Any, targets: Any, /, *, rows: str = "wrong", check_targets: bool = True) -> Any:
    """Double the target logit, ``z_y <- 2 z_y`` (a negative ``z_y`` decreases). Parameters and
    returns as :func:`soft_addition`.

    Examples
    --------
    >>> import numpy as np
    >>> double_target(np.array([[1.0, 3.0], [-1.0, 3.0]]), np.array([0, 0]))
    array([[ 2.,  3.],
           [-2.,  3.]])
    """
    return _replace_target(logits, targets, lambda zy, z, xp: 2.0 * zy, rows=rows,
                           check_targets=check_targets)


def halve_target(logits: Any, targets: Any, /, *, rows: str = "wrong", check_targets: bool = True) -> Any:
    """Halve the target logit, ``z_y <- z_y / 2`` (it moves toward zero: a negative ``z_y`` increases).
    Parameters and returns as :func:`soft_addition`.

    Examples
    --------
    >>> import numpy as np
    >>> halve_target(np.array([[1.0, 3.0], [-1.0, 3.0]]), np.array([0, 0]))
    array([[ 0.5,  3. ],
           [-0.5,  3. ]])
    """
    return _replace_target(logits, targets, lambda zy, z, xp: 0.5 * zy, rows=rows,
                           check_targets=check_targets)


def label_smoothing(logits: Any, targets: Any, /, *, epsilon: float = 0.1, rows: str = "wrong",
                    check_targets: bool = True) -> Any:
    r"""Replace the teacher by the label-smoothed one-hot. The new row is the *log* of the smoothed
    distribution, :math:`\log\big((1 - \epsilon)\, e_y + \epsilon / C\big)`, so that softmax at T = 1
    gives exactly that distribution; at T > 1, softmax of it divided by T is the flatter
    :math:`q \propto ((1 - \epsilon)\, e_y + \epsilon / C)^{1/T}`, not the smoothed label. All values
    are finite for :math:`0 < \epsilon \le 1`.

    Parameters
    ----------
    logits : array, shape (B, C), real floating
    targets : array, shape (B,), integer labels in ``[0, C)``
    epsilon : float
        In ``(0, 1]``; 0.1 in the paper's ablation. (``0`` would give ``log 0``.)
    rows : {"wrong", "all"}
        Replace only the rows whose top-1 prediction is wrong (default), or every row (the teacher is
        then not used at all).
    check_targets : bool
        Check the label range (one device sync); pass ``False`` in hot loops.

    Returns
    -------
    array, shape (B, C), same namespace, dtype and device as ``logits``. Replaced rows are constants (zero
    gradient); the others are the input rows.

    Examples
    --------
    >>> import numpy as np
    >>> z = label_smoothing(np.array([[0.0, 2.0], [3.0, 1.0]]), np.array([0, 0]), epsilon=0.2)
    >>> np.exp(z).round(6)  # the wrong first row becomes 0.9 / 0.1; the correct second row is kept
    array([[ 0.9     ,  0.1     ],
           [20.085537,  2.718282]])
    """
    epsilon = _check_number(epsilon, "epsilon")
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must lie in (0, 1] (0 would put log 0 in the logits); got {epsilon}")

    def smoothed(z: Any, xp: Any) -> Any:
        num_classes = z.shape[1]
        # Constants of the row: taken in float64 on the host, rounded once to the compute dtype.
        on = xp.asarray(math.log((1.0 - epsilon) + epsilon / num_classes), dtype=z.dtype, device=device_of(z))
        off = xp.asarray(math.log(epsilon / num_classes), dtype=z.dtype, device=device_of(z))
        columns = xp.arange(z.shape[1], device=device_of(z))
        return xp.where(columns == xp.expand_dims(targets, axis=1), on, off)

    return _replace_rows(logits, targets, smoothed, rows=rows, check_targets=check_targets)


def _replace_rows(logits: Any, targets: Any, new_rows: Callable[[Any, Any], Any], *, rows: str,
                  check_targets: bool) -> Any:
    """``logits`` with the selected rows replaced by ``new_rows(z, xp)`` (B, C), in the compute
    dtype, rounded once to the input dtype. ``where`` keeps unselected rows in the autograd graph."""
    xp = validate_logits_and_targets(logits, targets, check_targets=check_targets)
    _check_choice(rows, "rows", ROWS)
    z = xp.astype(logits, compute_dtype(logits.dtype, xp), copy=False)
    if rows == "wrong":
        change = xp.expand_dims(xp.argmax(z, axis=1) != targets, axis=1)
    else:
        change = xp.ones((z.shape[0], 1), dtype=xp.bool, device=device_of(z))
    out = xp.where(change, new_rows(z, xp), z)
    return xp.astype(out, logits.dtype, copy=False)


TEACHER_PROCESSORS: dict[str, Callable[..., Any]] = {
    "none": no_processing,
    "swap": swap_logits,
    "conditional_swap": conditional_swap,
    "soft_addition": soft_addition,
    "max_addition": max_addition,
    "double_target": double_target,
    "halve_target": halve_target,
    "label_smoothing": label_smoothing,
}


def process_teacher(logits: Any, targets: Any, name: str, /, **params: Any) -> Any:
    """Apply the teacher processing registered as ``name`` in :data:`TEACHER_PROCESSORS`.

    Parameters
    ----------
    logits : array, shape (B, C), real floating
    targets : array, shape (B,), integer labels in ``[0, C)``
    name : str
        A key of :data:`TEACHER_PROCESSORS`: ``none``, ``swap``, ``conditional_swap``, ``soft_addition``,
        ``max_addition``, ``double_target``, ``halve_target``, ``label_smoothing``.
    **params
        That function's keyword parameters (e.g. ``threshold=0.5`` for ``conditional_swap``,
        ``rows="all"``, ``check_targets=False``).

    Returns
    -------
    array, shape (B, C), same namespace, dtype and device as ``logits``.

    Raises
    ------
    ValueError
        An unknown ``name`` or a bad parameter value.
    TypeError
        A parameter that ``name`` does not take, or a required one left out.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[1.0, 3.0, 2.0]]); y = np.array([0])
    >>> process_teacher(z, y, "conditional_swap", threshold=0.9)  # gap 0.58 < 0.9: swapped
    array([[3., 1., 2.]])
    >>> process_teacher(z, y, "double_target", rows="all")
    array([[2., 3., 2.]])
    """
    try:
        fn = TEACHER_PROCESSORS[name]
    except (KeyError, TypeError):
        choices = sorted(TEACHER_PROCESSORS)
        raise ValueError(f"unknown teacher processing {name!r}; choose one of {choices}") from None
    signature = inspect.signature(fn)
    accepted = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"teacher processing {name!r} takes the parameters {accepted}; got {unknown}")
    missing = [p.name for p in signature.parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
               and p.name not in params]
    if missing:
        raise TypeError(f"teacher processing {name!r} needs the parameter(s) {missing}")
    return fn(logits, targets, **params)
