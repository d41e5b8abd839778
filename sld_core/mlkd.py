r"""Multi-Level Logit Distillation (MLKD; Jin et al., CVPR 2023) and LS-MLKD (with the logit
standardization of Sun et al., CVPR 2024), with the arithmetic of the published code that produced
the published numbers (the MLKD release, the SLD repository's copy of it, and the LS repository).

One batch gives a weak view ``w`` and a strong view ``s``; ``a`` are student logits, ``b`` teacher
logits (never differentiated), ``Ts = (T0, 3, 5, 2, 6)`` with ``T0 = config.temperature``, and
:math:`P = \sigma(z / T)` row-wise:

.. math::
   \mathrm{kd}(a, b, T) = T^2 \, \frac{1}{B} \sum_b \mathrm{KL}(\sigma(b_b/T) \,\|\, \sigma(a_b/T)), \qquad
   \mathrm{cc}(a, b, T) = \frac{1}{C} \big\| P_b^\top P_b - P_a^\top P_a \big\|_F^2, \qquad
   \mathrm{bc}(a, b, T) = \frac{1}{B} \big\| P_b P_b^\top - P_a P_a^\top \big\|_F^2

Confidence masks come from the teacher's weak view at T = 1, :math:`p = \sigma(b^w)`: a row is kept
when :math:`\max_c p_{bc} \le \mathrm{median}_b`, a class when :math:`\sum_b p_{bc} \le
\mathrm{median}_c`, with NumPy's median (``np.percentile(x, 50)``: the mean of the two middle values of
an even count, not ``torch.median``'s lower one). With :math:`\bar m` the *fraction* of kept rows and
:math:`\bar m_c` that of kept classes, the published loss is

.. math::
   \mathcal{L} = w_{ce}\,[\mathrm{CE}(a^w, y) + \mathrm{CE}(a^s, y)]
   + w_{kd} \sum_{T \in Ts} \big[\bar m\, \mathrm{kd}(a^w, b^w, T) + \bar m_c\, \mathrm{cc}(a^w, b^w, T)
   + \bar m\, \mathrm{bc}(a^w, b^w, T)\big]
   + w_{kd} \sum_{i, T \in Ts} \mathrm{kd}(a^{v_i}, b^{v_i}, T)

where the strong sum reads the strong view ``v_i = s`` for ``T0, 3, 5`` and the weak view ``v_i = w``
for its last two terms (``T = 2, 6``). Quirks of the published code, each reproduced and switchable:

1. The mask multiplies an already-reduced loss, so each masked term is the batch loss times the
   fraction of kept rows or classes (about 1/2), not a loss over the kept rows.
   ``mask_per_row=True`` applies it per row before the reduction instead: ``mean_b(m_b KL_b)`` for
   kd, and the kept rows of the Gram difference, :math:`\frac{1}{C}\sum_i m_i \sum_j D_{ij}`, for cc
   (and likewise for bc).
2. The T = 2 and T = 6 terms of the "strong" sum read the weak logits. ``strong_reads_strong=True``
   makes all five read the strong view.
3. The published code also builds cc and bc sums for the strong view but never returns them, so they
   do not enter the loss; they are not computed here.

LS-MLKD (``logit_stand=True``): only the instance-level kd terms standardize student and teacher
logits (:mod:`sld_core.standardize`); CE, the masks, cc and bc use the raw logits.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> sw, ss, tw, ts = (rng.normal(size=(4, 5)) for _ in range(4)); y = np.array([0, 1, 2, 3])
>>> terms = mlkd_loss(sw, ss, tw, ts, y)
>>> sorted(terms.as_dict()), bool(terms.total == terms.ce + terms.kd + terms.cc + terms.bc)
(['bc', 'cc', 'ce', 'kd', 'total'], True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ._checks import check_logits
from ._namespace import array_namespace, compute_dtype, device_of, same_device, stop_gradient
from .kd import cross_entropy_rows_mean, kd_sum
from .standardize import standardize_rows
from .temperature_kl import log_softmax
from .validation import validate_logits_and_targets

__all__ = [
    "MLKDConfig",
    "MLKDTerms",
    "MLKD_OTHER_TEMPERATURES",
    "confidence_masks",
    "mlkd_config_to_dict",
    "mlkd_loss",
    "numpy_median",
]

MLKD_OTHER_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)  # hard-coded after T0 in the published code, in this order
_STRONG_TERMS_ON_WEAK = (3, 4)  # positions in Ts of the strong sum's terms that read the weak view


@dataclass(frozen=True)
class MLKDConfig:
    """Hyper-parameters of MLKD; the defaults are the published CIFAR-100 recipe, quirks included."""

    temperature: float = 4.0  # T0, the first of the five temperatures (the MLKD release's KD temperature)
    ce_weight: float = 0.1  # the MLKD release and the SLD repository: CE is a small term
    kd_weight: float = 0.9  # multiplies every kd, cc and bc term
    logit_stand: bool = False  # True: LS-MLKD, the kd terms on standardized logits
    mask_per_row: bool = False  # published: the mask scales an already-reduced loss (quirk 1)
    strong_reads_strong: bool = False  # published: the strong sum's T=2, 6 terms read the weak view (quirk 2)

    def __post_init__(self) -> None:
        for name in ("temperature", "ce_weight", "kd_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number; got {value!r}")
            object.__setattr__(self, name, float(value))
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and positive; got {self.temperature}")
        for name in ("ce_weight", "kd_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and non-negative; got {value}")
        for name in ("logit_stand", "mask_per_row", "strong_reads_strong"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")

    @property
    def temperatures(self) -> tuple[float, ...]:
        """``(T0, 3, 5, 2, 6)``, in the order the published code sums them."""
        return (self.temperature, *MLKD_OTHER_TEMPERATURES)

    @classmethod
    def intended(cls, **overrides: Any) -> MLKDConfig:
        """The quirk-free reading: masks per row before the reduction (what the published code's
        commented-out ``reduce=False`` points to), and the whole strong sum on the strong view
        (``overrides`` set any other field)."""
        return cls(**{"mask_per_row": True, "strong_reads_strong": True, **overrides})

    @classmethod
    def logit_standardized(cls, base_temperature: float = 2.0, kd_weight: float = 9.0,
                           **overrides: Any) -> MLKDConfig:
        """LS-MLKD as the LS repository runs it: ``--logit-stand`` rewrites the config to the KD weight
        ``kd_weight`` and ``T0 = base_temperature`` (its command-line defaults 9 and 2, so ``Ts`` holds 2
        twice); the CE weight stays at that repository's config default, 1 (its ``cfg.py`` beside the
        LS version of ``MLKD.py``; the MLKD yaml files do not set it)."""
        fields_ = {"temperature": base_temperature, "kd_weight": kd_weight, "ce_weight": 1.0,
                   "logit_stand": True}
        return cls(**{**fields_, **overrides})


def mlkd_config_to_dict(config: MLKDConfig) -> dict[str, Any]:
    """A JSON-ready copy of ``config``; ``MLKDConfig(**mlkd_config_to_dict(c)) == c``."""
    return asdict(config)


@dataclass(frozen=True)
class MLKDTerms:
    """The terms of one MLKD evaluation, 0-d arrays of the inputs' namespace and device, as the
    published distiller returns them: ``total = ce + kd + cc + bc``. ``ce`` includes ``ce_weight`` and
    ``kd``, ``cc``, ``bc`` include ``kd_weight`` (``kd`` is the weak plus the strong sum)."""

    total: Any
    ce: Any
    kd: Any
    cc: Any
    bc: Any

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def numpy_median(x: Any, /) -> Any:
    """``np.percentile(x, 50)`` of a 1-D array, in array-API operations (no host round trip): the
    middle value of an odd count; for an even count NumPy's linear interpolation between the two middle
    values ``a <= b``, evaluated as NumPy does for a weight of 1/2, ``b - (b - a) * 0.5``, in ``x``'s
    dtype (so the value matches NumPy's to the bit; ``torch.median`` would return ``a``). For a
    ``<=`` mask the two choices differ only when ``a`` and ``b`` are adjacent floats and the
    interpolation rounds up to ``b``, which NumPy's median then keeps.

    Examples
    --------
    >>> import numpy as np
    >>> float(numpy_median(np.array([4.0, 1.0, 3.0, 2.0]))), float(numpy_median(np.array([3.0, 1.0, 2.0])))
    (2.5, 2.0)
    """
    xp = array_namespace(x)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"numpy_median takes a non-empty 1-D array; got shape {tuple(x.shape)}")
    ordered = xp.sort(x)
    n = x.shape[0]
    if n % 2:
        return ordered[n // 2]
    low, high = ordered[n // 2 - 1], ordered[n // 2]
    return high - (high - low) * 0.5


def confidence_masks(teacher_weak_logits: Any, /) -> tuple[Any, Any]:
    """MLKD's confidence masks from the teacher's weak-view logits at T = 1.

    Returns
    -------
    (row_mask, class_mask) : bool arrays, shapes (B,) and (C,)
        ``row_mask[b]``: the teacher's top probability of row ``b`` is ``<=`` its batch median;
        ``class_mask[c]``: the teacher's probability of class ``c`` summed over the batch is ``<=`` the
        median over classes. Medians as :func:`numpy_median`; probabilities in the compute dtype.

    Examples
    --------
    >>> import numpy as np
    >>> rows, classes = confidence_masks(np.array([[4.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]))
    >>> rows.tolist(), classes.tolist()
    ([False, True, True], [False, True, True])
    """
    xp = array_namespace(teacher_weak_logits)
    if teacher_weak_logits.ndim != 2 or 0 in tuple(teacher_weak_logits.shape):
        raise ValueError(
            f"teacher_weak_logits must be a non-empty 2-D array; got shape {tuple(teacher_weak_logits.shape)}"
        )
    dtype = compute_dtype(teacher_weak_logits.dtype, xp)
    z = xp.astype(stop_gradient(teacher_weak_logits), dtype, copy=False)
    return _confidence_masks(z, xp=xp)


def _confidence_masks(z: Any, *, xp: Any) -> tuple[Any, Any]:
    p = xp.exp(log_softmax(z, xp=xp))
    confidence = xp.max(p, axis=1)
    class_confidence = xp.sum(p, axis=0)
    # The published code takes both medians with NumPy on the host (a device sync per batch); the sort
    # gives the same value on the device.
    return confidence <= numpy_median(confidence), class_confidence <= numpy_median(class_confidence)


def _kd_term(a: Any, b: Any, temperature: float, mask: Any, *, per_row: bool, xp: Any) -> Any:
    """``kd(a, b, T)``, masked. Published (quirk 1): ``mean(T**2 * mean_b KL_b * mask)``, the batch loss
    times the kept fraction; ``per_row``: ``mean_b(T**2 * KL_b * mask_b)``. ``mask=None``: unmasked."""
    if mask is None:
        return kd_sum(a, b, (temperature,), xp=xp)
    if per_row:
        return xp.mean(kd_sum(a, b, (temperature,), reduction="none", xp=xp) * mask)
    return xp.mean(kd_sum(a, b, (temperature,), xp=xp) * mask)


def _gram_term(a: Any, b: Any, temperature: float, mask: Any, *, classes: bool, per_row: bool,
               xp: Any) -> Any:
    """cc (``classes``: the C x C Gram matrices ``P^T P``, over ``C``) or bc (the B x B ``P P^T``, over
    ``B``) of ``P = softmax(./T)``, masked. Published (quirk 1): ``mean(sum(D**2) / n * mask)``;
    ``per_row``: the kept rows of ``D**2`` only, ``sum_i mask_i sum_j D_ij**2 / n``."""
    pa = xp.exp(log_softmax(a, temperature, xp=xp))
    pb = xp.exp(log_softmax(b, temperature, xp=xp))
    if classes:
        gap = xp.matmul(xp.matrix_transpose(pb), pb) - xp.matmul(xp.matrix_transpose(pa), pa)
    else:
        gap = xp.matmul(pb, xp.matrix_transpose(pb)) - xp.matmul(pa, xp.matrix_transpose(pa))
    squared = gap**2
    n = squared.shape[0]
    if per_row:
        return xp.sum(xp.sum(squared, axis=1) * mask) / n
    return xp.mean(xp.sum(squared) / n * mask)


def _check_views(student_weak: Any, student_strong: Any, teacher_weak: Any, teacher_strong: Any,
                 targets: Any, *, check_targets: bool) -> Any:
    """The four logits share one library, device and (B, C) shape; the labels fit them."""
    xp = array_namespace(student_weak, student_strong, teacher_weak, teacher_strong, targets)
    views = {"student_weak": student_weak, "student_strong": student_strong, "teacher_weak": teacher_weak,
             "teacher_strong": teacher_strong}
    for name, logits in views.items():
        check_logits(logits, name=name, xp=xp)
        if tuple(logits.shape) != tuple(student_weak.shape):
            raise ValueError(
                f"{name} must have the shape of student_weak {tuple(student_weak.shape)}; "
                f"got {tuple(logits.shape)}"
            )
        if not same_device(logits, student_weak):
            raise ValueError(
                f"{name} is on {device_of(logits)} but student_weak is on {device_of(student_weak)}"
            )
    validate_logits_and_targets(student_weak, targets, check_targets=check_targets, name="student_weak",
                                xp=xp)
    return xp


def mlkd_loss(student_weak: Any, student_strong: Any, teacher_weak: Any, teacher_strong: Any, targets: Any,
              /, *, config: MLKDConfig | None = None, check_targets: bool = True) -> MLKDTerms:
    """The MLKD (or LS-MLKD) loss of one batch, two views, as the published code computes it.

    Parameters
    ----------
    student_weak, student_strong, teacher_weak, teacher_strong : array, shape (B, C)
        One library, device and shape; float16/bfloat16 are computed in float32. The teacher logits
        are cut out of the autograd graph (the published teacher runs under ``no_grad``).
    targets : array, shape (B,), integer labels in ``[0, C)``
    config : MLKDConfig, optional
        Defaults to the published MLKD recipe (T0 = 4, CE 0.1, KD 0.9, no LS, quirks on);
        :meth:`MLKDConfig.logit_standardized` gives LS-MLKD, :meth:`MLKDConfig.intended` the
        quirk-free reading.
    check_targets : bool
        Check the label range (forces one device sync); pass ``False`` in hot loops.

    Returns
    -------
    MLKDTerms
        0-d arrays in the inputs' namespace and device (float64 for float64 input, else float32),
        differentiable with respect to the student logits (torch autograd, ``jax.grad``).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]]); y = np.array([0, 1])
    >>> terms = mlkd_loss(t, t, t, t, y)  # a student equal to its teacher: only CE is left
    >>> float(terms.kd), float(terms.cc), float(terms.bc), round(float(terms.total), 6)
    (0.0, 0.0, 0.0, 0.033447)
    """
    config = MLKDConfig() if config is None else config
    xp = _check_views(student_weak, student_strong, teacher_weak, teacher_strong, targets,
                      check_targets=check_targets)
    dtype = compute_dtype(student_weak.dtype, xp)
    a_w = xp.astype(student_weak, dtype, copy=False)
    a_s = xp.astype(student_strong, dtype, copy=False)
    b_w = xp.astype(stop_gradient(teacher_weak), dtype, copy=False)
    b_s = xp.astype(stop_gradient(teacher_strong), dtype, copy=False)
    row_mask, class_mask = (xp.astype(m, dtype) for m in _confidence_masks(b_w, xp=xp))

    ce = config.ce_weight * (cross_entropy_rows_mean(a_w, targets, xp=xp)
                             + cross_entropy_rows_mean(a_s, targets, xp=xp))
    if config.logit_stand:
        kd_a_w, kd_b_w, kd_a_s, kd_b_s = (standardize_rows(z, xp=xp) for z in (a_w, b_w, a_s, b_s))
    else:
        kd_a_w, kd_b_w, kd_a_s, kd_b_s = a_w, b_w, a_s, b_s

    zero = xp.zeros((), dtype=dtype, device=device_of(a_w))
    kd_weak, kd_strong, cc, bc = zero, zero, zero, zero
    per_row = config.mask_per_row
    w = config.kd_weight
    for i, temperature in enumerate(config.temperatures):
        kd_weak = kd_weak + w * _kd_term(kd_a_w, kd_b_w, temperature, row_mask, per_row=per_row, xp=xp)
        # Quirk 2: the strong sum's last two terms (T = 2, 6) read the weak view.
        on_weak = i in _STRONG_TERMS_ON_WEAK and not config.strong_reads_strong
        a, b = (kd_a_w, kd_b_w) if on_weak else (kd_a_s, kd_b_s)
        kd_strong = kd_strong + w * _kd_term(a, b, temperature, None, per_row=per_row, xp=xp)
        cc = cc + w * _gram_term(a_w, b_w, temperature, class_mask, classes=True, per_row=per_row, xp=xp)
        bc = bc + w * _gram_term(a_w, b_w, temperature, row_mask, classes=False, per_row=per_row, xp=xp)
    kd = kd_weak + kd_strong
    return MLKDTerms(total=ce + kd + cc + bc, ce=ce, kd=kd, cc=cc, bc=bc)
