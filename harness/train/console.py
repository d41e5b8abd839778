"""What a training run prints: the config table, a progress bar per epoch (with the epoch's and the
run's time remaining), one line per epoch, and how the run ended. Rank 0 prints; the trainer gives the
other ranks a quiet console."""

from __future__ import annotations

import math
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from harness.config import TrainConfig, flat_config
from harness.method_names import method_label

from .distributed import DistContext
from .provenance import device_name, git_commit

__all__ = ["NO_LOSS_YET", "RunEta", "duration", "epoch_line", "print_config", "progress", "views_text"]

_DASH = "–"
NO_LOSS_YET = _DASH  # the bar's loss before the first read: never "nan", which would look like divergence


def views_text(views: int) -> str:
    """How a run views each image, in words: what a KD-vs-SLD comparison must say it compares.

    >>> views_text(2)
    '2 (weak + strong, losses summed)'
    """
    return "2 (weak + strong, losses summed)" if views == 2 else f"{views} (weak only)"


def print_config(
    console: Console, config: TrainConfig, device: torch.device, dist: DistContext, resume_from: int | None
) -> None:
    """The table a run opens with: what it trains (the method's name, its views, the device and the
    code's commit), then every config field."""
    table = Table(title="sld train", show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    commit, dirty = git_commit()
    code = commit[:12] + (" (with uncommitted changes)" if dirty else "") if commit != "unknown" else commit
    subject = config.pair or config.student
    table.add_row("run", f"{method_label(config)} on {subject}, seed {config.seed}")
    table.add_row("views", views_text(config.data.views))
    table.add_row("device", f"{device} ({device_name(device)})")
    table.add_row("git commit", code)
    for key, value in flat_config(config).items():
        table.add_row(key, str(value))
    if dist.active:
        share = config.optim.batch_size // dist.world_size
        table.add_row(
            "processes",
            f"{dist.world_size}: global batch {config.optim.batch_size} = {dist.world_size} x {share}",
        )
    if resume_from is not None:
        table.add_row("resuming after epoch", str(resume_from))
    console.print(table)


def progress(console: Console) -> Progress:
    """The bar of one epoch: steps, the running loss (field ``loss``, text: :data:`NO_LOSS_YET` until the
    first read), time spent and left in the epoch, and the run's time left (field ``run_eta``); the
    fields are updated at the host syncs the loop does anyway (every ``log_every`` steps)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        TextColumn("run {task.fields[run_eta]}"),
        console=console,
        transient=True,
    )


def duration(seconds: float | None) -> str:
    """Seconds as ``H:MM:SS`` (``D days, H:MM:SS`` past a day); ``–`` when unknown.

    >>> duration(3725.4), duration(None)
    ('1:02:05', '–')
    """
    if seconds is None or not math.isfinite(seconds):
        return _DASH
    whole = int(round(max(seconds, 0.0)))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'s' if days > 1 else ''}, {clock}" if days else clock


class RunEta:
    """The run's time left: the epochs left times the mean wall time of the epochs this process has
    finished; during the first of them, the current epoch's pace (its projected length) stands in.

    >>> eta = RunEta(last_epoch=10)
    >>> eta.remaining(epoch=1, done=0.5, elapsed=30.0)  # half of epoch 1 in 30 s: 30 + 9 x 60
    570.0
    >>> eta.epoch_finished(80.0)
    >>> eta.remaining(epoch=2, done=0.25, elapsed=20.0)  # 60 s left of this one (its pace), 8 x 80
    700.0
    """

    def __init__(self, last_epoch: int) -> None:
        self.last_epoch = last_epoch
        self._times: list[float] = []

    def epoch_finished(self, seconds: float) -> None:
        """An epoch took ``seconds`` (training, evaluation and writing its files)."""
        self._times.append(seconds)

    def mean_epoch(self) -> float | None:
        return sum(self._times) / len(self._times) if self._times else None

    def remaining(self, *, epoch: int, done: float, elapsed: float) -> float | None:
        """Seconds left in the run while ``epoch`` is ``done`` (a fraction of its steps) after
        ``elapsed`` seconds; after an epoch (``done=1``) the epochs after it. None before any step."""
        if done <= 0:
            return None
        projected = elapsed / done  # this epoch's length at its pace so far
        per_epoch = self.mean_epoch() or projected
        return max(projected - elapsed, 0.0) + (self.last_epoch - epoch) * per_epoch


def epoch_line(record: dict[str, Any], epochs: int, *, run_left: float | None = None) -> str:
    """One epoch's metric record as one log line (with ``run_left``, the run's time left)."""
    swaps = f" student {record['student_swap_rate']:.3f}"
    if "teacher_swap_rate" in record:
        swaps = f" teacher {record['teacher_swap_rate']:.3f}," + swaps
    if "teacher_processed_rate" in record:
        swaps = f" conditional {record['teacher_processed_rate']:.3f}," + swaps
    test_loss = f", loss {record['test_loss']:.4f}" if "test_loss" in record else ""
    left = f", run left {duration(run_left)}" if run_left is not None and record["epoch"] < epochs else ""
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, lr {record['lr']:.4g}, "
        f"swap rate{swaps}, "
        f"train top-1 {100 * record['train_top1']:.2f}%, test top-1 {100 * record['test_top1']:.2f}% "
        f"(top-5 {100 * record['test_top5']:.2f}%{test_loss}, best {100 * record['best_test_top1']:.2f}%), "
        f"{record['epoch_time_s']:.1f} s, {record['images_per_s']:.0f} img/s{left}"
    )
