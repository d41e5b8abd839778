r"""The distillation terms as free functions of logits: the multi-temperature KD term against *any*
target logits, the pseudo-teacher target, and the hard-label cross-entropy.

.. math:: \mathrm{KD}(s, t) = \sum_{T} T^2 \, \frac{1}{B} \sum_{b=1}^{B}
   \mathrm{KL}\big(\sigma(t_b / T) \,\|\, \sigma(s_b / T)\big)

With ``t = swap(teacher)`` it is SLD's teacher term, and with ``t = swap(s)``
(:func:`pseudo_teacher_logits`) its pseudo-teacher term, so a method can be written term by term:

.. code-block:: python

    temps = (1, 2, 3, 4, 5, 6)
    loss = 0.1 * cross_entropy(s, y) + 0.9 * (
        kd_loss(s, swap_logits(t, y), temps)
        + (epoch > 150) * kd_loss(s, pseudo_teacher_logits(s, y), temps))   # == sld_loss(...).total

and "KD + pseudo-teacher" is the same line with ``t`` in place of ``swap_logits(t, y)``.
``standardize=True`` applies logit standardization (:mod:`sld_core.standardize`) to both sides first.

>>> import numpy as np
>>> s = np.array([[2.0, 1.0, 0.0]]); t = np.array([[0.0, 3.0, 1.0]])
>>> round(float(kd_loss(s, t, 4.0)), 6), float(kd_loss(s, s, (1, 2)))
(1.397468, 0.0)
"""

from __future__ import annotations

from typing import Any

from ._checks import check_logit_pair, check_temperatures
from ._namespace import compute_dtype, device_of, stop_gradient, take_row
from .standardize import standardize_rows
from .swap import swap_logits
from .temperature_kl import kl_rows, log_softmax
from .validation import validate_logits_and_targets

__all__ = ["kd_loss", "pseudo_teacher_logits", "cross_entropy"]

_REDUCTIONS = ("mean", "none")


def kd_loss(student_logits: Any, target_logits: Any, /, temperatures: Any, *, standardize: bool = False,
            reduction: str = "mean") -> Any:
    r"""Multi-temperature KD, :math:`\sum_T T^2 \mathrm{mean}_b \mathrm{KL}(\sigma(t_b/T) \| \sigma(s_b/T))`.

    Parameters
    ----------
    student_logits, target_logits : array, shape (B, C)
        Same library, device and shape. The target is *not* detached here: pass a teacher computed
        without gradient, or :func:`pseudo_teacher_logits` with ``detach=True``, for a constant target.
    temperatures : float or sequence of float
        Finite and positive; the terms are summed (not averaged) over them, each weighted by ``T**2``.
    standardize : bool
        Standardize both logits row-wise first (Sun et al., CVPR 2024): :math:`\mathcal{Z}(\cdot)/T`.
    reduction : {"mean", "none"}
        ``"mean"``: a 0-d array, the mean over rows. ``"none"``: the ``(B,)`` per-row sums over ``T``.

    Returns
    -------
    array, 0-d or (B,), in the inputs' namespace and device; float64 for float64 student logits,
    float32 otherwise. Differentiable (torch autograd, ``jax.grad``) in both arguments.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]); t = np.array([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    >>> kd_loss(s, t, (1.0, 2.0), reduction="none").round(6)
    array([2.234725, 0.      ])
    """
    xp = check_logit_pair(student_logits, target_logits, names=("student_logits", "target_logits"))
    temps = check_temperatures(temperatures)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    dtype = compute_dtype(student_logits.dtype, xp)
    s = xp.astype(student_logits, dtype, copy=False)
    t = xp.astype(target_logits, dtype, copy=False)
    if standardize:
        s, t = standardize_rows(s, xp=xp), standardize_rows(t, xp=xp)
    return kd_sum(s, t, temps, reduction=reduction, xp=xp)


def kd_sum(s: Any, t: Any, temperatures: tuple[float, ...], *, reduction: str = "mean", xp: Any) -> Any:
    """:func:`kd_loss` on checked arrays already in their compute dtype. With ``"mean"`` it adds
    ``T**2 * mean_b KL`` temperature by temperature, in the order :func:`sld_core.sld_loss` does."""
    if reduction == "mean":
        total = xp.zeros((), dtype=s.dtype, device=device_of(s))
    else:
        total = xp.zeros((s.shape[0],), dtype=s.dtype, device=device_of(s))
    for temperature in temperatures:
        per_row = kl_rows(log_softmax(t, temperature, xp=xp), log_softmax(s, temperature, xp=xp), xp=xp)
        total = total + temperature**2 * (xp.mean(per_row) if reduction == "mean" else per_row)
    return total


def pseudo_teacher_logits(student_logits: Any, targets: Any, /, *, detach: bool = False,
                          check_targets: bool = True) -> Any:
    """The pseudo-teacher: the student's own logits with the SLD swap applied.

    Parameters
    ----------
    student_logits : array, shape (B, C)
    targets : array, shape (B,), integer labels in ``[0, C)``
    detach : bool
        ``False`` (the official code): gradient also flows through the swapped logits. ``True``: a
        constant target (cut out of the autograd graph; the same array on NumPy and other libraries
        without autograd).
    check_targets : bool
        Check the label range (one device sync); pass ``False`` in hot loops.

    Returns
    -------
    array, shape (B, C), same namespace, device and dtype as ``student_logits``.

    Examples
    --------
    >>> import numpy as np
    >>> pseudo_teacher_logits(np.array([[2.0, 1.0, 0.0]]), np.array([2]))
    array([[0., 1., 2.]])
    """
    validate_logits_and_targets(student_logits, targets, check_targets=check_targets, name="student_logits")
    source = stop_gradient(student_logits) if detach else student_logits
    return swap_logits(source, targets, check_targets=False)


def cross_entropy(logits: Any, targets: Any, /, *, check_targets: bool = True) -> Any:
    r"""Hard-label cross-entropy, :math:`\mathrm{mean}_b\, (-\log \sigma(z_b)_{y_b})`.

    Parameters
    ----------
    logits : array, shape (B, C)
    targets : array, shape (B,), integer labels in ``[0, C)``
    check_targets : bool
        Check the label range (one device sync); pass ``False`` in hot loops.

    Returns
    -------
    0-d array in the namespace and device of ``logits``; float64 for float64 input, else float32.

    Examples
    --------
    >>> import numpy as np
    >>> round(float(cross_entropy(np.array([[0.0, 0.0]]), np.array([1]))), 6)  # log 2
    0.693147
    """
    xp = validate_logits_and_targets(logits, targets, check_targets=check_targets)
    z = xp.astype(logits, compute_dtype(logits.dtype, xp), copy=False)
    return cross_entropy_rows_mean(z, targets, xp=xp)


def cross_entropy_rows_mean(z: Any, targets: Any, *, xp: Any) -> Any:
    """:func:`cross_entropy` on checked logits already in their compute dtype."""
    return xp.mean(-xp.squeeze(take_row(log_softmax(z, xp=xp), targets, xp=xp), axis=1))
