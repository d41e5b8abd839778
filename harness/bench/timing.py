"""Timing core of the benchmarks: round-robin wall-clock timing of several calls, and the copy
bandwidth that bounds a memory-bound kernel. The device is synchronised around every clock reading."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Skip", "copy_bandwidth", "first_call", "time_call", "time_interleaved"]


class Skip(Exception):
    """A measurement that cannot run here; the message is the reason shown to the user."""


def first_call(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Seconds of the very first call of ``fn``, device synchronised: for a compiled function the
    one-time tracing and compilation, for an eager one its cold start.

    Raises
    ------
    Skip
        The call failed (e.g. a compiler that cannot run here); the message says why.
    """
    sync()
    start = time.perf_counter()
    try:
        fn()
        sync()
    except Exception as exc:  # a compiler backend missing on this machine, say: skip the case, say why
        raise Skip(f"first call failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    return time.perf_counter() - start


def time_call(fn: Callable[[], Any], sync: Callable[[], None], *, repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; the device is
    synchronised before each clock starts and before it stops."""
    return time_interleaved([(fn, sync)], repeats=repeats, warmup=warmup)[0]


def time_interleaved(calls: list[tuple[Callable[[], Any], Callable[[], None]]], *, repeats: int,
                     warmup: int, clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """:func:`time_call` for several ``(fn, sync)`` pairs at once, round-robin: repeat ``r`` of every
    pair runs before repeat ``r + 1`` of any, so a change in machine load (a shared CPU) hits all of
    them alike and their ratios stay fair. ``clock``: wall clock by default (``time.thread_time`` for
    a single-threaded call's CPU time)."""
    for fn, sync in calls:
        for _ in range(warmup):
            fn()
        sync()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for (fn, sync), out in zip(calls, times):
            sync()
            start = clock()
            fn()
            sync()
            out.append(clock() - start)
    return times


def copy_bandwidth(device: str, *, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Achieved bandwidth in GB/s (read + write) of copying one large float32 array on ``device``
    (torch: all its threads on CPU; a device-to-device copy on CUDA) — the ceiling a memory-bound
    loss could reach."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch.cuda.is_available() is False")
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = time_call(lambda: dst.copy_(src), sync, repeats=repeats, warmup=2)
    return 2 * nbytes / float(np.median(times)) / 1e9
