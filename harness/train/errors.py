"""Errors of a training run that the CLI reports as one line (kept free of torch so it can catch them)."""

from __future__ import annotations

__all__ = ["NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""
