"""Which compiled kernel may run: the on/off switch (``SLD_KERNELS`` / :func:`use_kernels`), the
optional imports (numba, triton) and the CPU thread count. Imports no framework and no compiler
until a kernel is first asked for."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

__all__ = ["cpu_kernel_module", "kernels_enabled", "num_threads", "set_num_threads", "triton_module",
           "use_kernels"]

ENV_SWITCH = "SLD_KERNELS"  # "0" / "off" / "eager": the eager paths only (tests, benchmarks, debugging)
# Read once, at import: a lookup in os.environ on every call costs microseconds (tens with cold caches)
# at small batch sizes. use_kernels() switches at run time.
_ENV_ENABLED = os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "eager", "false", "no")
_forced: bool | None = None  # set by use_kernels(); None follows the environment
_threads: int | None = None


def kernels_enabled() -> bool:
    """Whether the compiled kernels (numba on CPU, Triton on CUDA) may be used: :func:`use_kernels`
    inside its block, else ``SLD_KERNELS`` as it was when :mod:`backends` was imported."""
    return _ENV_ENABLED if _forced is None else _forced


@contextlib.contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, use (``True``) or bypass (``False``) the compiled kernels, whatever
    ``SLD_KERNELS`` says. Not thread-local: meant for tests and benchmarks.

    Examples
    --------
    >>> with use_kernels(False):
    ...     kernels_enabled()
    False
    """
    global _forced
    before, _forced = _forced, bool(enabled)
    try:
        yield
    finally:
        _forced = before


@functools.cache
def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


@functools.cache
def _cpu_kernel() -> ModuleType | None:
    return None if _optional("numba") is None else _optional("backends.cpu_kernel")


def cpu_kernel_module() -> ModuleType | None:
    """:mod:`backends.cpu_kernel` when numba is installed and kernels are enabled, else ``None``."""
    return _cpu_kernel() if kernels_enabled() else None


def triton_module() -> ModuleType | None:
    """:mod:`backends.triton_sld` when triton is installed and kernels are enabled, else ``None``."""
    if not kernels_enabled() or _optional("triton") is None:
        return None
    return _optional("backends.triton_sld")


def set_num_threads(threads: int | None) -> None:
    """Threads for the CPU kernel; ``None`` (the default) follows ``torch.get_num_threads()`` when torch
    is imported, else the CPUs this process may run on.

    Examples
    --------
    >>> set_num_threads(1); num_threads()
    1
    >>> set_num_threads(None)
    """
    global _threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None; got {threads!r}")
    _threads = threads


def num_threads() -> int:
    """The CPU kernel's thread count (see :func:`set_num_threads`)."""
    if _threads is not None:
        return _threads
    if "torch" in sys.modules:
        return max(1, sys.modules["torch"].get_num_threads())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
