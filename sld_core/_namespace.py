"""Namespace, device and dtype plumbing shared by the core modules. No framework is imported here:
frameworks are only touched through arrays the caller already made."""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat
from array_api_compat import device as device_of

__all__ = ["array_namespace", "compute_dtype", "device_of", "same_device", "stop_gradient", "take_row"]


def array_namespace(*arrays: Any) -> Any:
    """The one array-API namespace of ``arrays``; a clear ``TypeError`` if they come from different
    libraries (e.g. a NumPy label vector beside torch logits)."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = ", ".join(sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays}))
        raise TypeError(
            f"student_logits, teacher_logits and targets must come from one array library; got {kinds}"
        ) from exc


def same_device(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` live on one device. Traced arrays (JAX under ``jit``/``grad``) report no
    device; they are taken as matching, since placement is settled when the trace runs."""
    dev_a, dev_b = device_of(a), device_of(b)
    return dev_a is None or dev_b is None or dev_a == dev_b


def compute_dtype(dtype: Any, xp: Any) -> Any:
    """float64 stays float64; every other real floating dtype (float32, float16, bfloat16) computes in
    float32, since softmax at T=6 over half precision loses the small probabilities KD is about."""
    if dtype == xp.float64:
        return xp.float64
    if xp.isdtype(dtype, "real floating"):
        return xp.float32
    raise TypeError(f"logits must have a real floating dtype; got {dtype}")


def stop_gradient(x: Any) -> Any:
    """``x`` cut out of the autograd graph where the library has one (torch, JAX); the same array
    elsewhere. Looks the framework up in ``sys.modules``: an array of it exists, so it is imported."""
    if array_api_compat.is_torch_array(x):
        return x.detach()
    if array_api_compat.is_jax_array(x):
        return sys.modules["jax"].lax.stop_gradient(x)
    return x


def take_row(x: Any, index: Any, *, xp: Any) -> Any:
    """``x[b, index[b]]`` for every row ``b``, kept as a ``(B, 1)`` column for broadcasting."""
    return xp.take_along_axis(x, xp.expand_dims(index, axis=1), axis=1)
