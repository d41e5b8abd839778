"""Where a run computes: the one translation of a device spec (``--device``, or ``train(config, "cpu")``)
into a ``torch.device``, checked against this machine, so a bad one is one line, not a traceback from
deep inside torch. ``harness.commands._common.resolve_device`` is this, named for the flag.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from harness.config import ConfigError

__all__ = ["as_device", "float16_slowdown"]

_KNOWN = "cpu, cuda, cuda:N (or mps / xpu where torch has them)"


def as_device(spec: str | torch.device | None, *, label: str = "device") -> torch.device:
    """``spec`` as a ``torch.device`` that exists here; ``None`` (or ``""``) is CUDA when available,
    else the CPU.

    Parameters
    ----------
    spec
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``, or ``None``.
    label
        How the message names the setting (``"--device"`` on the command line).

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        Not a device string torch knows, a CUDA device on a CPU-only build or a machine without one, a
        device index past the last device, or an accelerator that is not available here.

    Example
    -------
    >>> as_device("cpu")
    device(type='cpu')
    """
    if spec is None or spec == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(spec, torch.device):
        device = spec
    else:
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"{label} {spec!r}: not a device torch knows; use {_KNOWN}") from None
    named = f"{label} {spec}"
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is a CPU-only build (torch.version.cuda is None)"
                if torch.version.cuda is None
                else "no CUDA device is visible (no driver, or CUDA_VISIBLE_DEVICES hides them)"
            )
            raise ConfigError(f"{named}: {why}; use {label} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{named}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return device
    if device.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        module = getattr(torch, device.type, None)  # torch.xpu and other accelerators
        is_available = getattr(module, "is_available", None)
        if not callable(is_available):
            raise ConfigError(f"{named}: sld does not train on {device.type!r} devices; use {_KNOWN}")
        available = bool(is_available())
    if not available:
        raise ConfigError(f"{named}: no {device.type} device is available here; use {label} cpu")
    return device


def float16_slowdown(repeats: int = 3) -> float:
    """How many times longer a small convolution (forward and backward) takes under CPU autocast
    float16 than in float32, measured now: CPUs without native float16 units emulate it (8-35x
    slower here with oneDNN capped below the newest ISA), the newest Xeons run it as fast or faster, and
    no CPU flag says which reliably (benchmarks/RESULTS.md). Takes milliseconds; draws nothing from
    torch's global random state.

    Example
    -------
    >>> float16_slowdown() > 0
    True
    """
    generator = torch.Generator().manual_seed(0)  # a private stream: a run's seeded draws stay intact
    x = torch.randn(8, 16, 16, 16, generator=generator)
    weight = torch.randn(16, 16, 3, 3, generator=generator, requires_grad=True)

    def step(half: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.float16, enabled=half):
            y = F.conv2d(x, weight, padding=1)
        y.float().sum().backward()
        return time.perf_counter() - started

    step(False), step(True)  # warm-up: the first call of each picks (and may build) its kernels
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):  # interleaved, so a machine that slows down meanwhile slows both
        for half in (False, True):
            times[half].append(step(half))
    return statistics.median(times[True]) / statistics.median(times[False])
