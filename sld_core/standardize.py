r"""Logit standardization (Sun et al., *Logit Standardization in Knowledge Distillation*, CVPR 2024):
each row of logits is centred and scaled to unit spread before the softmax, so the student matches the
teacher's *shape* of logits rather than their scale.

.. math:: \mathcal{Z}(z)_k = \frac{z_k - \bar z}{\epsilon + \sigma(z)}, \qquad
   \bar z = \frac{1}{C} \sum_j z_j, \qquad
   \sigma(z) = \Big(\frac{1}{C - 1} \sum_j (z_j - \bar z)^2\Big)^{1/2}, \qquad \epsilon = 10^{-7}

per row, with the *unbiased* (``C - 1``) standard deviation and :math:`\epsilon` added to
:math:`\sigma` (not under the root), as the published code computes it (torch's default ``std``).

Mean and standard deviation do not depend on the order of a row's entries and :math:`\mathcal{Z}` is
increasing, so it commutes with the swap,
:math:`\mathcal{Z}(\mathrm{swap}(z)) = \mathrm{swap}(\mathcal{Z}(z))` (up to the rounding of a
reordered sum).

>>> import numpy as np
>>> standardize_logits(np.array([[1.0, 2.0, 3.0], [10.0, 0.0, 20.0]])).round(6)
array([[-1.,  0.,  1.],
       [ 0., -1.,  1.]])
"""

from __future__ import annotations

import math
from typing import Any

from ._checks import check_logits
from ._namespace import compute_dtype

__all__ = ["standardize_logits", "LOGIT_STAND_EPS"]

LOGIT_STAND_EPS = 1e-7  # the published constant: keeps a constant row finite (it maps to zeros)


def standardize_rows(z: Any, eps: float = LOGIT_STAND_EPS, *, xp: Any) -> Any:
    """:func:`standardize_logits` without checks or dtype handling, for callers that already settled
    both (``z`` in its compute dtype)."""
    mean = xp.mean(z, axis=1, keepdims=True)
    std = xp.std(z, axis=1, correction=1, keepdims=True)
    return (z - mean) / (eps + std)


def standardize_logits(logits: Any, /, *, eps: float = LOGIT_STAND_EPS) -> Any:
    r"""Row-wise logit standardization, :math:`(z - \mathrm{mean}(z)) / (\epsilon + \mathrm{std}(z))`.

    Parameters
    ----------
    logits : array, shape (B, C), real floating, C >= 2
    eps : float
        Added to the unbiased row standard deviation; the published value is ``1e-7``.

    Returns
    -------
    array, shape (B, C), same namespace, device and dtype as ``logits`` (float16/bfloat16 are computed
    in float32 and rounded once). Differentiable by torch autograd and ``jax.grad``; as with torch's
    ``std``, the gradient of an exactly constant row is not finite (0/0 in the derivative of the std).

    Examples
    --------
    >>> import numpy as np
    >>> z = standardize_logits(np.array([[0.0, 4.0, 8.0]]))
    >>> z.round(6).tolist(), round(float(z.std(ddof=1)), 6)  # unit spread, up to eps
    ([[-1.0, 0.0, 1.0]], 1.0)
    """
    xp = check_logits(logits)
    if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    dtype = compute_dtype(logits.dtype, xp)
    out = standardize_rows(xp.astype(logits, dtype, copy=False), float(eps), xp=xp)
    return xp.astype(out, logits.dtype, copy=False)
