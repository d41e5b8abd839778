"""Shared fixtures. ``xp`` runs a test once per array library that is importable *and usable* here;
unusable ones (CuPy or torch CUDA without a GPU) appear as skips with the reason."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest


def _use_triton_interpreter() -> None:
    """Without a CUDA device, run Triton kernels under Triton's interpreter (CPU tensors), so the
    Triton path is tested everywhere. The switch must be set before triton is first imported: its
    own helpers (``tl.sum``, ``tl.max``) are decorated at that import."""
    if "TRITON_INTERPRET" in os.environ:
        return
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


_use_triton_interpreter()


@dataclass(frozen=True)
class Backend:
    """One array library on one device, as the tests see it."""

    id: str
    xp: Any  # the array-API namespace (array_api_compat-wrapped where needed)
    device: Any  # what `xp.asarray(..., device=device)` takes
    asarray: Callable[[Any], Any]  # numpy array -> backend array on `device`
    to_numpy: Callable[[Any], Any]


def _numpy() -> Backend:
    import array_api_compat.numpy as xp
    import numpy as np

    return Backend("numpy", xp, "cpu", lambda a: np.asarray(a), lambda a: np.asarray(a))


def _torch(device: str) -> Backend:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    import array_api_compat.torch as xp

    return Backend(
        f"torch-{device}",
        xp,
        torch.device(device),
        lambda a: torch.as_tensor(a, device=device),
        lambda a: a.detach().cpu().numpy(),
    )


def _strict() -> Backend:
    import array_api_strict as xp
    import numpy as np

    device = xp.Device("CPU_DEVICE")
    return Backend("array-api-strict", xp, device, lambda a: xp.asarray(a), lambda a: np.asarray(a))


def _jax() -> Backend:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 references need it
    import jax.numpy as jnp
    import numpy as np

    return Backend("jax-cpu", jnp, jax.devices("cpu")[0], lambda a: jnp.asarray(a), lambda a: np.asarray(a))


def _cupy() -> Backend:
    import cupy

    if not cupy.cuda.is_available():
        raise RuntimeError("cupy.cuda.is_available() is False (no CUDA device)")
    import array_api_compat.cupy as xp

    return Backend("cupy", xp, cupy.cuda.Device(0), lambda a: cupy.asarray(a), lambda a: cupy.asnumpy(a))


_FACTORIES: dict[str, Callable[[], Backend]] = {
    "numpy": _numpy,
    "torch-cpu": lambda: _torch("cpu"),
    "array-api-strict": _strict,
    "jax-cpu": _jax,
    "torch-cuda": lambda: _torch("cuda"),
    "cupy": _cupy,
}


def load_backend(name: str) -> Backend:
    try:
        return _FACTORIES[name]()
    except ImportError as exc:
        pytest.skip(f"{name}: not installed ({exc})")
    except RuntimeError as exc:
        pytest.skip(f"{name}: {exc}")


@pytest.fixture(params=list(_FACTORIES), ids=list(_FACTORIES))
def backend(request: pytest.FixtureRequest) -> Backend:
    return load_backend(request.param)


@pytest.fixture
def xp(backend: Backend) -> Any:
    return backend.xp


def module_available(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
