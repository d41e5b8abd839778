"""How a run ends early: SIGINT/SIGTERM stop it at a step boundary, never in the middle of a file write.

:class:`StopSignals` turns the first SIGINT or SIGTERM into a flag the training loop polls between
steps (a Python bool: no device sync); the loop then raises :class:`TrainingInterrupted`, which says
which epoch ``last.pt`` holds and how to resume. A second SIGINT raises ``KeyboardInterrupt`` at once,
the usual escape hatch when a stop takes too long. :class:`DistributedAbort` ends the other ranks
of a multi-process run when rank 0 fails. No torch here, so the CLI can catch the error
before torch is imported.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from harness.runs import RunDir

__all__ = ["DistributedAbort", "StopSignals", "TrainingInterrupted", "interrupted"]

_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, what shells report for a killed job


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped cleanly on a signal (or at ``stop_after``); ``last.pt`` holds a complete epoch.

    A ``KeyboardInterrupt`` so that generic ``except Exception`` handlers let it through, as they
    would a Ctrl-C. ``exit_code`` is what the CLI exits with (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, *, signal_name: str, out_dir: str, last_epoch: int) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.out_dir = out_dir
        self.last_epoch = last_epoch  # the epoch last.pt holds (0: none was written)
        self.exit_code = _EXIT_CODES.get(signal_name, 1)

    def __str__(self) -> str:
        return str(self.args[0])


class DistributedAbort(RuntimeError):
    """This rank stopped because another one (rank 0, writing the run's files) failed; that rank's
    error says why."""


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`received` instead of killing the run.

    Outside the main thread (where Python cannot install handlers) it does nothing, and the previous
    handlers are restored on exit. Example::

        with StopSignals() as stop:
            for step in steps:
                if stop.received:
                    break
    """

    def __init__(self) -> None:
        self.received: str | None = None  # "SIGINT" or "SIGTERM" once one has arrived
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        self.received = self.received or name


def interrupted(
    signal_name: str | None, run: RunDir, epoch: int, epochs: int, *, between_epochs: bool
) -> TrainingInterrupted:
    """The error for a stop on a signal at ``epoch`` of ``epochs`` (``between_epochs``: after its
    checkpoint; else during it); ``signal_name`` is None when another rank received it."""
    kept = epoch if between_epochs else epoch - 1
    where = f"after epoch {epoch}/{epochs}" if between_epochs else f"during epoch {epoch}/{epochs}"
    holds = (
        f"{run.last} holds epoch {kept}"
        if kept >= 1
        else f"no epoch had finished, so nothing was saved in {run.path}"
    )
    resume = (
        f"continue with: sld train --out {run.path} --resume"
        if kept >= 1
        else "start it again without --resume"
    )
    return TrainingInterrupted(
        f"interrupted by {signal_name or 'a signal to another process'} {where}: stopped cleanly, "
        f"nothing half-written; {holds}; {resume}",
        signal_name=signal_name or "SIGTERM",
        out_dir=str(run.path),
        last_epoch=kept,
    )
