"""What a training run prints: the config table, a progress bar per epoch, one line per epoch, and
how the run ended. Rank 0 prints; the trainer gives the other ranks a quiet console."""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.config import TrainConfig, flat_config

from .distributed import DistContext

__all__ = ["epoch_line", "print_config", "progress"]


def print_config(
    console: Console, config: TrainConfig, device: torch.device, dist: DistContext, resume_from: int | None
) -> None:
    table = Table(title="sld train", show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in flat_config(config).items():
        table.add_row(key, str(value))
    table.add_row("device", str(device))
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
    """The bar of one epoch; its ``loss`` field is updated every ``log_every`` steps."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch's metric record as one log line."""
    swaps = f" student {record['student_swap_rate']:.3f}"
    if "teacher_swap_rate" in record:
        swaps = f" teacher {record['teacher_swap_rate']:.3f}," + swaps
    if "teacher_processed_rate" in record:
        swaps = f" conditional {record['teacher_processed_rate']:.3f}," + swaps
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, lr {record['lr']:.4g}, "
        f"swap rate{swaps}, "
        f"train top-1 {100 * record['train_top1']:.2f}%, test top-1 {100 * record['test_top1']:.2f}% "
        f"(top-5 {100 * record['test_top5']:.2f}%, best {100 * record['best_test_top1']:.2f}%), "
        f"{record['epoch_time_s']:.1f} s, {record['images_per_s']:.0f} img/s"
    )
