"""Where a run computes: the one translation of a device spec (``--device``, or ``train(config, "cpu")``)
into a ``torch.device``, checked against this machine, so a bad one is one line, not a traceback from
deep inside torch. ``harness.commands._common.resolve_device`` is this, named for the flag.
"""

from __future__ import annotations

import torch

from harness.config import ConfigError

__all__ = ["as_device"]

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
