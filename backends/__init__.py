"""Backend detection and per-backend fast paths for the SLD loss.

``sld_loss`` / ``sld_loss_and_grad`` here take the same arguments as their ``sld_core`` twins and
return the same results; they route to the fastest implementation for the input's array library and
fall back to the generic core otherwise:

============  ===========================================  =========================================
library       ``sld_loss``                                 ``sld_loss_and_grad``
============  ===========================================  =========================================
torch         fused autograd Function (``torch_sld``)      fused pass, no graph (``torch_sld``)
NumPy         core                                         fused NumPy path (``numpy_sld``)
CuPy          core                                         fused CUDA kernel (``cupy_sld``) [#]_
others        core                                         core
============  ===========================================  =========================================

.. [#] when a CUDA device and NVRTC are present (:func:`backends.cupy_sld.kernel_available`).

A framework is never imported here unless the caller already imported it (its arrays cannot exist
otherwise): detection looks in ``sys.modules`` first, and each fast path is imported on first use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import array_api_compat

import sld_core

__all__ = ["backend_name", "fast_path", "sld_loss", "sld_loss_and_grad"]

def _is_strict_array(x: Any) -> bool:
    # array_api_compat has no is_array_api_strict_array; the array type lives in that package
    return type(x).__module__.split(".")[0] == "array_api_strict"


# (name, module that must already be imported, predicate); CuPy before NumPy.
_DETECTORS = (
    ("torch", "torch", array_api_compat.is_torch_array),
    ("cupy", "cupy", array_api_compat.is_cupy_array),
    ("jax", "jax", array_api_compat.is_jax_array),
    ("array_api_strict", "array_api_strict", _is_strict_array),
    ("numpy", "numpy", array_api_compat.is_numpy_array),
)


def backend_name(x: Any) -> str:
    """The array library of ``x``: ``"torch"``, ``"cupy"``, ``"jax"``, ``"array_api_strict"``,
    ``"numpy"``, or ``"other"``. Imports nothing: a library absent from ``sys.modules`` cannot have
    made ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> backend_name(np.zeros(3))
    'numpy'
    """
    for name, module, is_array in _DETECTORS:
        if module in sys.modules and is_array(x):
            return name
    return "other"


def fast_path(student_logits: Any, *, with_grad: bool = False) -> Callable[..., Any]:
    """The function :func:`sld_loss` (``with_grad=False``) or :func:`sld_loss_and_grad` would call
    for ``student_logits``; all take the core's arguments."""
    name = backend_name(student_logits)
    if name == "torch":
        from . import torch_sld

        return torch_sld.sld_loss_and_grad_fused if with_grad else torch_sld.sld_loss_fused
    if with_grad and name == "numpy":
        from . import numpy_sld

        return numpy_sld.sld_loss_and_grad_numpy
    if with_grad and name == "cupy":
        from . import cupy_sld

        if cupy_sld.kernel_available()[0]:
            return cupy_sld.sld_loss_and_grad_cupy
    return sld_core.sld_loss_and_grad if with_grad else sld_core.sld_loss


def sld_loss(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: int,
             config: sld_core.SLDConfig | None = None, check_targets: bool = True) -> sld_core.LossTerms:
    """:func:`sld_core.sld_loss` on the fastest path for the input's library (see the module table)."""
    return fast_path(student_logits)(student_logits, teacher_logits, targets, epoch=epoch, config=config,
                                     check_targets=check_targets)


def sld_loss_and_grad(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: int,
                      config: sld_core.SLDConfig | None = None,
                      check_targets: bool = True) -> tuple[sld_core.LossTerms, Any]:
    """:func:`sld_core.sld_loss_and_grad` on the fastest path for the input's library (see the module
    table)."""
    return fast_path(student_logits, with_grad=True)(student_logits, teacher_logits, targets, epoch=epoch,
                                                     config=config, check_targets=check_targets)
