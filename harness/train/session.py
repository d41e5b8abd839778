"""One process's part of a run (:class:`Session`): its trackers started and closed, and the end of
the session recorded in ``run.json`` (finished, stopped, interrupted or failed)."""

from __future__ import annotations

import functools
from typing import Any

from rich.console import Console
from rich.text import Text

from harness.runs import RunDir

from .distributed import DistContext
from .interrupt import TrainingInterrupted
from .provenance import utc_now
from .trackers import Trackers

__all__ = ["Session", "log_step"]


class Session:
    """This process's part of a run, as a ``with`` block: on entry the trackers start (every rank
    learns if one fails), on exit they are closed and ``run.json`` records how the session ended:
    ``finished`` / ``stopped`` (:attr:`finished` says which), ``interrupted`` or ``failed``."""

    def __init__(
        self, run: RunDir, dist: DistContext, console: Console, trackers: Trackers, meta: Any, *,
        last_epoch: int,
    ) -> None:
        self.run, self.dist, self.console, self.trackers, self.meta = run, dist, console, trackers, meta
        self.last_epoch = last_epoch  # the last epoch this session committed
        self.finished = False  # every epoch of the run is done

    def __enter__(self) -> Session:
        try:
            self.dist.on_main(functools.partial(self.trackers.start, self.meta))
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        failing = exc is not None
        self.trackers.finish(ok=not failing)
        if not failing:
            status = "finished" if self.finished else "stopped"
        else:
            status = "interrupted" if isinstance(exc, TrainingInterrupted) else "failed"
        write = functools.partial(
            self.run.end_session, ended=utc_now(), status=status, last_epoch=self.last_epoch
        )
        if not failing:
            self.dist.on_main(write)
            return
        # An error is in flight: it says what went wrong, so this write must neither replace it nor
        # wait on the other ranks (they may not be here).
        if self.dist.is_main and self.run.run_info.is_file():
            try:
                write()
            except Exception as error:
                message = f"could not record the session's end in {self.run.run_info}: {error}"
                self.console.print(Text(message, style="yellow"))


def log_step(trackers: Trackers, epoch: int, step: int, scalars: dict[str, float]) -> None:
    trackers.log_step(step, epoch, scalars)
