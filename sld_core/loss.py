r"""The SLD objective (paper, Eq. 6-9) and its closed-form gradient.

Per view, with student logits ``s``, teacher logits ``t`` and labels ``y``:

.. math::
   L = w_{ce}\,\mathrm{CE}(s, y) + w_{kd} \sum_{T} T^2 \Big[
       \mathrm{KL}\big(\sigma(\mathrm{swap}(t)/T) \,\|\, \sigma(s/T)\big)
       + [\text{epoch} > \gamma]\, \mathrm{KL}\big(\sigma(\mathrm{swap}(s)/T) \,\|\, \sigma(s/T)\big) \Big]

KL is summed over classes and averaged over the batch. The second KL is the *pseudo-teacher*: the
student's own swapped logits. The official code does not detach it, so its gradient also flows through
``swap(s)``; ``detach_pseudo_teacher=True`` treats it as a constant target instead.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from ._checks import check_temperatures
from ._namespace import compute_dtype, device_of, stop_gradient, take_row
from .schedule import pseudo_teacher_active
from .swap import swap_at
from .temperature_kl import kl_rows, log_softmax
from .validation import index_targets, validate_epoch, validate_inputs

__all__ = ["SLDConfig", "LossTerms", "sld_loss", "sld_loss_and_grad"]


@dataclass(frozen=True)
class SLDConfig:
    """Hyper-parameters of SLD; the defaults are the official CIFAR-100 recipe."""

    temperatures: tuple[float, ...] = (1, 2, 3, 4, 5, 6)  # multi-temperature KL, as in MLKD/SLD
    gamma: float = 150  # pseudo-teacher joins after this epoch (of 240)
    ce_weight: float = 0.1  # the hard-label term is small: the swapped teacher already carries the label
    kd_weight: float = 0.9
    teacher_swap: bool = True  # False gives plain multi-temperature KD from the teacher
    pseudo_teacher: bool = True  # False drops the student's own swapped logits entirely
    detach_pseudo_teacher: bool = False  # official code: not detached

    def __post_init__(self) -> None:
        # Strict types: "123" must not become temperatures (1, 2, 3), nor "no" a true teacher_swap.
        object.__setattr__(self, "temperatures", check_temperatures(self.temperatures))
        for name in ("ce_weight", "kd_weight"):
            value = getattr(self, name)
            if not (_is_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number; got {value!r}")
        if not _is_real(self.gamma) or math.isnan(self.gamma):
            raise ValueError(f"gamma must be a number (epochs); got {self.gamma!r}")
        for name in ("teacher_swap", "pseudo_teacher", "detach_pseudo_teacher"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class LossTerms:
    """The terms of one SLD loss evaluation, each a 0-d array of the input's namespace and device.

    ``total = ce_weight * ce + kd_weight * (teacher + pseudo)``; ``teacher`` and ``pseudo`` already
    include the ``T**2`` factors and the sum over temperatures.
    """

    total: Any
    ce: Any
    teacher: Any
    pseudo: Any

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _pseudo_on(config: SLDConfig, epoch: int) -> bool:
    return config.pseudo_teacher and pseudo_teacher_active(epoch, config.gamma)


def sld_loss(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: int,
             config: SLDConfig | None = None, check_targets: bool = True) -> LossTerms:
    """The SLD loss of one view, written as the paper states it.

    Parameters
    ----------
    student_logits, teacher_logits : array, shape (B, C)
        Same library, device and shape. float16/bfloat16 are computed in float32.
    targets : array, shape (B,), integer labels in ``[0, C)`` (any integer dtype)
    epoch : int or float
        Current epoch, counted from 1 (a real number >= 0); the pseudo-teacher is active when
        ``epoch > config.gamma``.
    config : SLDConfig, optional
        Defaults to the official CIFAR-100 recipe.
    check_targets : bool
        Check the values: labels in ``[0, C)`` and finite logits (one device sync); pass ``False`` in
        hot loops (labels are then clamped into range, see :mod:`sld_core.validation`).

    Returns
    -------
    LossTerms
        0-d arrays in the input's namespace and device; float64 for float64 input, else float32.
        Autograd (torch, JAX) differentiates through it.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[2.0, 1.0, 0.0]]); t = np.array([[0.0, 3.0, 1.0]]); y = np.array([0])
    >>> terms = sld_loss(s, t, y, epoch=1)
    >>> float(terms.pseudo), round(float(terms.total), 4)
    (0.0, 1.8387)
    """
    config = SLDConfig() if config is None else config
    validate_epoch(epoch)
    xp = validate_inputs(student_logits, teacher_logits, targets, check_targets=check_targets)
    targets = index_targets(targets, student_logits.shape[1], xp=xp, check_targets=check_targets)
    dtype = compute_dtype(student_logits.dtype, xp)
    s = xp.astype(student_logits, dtype, copy=False)
    t = xp.astype(teacher_logits, dtype, copy=False)
    student_top = xp.argmax(s, axis=1)
    teacher_top = xp.argmax(t, axis=1)
    pseudo_on = _pseudo_on(config, epoch)

    ce = xp.mean(-xp.squeeze(take_row(log_softmax(s, xp=xp), targets, xp=xp), axis=1))
    teacher = xp.zeros((), dtype=dtype, device=device_of(s))
    pseudo = xp.zeros((), dtype=dtype, device=device_of(s))
    for temperature in config.temperatures:
        log_q = log_softmax(s, temperature, xp=xp)
        # log_softmax(swap(t)/T) == swap(log_softmax(t/T)): the swap only permutes entries.
        log_p = log_softmax(t, temperature, xp=xp)
        if config.teacher_swap:
            log_p = swap_at(log_p, targets, teacher_top, xp=xp)
        teacher = teacher + temperature**2 * xp.mean(kl_rows(log_p, log_q, xp=xp))
        if pseudo_on:
            source = stop_gradient(log_q) if config.detach_pseudo_teacher else log_q
            log_pseudo = swap_at(source, targets, student_top, xp=xp)
            pseudo = pseudo + temperature**2 * xp.mean(kl_rows(log_pseudo, log_q, xp=xp))
    total = config.ce_weight * ce + config.kd_weight * (teacher + pseudo)
    return LossTerms(total=total, ce=ce, teacher=teacher, pseudo=pseudo)


def sld_loss_and_grad(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: int,
                      config: SLDConfig | None = None, check_targets: bool = True) -> tuple[LossTerms, Any]:
    r"""The SLD loss and its exact gradient with respect to ``student_logits``, in closed form (no
    autograd), so NumPy and CuPy stacks can train with it.

    With :math:`q = \sigma(s/T)`, :math:`p = \sigma(\mathrm{swap}(t)/T)`, :math:`m = \arg\max s`,
    :math:`d = s_m - s_y` and :math:`\Delta = q_m - q_y`, per row and before the :math:`1/B` mean:

    - CE: :math:`\sigma(s) - e_y`
    - teacher, :math:`T^2\,\mathrm{KL}(p\|q)`: :math:`T\,(q - p)`
    - pseudo-teacher, :math:`T^2\,\mathrm{KL}(\mathrm{swap}(q)\|q) = T\,\Delta\,d`:
      detached :math:`T\,\Delta\,(e_m - e_y)`; not detached, additionally
      :math:`d\,(q_m e_m - q_y e_y - \Delta\, q)` from the dependence of :math:`\mathrm{swap}(q)` on ``s``.

    Returns
    -------
    (LossTerms, grad)
        ``grad`` has the shape, namespace, device and dtype of ``student_logits``. The losses are those
        of :func:`sld_loss` (same arguments).
    """
    config = SLDConfig() if config is None else config
    validate_epoch(epoch)
    xp = validate_inputs(student_logits, teacher_logits, targets, check_targets=check_targets)
    targets = index_targets(targets, student_logits.shape[1], xp=xp, check_targets=check_targets)
    dtype = compute_dtype(student_logits.dtype, xp)
    s = xp.astype(stop_gradient(student_logits), dtype, copy=False)
    t = xp.astype(stop_gradient(teacher_logits), dtype, copy=False)
    batch = s.shape[0]
    columns = xp.arange(s.shape[1], device=device_of(s))
    at_target = xp.astype(columns == xp.expand_dims(targets, axis=1), dtype)
    student_top = xp.argmax(s, axis=1)
    at_top = xp.astype(columns == xp.expand_dims(student_top, axis=1), dtype)
    teacher_top = xp.argmax(t, axis=1)
    pseudo_on = _pseudo_on(config, epoch)
    logit_gap = take_row(s, student_top, xp=xp) - take_row(s, targets, xp=xp)  # d >= 0, (B, 1)

    log_q1 = log_softmax(s, xp=xp)
    ce = xp.mean(-xp.squeeze(take_row(log_q1, targets, xp=xp), axis=1))
    grad_kd = xp.zeros_like(s)
    teacher = xp.zeros((), dtype=dtype, device=device_of(s))
    pseudo = xp.zeros((), dtype=dtype, device=device_of(s))
    for temperature in config.temperatures:
        log_q = log_q1 if temperature == 1 else log_softmax(s, temperature, xp=xp)
        q = xp.exp(log_q)
        log_p = log_softmax(t, temperature, xp=xp)
        if config.teacher_swap:
            log_p = swap_at(log_p, targets, teacher_top, xp=xp)
        teacher = teacher + temperature**2 * xp.mean(kl_rows(log_p, log_q, xp=xp))
        grad_kd = grad_kd + temperature * (q - xp.exp(log_p))
        if pseudo_on:
            q_top = take_row(q, student_top, xp=xp)
            q_target = take_row(q, targets, xp=xp)
            prob_gap = q_top - q_target  # (B, 1), zero on correct rows
            pseudo = pseudo + temperature * xp.mean(xp.squeeze(prob_gap * logit_gap, axis=1))
            grad_kd = grad_kd + temperature * prob_gap * (at_top - at_target)
            if not config.detach_pseudo_teacher:
                grad_kd = grad_kd + logit_gap * (q_top * at_top - q_target * at_target - prob_gap * q)
    grad_ce = xp.exp(log_q1) - at_target
    grad = (config.ce_weight * grad_ce + config.kd_weight * grad_kd) / batch
    total = config.ce_weight * ce + config.kd_weight * (teacher + pseudo)
    terms = LossTerms(total=total, ce=ce, teacher=teacher, pseudo=pseudo)
    return terms, xp.astype(grad, student_logits.dtype, copy=False)


def config_to_dict(config: SLDConfig) -> dict[str, Any]:
    """A JSON-ready copy of ``config`` (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
