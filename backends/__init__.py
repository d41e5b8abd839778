"""Backend detection and per-backend fast paths for the SLD loss.

``sld_loss`` / ``sld_loss_and_grad`` here take the same arguments as their ``sld_core`` twins and
return the same results; they route to the fastest implementation for the input's library and
fall back to the generic core otherwise (:func:`implementation` names the one that runs):

=============  ===============================  =================================  ===============
input          ``sld_loss``                     ``sld_loss_and_grad``              kernel
=============  ===============================  =================================  ===============
torch CPU      fused autograd Function          fused pass, no graph               ``numba`` [1]
torch CUDA     fused autograd Function          fused pass, no graph               ``triton`` [2]
NumPy          fused pass without the gradient  fused pass                         ``numba`` [1]
CuPy           core                             fused CUDA kernel (``cupy_sld``)   ``cupy-kernel`` [3]
others         core                             core                               ``core``
=============  ===============================  =================================  ===============

[1] with numba installed (``pip install swapped-logit-distillation[fast]``); else ``eager``.
[2] with triton installed (it comes with CUDA builds of torch); else ``eager``.
[3] with a CUDA device and NVRTC (:func:`backends.cupy_sld.kernel_available`); else ``core``.

``SLD_KERNELS=0`` in the environment (read when :mod:`backends` is imported), or
``with backends.use_kernels(False):``, bypasses numba and Triton (the eager paths run);
:func:`set_num_threads` sets the CPU kernel's threads (default: torch's).

The per-row algebra (derived in :mod:`backends._rows`) exists in these copies, each pinned by tests
against the float64 core and the plain references of ``tests/``:

- :mod:`backends._rows` -- array-API code for the eager torch chunked path and the NumPy fallback
  (``tests/test_backends.py``, ``tests/test_kernels.py`` with ``use_kernels(False)``);
- :mod:`backends.torch_small` -- the same as fixed linear maps, for small eager problems
  (``tests/test_backends.py`` ``torch_path="small"``, ``tests/test_kernels.py``);
- :mod:`backends.cpu_kernel` -- numba (``tests/test_kernels.py``);
- :mod:`backends.triton_sld` -- Triton (``tests/test_kernels.py``, under ``TRITON_INTERPRET=1`` on CPU);
- :mod:`backends.cupy_sld` -- CUDA C (``tests/test_backends.py``, on a GPU only).

A framework is never imported here unless the caller already imported it (its arrays cannot exist
otherwise): detection looks in ``sys.modules`` first, and each fast path is imported on first use.
``from backends import SLDLoss`` (the torch ``nn.Module``, :class:`backends.torch_sld.SLDLoss`) imports
torch at that moment, through the module ``__getattr__`` below.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import array_api_compat

import sld_core

from ._select import cpu_kernel_module, num_threads, set_num_threads, use_kernels

__all__ = ["backend_name", "fast_path", "implementation", "num_threads", "set_num_threads", "sld_loss",
           "sld_loss_and_grad", "use_kernels"]

def __getattr__(name: str) -> Any:
    # SLDLoss subclasses torch.nn.Module: import torch only when it is asked for, never with backends.
    if name == "SLDLoss":
        from .torch_sld import SLDLoss

        return SLDLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    if name == "numpy":
        from . import numpy_sld

        return numpy_sld.sld_loss_and_grad_numpy if with_grad else numpy_sld.sld_loss_numpy
    if with_grad and name == "cupy":
        from . import cupy_sld

        if cupy_sld.kernel_available()[0]:
            return cupy_sld.sld_loss_and_grad_cupy
    return sld_core.sld_loss_and_grad if with_grad else sld_core.sld_loss


def implementation(student_logits: Any, *, with_grad: bool = False) -> str:
    """The kernel :func:`sld_loss` (``with_grad=False``) or :func:`sld_loss_and_grad` runs for
    ``student_logits``: ``"numba"`` (the CPU kernel), ``"triton"``, ``"cupy-kernel"``, ``"eager"``
    (the fused torch / NumPy paths without a compiled kernel) or ``"core"`` (the generic core).

    Examples
    --------
    >>> import numpy as np
    >>> implementation(np.zeros((2, 3)), with_grad=True) in ("numba", "eager")
    True
    """
    name = backend_name(student_logits)
    if name == "torch":
        from . import torch_sld

        return torch_sld.implementation(student_logits)
    if name == "numpy":
        return "numba" if cpu_kernel_module() is not None else "eager"
    if name == "cupy" and with_grad:
        from . import cupy_sld

        if cupy_sld.kernel_available()[0]:
            return "cupy-kernel"
    return "core"


def sld_loss(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: float,
             config: sld_core.SLDConfig | None = None, check_targets: bool = True) -> sld_core.LossTerms:
    """:func:`sld_core.sld_loss` on the fastest path for the input's library (see the module table)."""
    return fast_path(student_logits)(student_logits, teacher_logits, targets, epoch=epoch, config=config,
                                     check_targets=check_targets)


def sld_loss_and_grad(student_logits: Any, teacher_logits: Any, targets: Any, *, epoch: float,
                      config: sld_core.SLDConfig | None = None,
                      check_targets: bool = True) -> tuple[sld_core.LossTerms, Any]:
    """:func:`sld_core.sld_loss_and_grad` on the fastest path for the input's library (see the module
    table)."""
    return fast_path(student_logits, with_grad=True)(student_logits, teacher_logits, targets, epoch=epoch,
                                                     config=config, check_targets=check_targets)
