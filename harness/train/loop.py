"""The CIFAR-100 training loop: ``train(config, device) -> RunResult``.

Data lives on the device as ``uint8`` once; each epoch a seeded permutation is cut into batches that
are augmented on the device (``harness.data.augment``), so there is no DataLoader and no per-step host
transfer. The loop never calls ``.cuda()``: everything goes ``.to(device)``.

A run directory holds::

    config.json     the resolved TrainConfig (``sld train --config DIR/config.json`` repeats the run)
    metrics.jsonl   one JSON record per epoch: every loss term, swap rates, lr, accuracies, speed
    last.pt         checkpoint after every epoch (``--resume`` continues from it, bit-exactly on CPU)
    best.pt         checkpoint of the epoch with the best test top-1
    teacher.json    the teacher's test top-1 and training-set error, measured when the run (re)starts
    summary.json    best and last accuracy, the teacher's accuracy, when the run finishes

Under ``torchrun`` (``sld train --nproc N``) the same function trains data-parallel: the student is
wrapped in ``DistributedDataParallel``, each rank takes its share of every global batch, sums and
evaluations are all-reduced, and only rank 0 prints and writes (``harness.train.distributed`` says
exactly what is split how). SIGINT/SIGTERM stop a run between steps with a message saying how to resume
(``harness.train.interrupt``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.nn.parallel import DistributedDataParallel

from harness.data.augment import eval_view, strong_view, weak_view
from harness.data.cifar import load_cifar100
from harness.models import build_model, load_weights
from sld_core import swap_mask

from .checkpoint import (
    capture_rng,
    load_checkpoint,
    load_model_state,
    remove_partial_writes,
    restore_rng,
    save_checkpoint,
)
from .config import (
    ConfigError,
    DataConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    flat_config,
    resume_conflicts,
    save_config,
)
from .distributed import DistContext, check_global_batch, context
from .errors import NonFiniteLossError
from .interrupt import StopSignals, TrainingInterrupted
from .methods import METHODS

__all__ = [
    "DeviceData",
    "NonFiniteLossError",
    "RunResult",
    "TrainingInterrupted",
    "epoch_batches",
    "evaluate",
    "load_data",
    "reduce_sums",
    "train",
    "train_step",
]


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports; the per-epoch detail is in ``out_dir / "metrics.jsonl"``."""

    out_dir: Path
    epochs: int  # the last epoch trained (== config.optim.epochs when the run finished)
    best_top1: float  # best test top-1 (fraction) over the epochs, and where it was reached
    best_epoch: int
    last_top1: float
    last_top5: float
    teacher_top1: float | None = None  # teacher's test top-1 (None for method "ce")
    teacher_train_error: float | None = None  # how often the teacher swap fires on the training set
    history: list[dict[str, Any]] = field(default_factory=list)  # this invocation's metric records


@dataclass(frozen=True)
class DeviceData:
    train_x: torch.Tensor  # uint8 (N, 3, 32, 32) on the device
    train_y: torch.Tensor  # int64 (N,) on the device
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


class RunFiles:
    """The run directory. Under DDP only rank 0 writes (through ``DistContext.on_main``)."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir
        self.config = out_dir / "config.json"
        self.metrics = out_dir / "metrics.jsonl"
        self.last = out_dir / "last.pt"
        self.best = out_dir / "best.pt"
        self.teacher = out_dir / "teacher.json"
        self.summary = out_dir / "summary.json"

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop records after ``last_epoch`` (written before a crash that lost their checkpoint)."""
        if not self.metrics.is_file():
            return
        kept = [
            line
            for line in self.metrics.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] <= last_epoch
        ]
        self.metrics.write_text("".join(line + "\n" for line in kept))


def train(
    config: TrainConfig,
    device: torch.device,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Train ``config.student`` on CIFAR-100 with ``config.method`` and return the accuracies.

    Runs data-parallel when a ``torch.distributed`` process group is initialized (``torchrun``; see
    :mod:`harness.train.distributed`): then ``config.optim.batch_size`` is the global batch, and every
    rank returns the same :class:`RunResult`.

    Parameters
    ----------
    config
        The whole run; saved to ``config.out_dir / "config.json"``. ``config.sync_bn`` (CUDA only)
        makes BatchNorm use the global batch's statistics under DDP.
    device
        Where everything runs (``torch.device("cuda")``, ``torch.device("cpu")``, ...); under DDP this
        rank's device.
    resume
        Continue from ``config.out_dir / "last.pt"``; the checkpoint's config must match ``config``
        except in where/how-fast fields (output dir, logging interval, compile, data location). The
        world size may differ. Without ``resume`` an existing ``last.pt`` there is an error, never
        overwritten.
    console
        Where the Rich output goes (default: a new stdout console; silent on ranks other than 0).
    on_epoch_end
        Called with each epoch's metric record after its checkpoint is written (tests use it to
        interrupt a run; a reporter could stream the records).
    stop_after
        Stop cleanly after this epoch (for time-limited job slots); ``resume=True`` continues later.
        The returned result then has ``epochs == stop_after`` and no ``summary.json`` is written.

    Returns
    -------
    RunResult

    Raises
    ------
    ConfigError, FileNotFoundError, harness.models.CheckpointError, harness.data.cifar.DatasetError
        Bad configuration, missing data or teacher, unreadable or mismatched checkpoints.
    NonFiniteLossError
        The loss became NaN/inf; the message names the epoch and step; ``last.pt`` keeps the last good epoch.
    TrainingInterrupted
        SIGINT or SIGTERM arrived; the run stopped between steps, ``last.pt`` holds the last complete epoch.
    harness.train.checkpoint.CheckpointWriteError
        A checkpoint could not be written (disk full, ...); the previous one is intact.

    Example
    -------
    >>> result = train(TrainConfig(student="resnet8", method="ce"), torch.device("cpu"))  # doctest: +SKIP
    """
    dist = context(device)
    if dist.active:
        check_global_batch(config.optim.batch_size, dist.world_size)
    if config.sync_bn and device.type != "cuda":
        raise ConfigError(
            "sync_bn (--sync-bn) needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)"
        )
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be an epoch >= 1; got {stop_after}")
    # Metric lines stay one line each in logs; the other ranks compute the same numbers silently.
    console = console or Console(soft_wrap=True)
    if not dist.is_main:
        console = Console(quiet=True)
    files = RunFiles(Path(config.out_dir))
    if files.last.exists() and not resume:
        raise ConfigError(
            f"{files.dir} already holds a run ({files.last.name}); pass --resume to continue "
            "it or choose another --out directory"
        )
    checkpoint = _load_resume_checkpoint(files, config) if resume else None
    if checkpoint is None:
        _seed_everything(config.seed)  # before building the model: its initialization draws from it

    data = load_data(config.data, device)
    memory_format = _memory_format(config)
    student = build_model(config.student, num_classes=data.num_classes).to(
        device, memory_format=memory_format
    )
    if config.sync_bn:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)  # same state_dict keys
    teacher = _load_teacher(config, data.num_classes, device, memory_format)
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=config.optim.lr,
        momentum=config.optim.momentum,
        nesterov=config.optim.nesterov,
        weight_decay=config.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.optim.lr_milestones), gamma=config.optim.lr_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    start_epoch, best_top1, best_epoch = 1, -1.0, 0
    if checkpoint is not None:
        # Checkpoints hold the unwrapped module's state, so any world size loads any other's.
        load_model_state(student, checkpoint["model"], files.last)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        restore_rng(checkpoint["rng"], generator)
        start_epoch = checkpoint["epoch"] + 1
        best_top1, best_epoch = checkpoint["best_acc"], checkpoint.get("best_epoch", 0)

    def prepare_directory() -> None:
        files.dir.mkdir(parents=True, exist_ok=True)
        # Records past the checkpoint were written just before a crash that lost their checkpoint.
        files.truncate_metrics(checkpoint["epoch"] if checkpoint is not None else 0)
        remove_partial_writes(files.dir)  # temp files of a checkpoint write that a kill -9 cut short
        save_config(config, files.config)

    dist.on_main(prepare_directory)
    _print_config(console, config, device, dist, resume_from=start_epoch - 1 if checkpoint else None)
    teacher_top1 = teacher_train_error = None
    if teacher is not None:
        teacher_top1, _ = _evaluate(teacher, data.test_x, data.test_y, config, dist)
        train_top1, _ = _evaluate(teacher, data.train_x, data.train_y, config, dist)
        teacher_train_error = 1.0 - train_top1
        # Written now, not only in summary.json at the end: a report can show it for unfinished runs.
        teacher_record = {
            "teacher": config.teacher,
            "teacher_checkpoint": config.teacher_checkpoint,
            "teacher_top1": teacher_top1,
            "teacher_train_error": teacher_train_error,
        }
        dist.on_main(lambda: files.teacher.write_text(json.dumps(teacher_record, indent=2) + "\n"))
        console.print(
            f"teacher {config.teacher}: test top-1 {100 * teacher_top1:.2f}%, "
            f"training-set error {100 * teacher_train_error:.2f}% (how often the teacher swap fires)"
        )

    wrapped = student
    if dist.active:
        wrapped = DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(wrapped) if config.compile else wrapped
    # Under DDP evaluate the plain module: ranks may run different numbers of evaluation batches,
    # and the DDP wrapper's buffer broadcast inside forward would then wait forever.
    eval_model = student if dist.active else forward
    method = METHODS[config.method]
    last_epoch = config.optim.epochs if stop_after is None else min(stop_after, config.optim.epochs)
    history: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    with StopSignals() as stop:
        for epoch in range(start_epoch, last_epoch + 1):
            lr = optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            sums = _train_epoch(
                forward,
                teacher,
                method,
                optimizer,
                scaler,
                data,
                config,
                epoch,
                generator,
                console,
                files,
                dist,
                stop,
            )
            train_time = time.perf_counter() - started
            scheduler.step()
            dist.broadcast_buffers(student)  # every rank evaluates (and rank 0 saves) rank 0's BN statistics
            top1, top5 = _evaluate(eval_model, data.test_x, data.test_y, config, dist)
            is_best = top1 > best_top1
            if is_best:
                best_top1, best_epoch = top1, epoch
            record = _epoch_record(
                epoch,
                lr,
                sums,
                config.data.views,
                top1,
                top5,
                best_top1,
                train_time,
                time.perf_counter() - started,
            )
            payload = {
                "model": student.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best_acc": best_top1,
                "best_epoch": best_epoch,
                "config": config_to_dict(config),
                "rng": capture_rng(generator),
                "world_size": dist.world_size,  # informational: any world size can resume it
            }

            dist.on_main(functools.partial(_write_epoch, files, record, payload, is_best))
            console.print(_epoch_line(record, config.optim.epochs))
            history.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if dist.any(stop.received is not None) and epoch < config.optim.epochs:
                raise _interrupted(stop.received, files, epoch, config.optim.epochs, between_epochs=True)

    last_epoch = record.get("epoch", start_epoch - 1)
    last_top1 = record.get("test_top1", float("nan"))
    last_top5 = record.get("test_top5", float("nan"))
    result = RunResult(
        out_dir=files.dir,
        epochs=last_epoch,
        best_top1=best_top1,
        best_epoch=best_epoch,
        last_top1=last_top1,
        last_top5=last_top5,
        teacher_top1=teacher_top1,
        teacher_train_error=teacher_train_error,
        history=history,
    )
    if last_epoch < config.optim.epochs:
        console.print(
            f"[bold]stopped after epoch {last_epoch}/{config.optim.epochs} as asked[/bold]; "
            f"continue with: sld train --out {files.dir} --resume"
        )
        return result

    def write_summary() -> None:
        summary = {k: v for k, v in result.__dict__.items() if k not in ("history",)}
        files.summary.write_text(json.dumps(summary, default=str, indent=2) + "\n")

    dist.on_main(write_summary)
    console.print(
        f"[bold]best test top-1 {100 * best_top1:.2f}% (epoch {best_epoch}), "
        f"last {100 * last_top1:.2f}%[/bold] -> {files.dir}"
    )
    return result


def _write_epoch(files: RunFiles, record: dict[str, Any], payload: dict[str, Any], is_best: bool) -> None:
    # Metrics first: a crash before the checkpoint lands leaves a record that resuming truncates.
    files.append_metrics(record)
    save_checkpoint(files.last, payload)
    if is_best:
        save_checkpoint(files.best, payload)


def _interrupted(
    signal_name: str | None, files: RunFiles, epoch: int, epochs: int, *, between_epochs: bool
) -> TrainingInterrupted:
    """The error for a stop on a signal; ``signal_name`` is None when another rank received it."""
    kept = epoch if between_epochs else epoch - 1
    where = f"after epoch {epoch}/{epochs}" if between_epochs else f"during epoch {epoch}/{epochs}"
    holds = (
        f"{files.last} holds epoch {kept}"
        if kept >= 1
        else f"no epoch had finished, so nothing was saved in {files.dir}"
    )
    resume = (
        f"continue with: sld train --out {files.dir} --resume"
        if kept >= 1
        else "start it again without --resume"
    )
    return TrainingInterrupted(
        f"interrupted by {signal_name or 'a signal to another process'} {where}: stopped cleanly, "
        f"nothing half-written; {holds}; {resume}",
        signal_name=signal_name or "SIGTERM",
        out_dir=str(files.dir),
        last_epoch=kept,
    )


# ------------------------------------------------------------------------------------------------ one epoch


def epoch_batches(
    num_items: int, batch_size: int, generator: torch.Generator, *, min_rows: int = 2
) -> Iterator[torch.Tensor]:
    """Index tensors of one epoch's (global) batches: a permutation drawn from ``generator`` (on its
    device), cut into ``batch_size`` slices; the last, shorter one is kept (as a DataLoader without
    drop_last) unless it has fewer than ``min_rows`` rows. BatchNorm cannot normalize a single row, so
    a single process needs 2 and ``world_size`` ranks need ``2 * world_size`` (each rank's share of the
    batch is normalized on its own). Every rank draws the same permutation from the same seed."""
    order = torch.randperm(num_items, generator=generator, device=generator.device)
    for batch in order.split(batch_size):
        if batch.numel() >= min_rows:
            yield batch


def reduce_sums(sums: dict[str, torch.Tensor], dist: DistContext | None = None) -> dict[str, float]:
    """Device sums -> Python floats in one transfer (one sync), summed over the ranks under DDP."""
    keys = list(sums)
    if not keys:
        return {}
    stacked = torch.stack([sums[k].detach().float() for k in keys])
    values = (dist.all_reduce_sum(stacked) if dist is not None else stacked).tolist()
    return dict(zip(keys, values))


def _train_epoch(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    method: Callable[..., Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: DeviceData,
    config: TrainConfig,
    epoch: int,
    generator: torch.Generator,
    console: Console,
    files: RunFiles,
    dist: DistContext,
    stop: StopSignals,
) -> dict[str, float]:
    """One pass over the training set. Running sums stay on the device; the host reads them only
    every ``config.log_every`` steps (progress and the non-finite check) and at the end.

    Under DDP every rank walks the same global batches and trains on its share of each; a stop
    signal is agreed on every ``log_every`` steps (a collective), so all ranks stop at the same step.
    """
    student.train()
    sums: dict[str, torch.Tensor] = {}
    first_bad_step = torch.full((), -1, dtype=torch.long, device=data.train_x.device)
    steps = math.ceil(data.train_x.shape[0] / config.optim.batch_size)
    rows = local_rows = 0  # images seen this epoch (all ranks, this rank): known on the host, no sync
    batches = epoch_batches(
        data.train_x.shape[0], config.optim.batch_size, generator, min_rows=2 * dist.world_size
    )
    with _progress(console) as progress:
        task = progress.add_task(f"epoch {epoch}/{config.optim.epochs}", total=steps, loss=float("nan"))
        for step, index in enumerate(batches):
            shard = dist.shard_slice(index.shape[0])
            shard_rows = len(range(index.shape[0])[shard])
            loss, stats = train_step(
                student,
                teacher,
                method,
                optimizer,
                scaler,
                data.train_x[index],
                data.train_y[index],
                config=config,
                epoch=epoch,
                generator=generator,
                rows=shard,
                # DDP averages gradients over ranks; this weight makes that the global batch mean
                # (exactly 1 when the shards are equal, i.e. every batch but maybe the last).
                loss_weight=dist.world_size * shard_rows / index.shape[0],
            )
            for name, value in stats.items():
                sums[name] = sums[name] + value if name in sums else value
            rows += index.shape[0]
            local_rows += shard_rows
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
            at_log_step = (step + 1) % config.log_every == 0
            if at_log_step:
                _check_finite(first_bad_step, epoch, steps, files, dist)  # a sync: every log_every steps
                progress.update(task, completed=step + 1, loss=float(sums["loss"]) / local_rows)
            # One process polls its flag every step for free; ranks must agree, at the log steps.
            if dist.active:
                stopping = at_log_step and dist.any(stop.received is not None)
            else:
                stopping = stop.received is not None
            if stopping:
                raise _interrupted(stop.received, files, epoch, config.optim.epochs, between_epochs=False)
    _check_finite(first_bad_step, epoch, steps, files, dist)
    return {**reduce_sums(sums, dist), "rows": rows}


def train_step(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    method: Callable[..., Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: TrainConfig,
    epoch: int,
    generator: torch.Generator,
    rows: slice = slice(None),
    loss_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on one ``uint8`` batch: every view augmented, the method's loss terms summed
    over the views, one backward. Nothing here waits for the device.

    Under DDP ``images``/``labels`` are the whole global batch: it is augmented whole, with the
    generator every rank shares, so each image gets the same random crop, flip and RandAugment draws
    as in a single process; then this rank trains on ``rows`` of it, its loss times ``loss_weight``.

    Returns
    -------
    (loss, stats)
        This rank's detached total loss (0-d, before ``loss_weight``) and this step's device-side sums
        for the epoch record: every term times the rows trained on, swap counts and correct weak-view
        predictions.
    """
    labels = labels[rows]
    batch = labels.shape[0]
    stats: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        stats[name] = stats[name] + value if name in stats else value

    optimizer.zero_grad(set_to_none=True)  # frees the grads instead of writing zeros into them
    loss = torch.zeros((), device=images.device)
    for v, view in enumerate((weak_view, strong_view)[: config.data.views]):
        x = view(images, generator)[rows].contiguous(memory_format=_memory_format(config))
        with _autocast(config.amp, images.device):
            student_logits = student(x)
            with torch.no_grad():
                teacher_logits = teacher(x) if teacher is not None else None
        terms = method(student_logits, teacher_logits, labels, epoch=epoch, config=config.loss)
        for name, value in terms.items():
            if name.startswith("loss"):
                loss = loss + value
            add(name, value.detach() * batch)
        if teacher_logits is not None:
            add("teacher_swaps", swap_mask(teacher_logits, labels, check_targets=False).sum())
        add("student_swaps", swap_mask(student_logits.detach(), labels, check_targets=False).sum())
        if v == 0:  # train accuracy on the weak view, the one closest to the test images
            add("train_correct", (student_logits.detach().argmax(dim=1) == labels).sum())
    scaler.scale(loss * loss_weight if loss_weight != 1.0 else loss).backward()
    scaler.step(optimizer)
    scaler.update()
    loss = loss.detach()
    add("loss", loss * batch)
    return loss, stats


def _check_finite(
    first_bad_step: torch.Tensor, epoch: int, steps: int, files: RunFiles, dist: DistContext
) -> None:
    if dist.active:  # the first bad step on any rank; every rank then raises the same error
        never = torch.full_like(first_bad_step, steps)
        first = dist.all_reduce_min(torch.where(first_bad_step < 0, never, first_bad_step))
        first_bad_step = torch.where(first == steps, -1, first)
    bad = int(first_bad_step)
    if bad < 0:
        return
    kept = (
        f"the last good checkpoint {files.last} (epoch {epoch - 1}) is kept"
        if files.last.exists()
        else "no checkpoint had been written yet"
    )
    raise NonFiniteLossError(
        f"non-finite loss (NaN/inf) at epoch {epoch}, step {bad + 1}/{steps}; training "
        f"stopped and {kept}. Lower the learning rate or try --amp off."
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 512,
    amp: str = "off",
    channels_last: bool = False,
    dist: DistContext | None = None,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions) of ``model`` on ``uint8`` NCHW ``images`` (eval view), in
    eval mode; the model's train/eval mode is restored. Counts stay on the device until the end (one sync).
    With a multi-process ``dist`` each rank evaluates its share of the images and the counts are summed."""
    total = images.shape[0]
    if dist is not None and dist.active:
        images, labels = dist.shard(images), dist.shard(labels)
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    correct1 = torch.zeros((), dtype=torch.long, device=images.device)
    correct5 = torch.zeros((), dtype=torch.long, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        x = eval_view(images[start : start + batch_size]).contiguous(memory_format=memory_format)
        y = labels[start : start + batch_size]
        with _autocast(amp, images.device):
            logits = model(x)
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
    model.train(was_training)
    counts = torch.stack([correct1, correct5])
    c1, c5 = (dist.all_reduce_sum(counts) if dist is not None else counts).tolist()
    return c1 / total, c5 / total


# --------------------------------------------------------------------------------------------------- set-up


def _evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    dist: DistContext,
) -> tuple[float, float]:
    return evaluate(
        model,
        images,
        labels,
        batch_size=config.data.eval_batch_size,
        amp=config.amp,
        channels_last=config.channels_last,
        dist=dist,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global state, for code that draws from np.random.*)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _load_resume_checkpoint(files: RunFiles, config: TrainConfig) -> dict[str, Any]:
    if not files.last.exists():
        raise ConfigError(
            f"cannot resume: {files.last} does not exist (the run stopped before its first epoch "
            "ended, or this is not a run directory); start it again without --resume"
        )
    checkpoint = load_checkpoint(files.last)
    try:
        saved = config_from_dict(checkpoint["config"])
    except ConfigError as exc:
        raise ConfigError(f"{files.last}: its stored config is invalid: {exc}") from None
    conflicts = resume_conflicts(saved, config)
    if conflicts:
        raise ConfigError(
            f"cannot resume {files.last}: the config differs from the run's ({', '.join(conflicts)}); "
            f"resume with --config {files.config} or start a new --out directory"
        )
    if checkpoint["epoch"] >= config.optim.epochs:
        raise ConfigError(
            f"{files.last} already finished all {config.optim.epochs} epochs; nothing to resume"
        )
    return checkpoint


def load_data(config: DataConfig, device: torch.device) -> DeviceData:
    """CIFAR-100 as ``uint8`` NCHW / ``int64`` tensors on ``device``, loaded once (limits applied)."""
    cifar = load_cifar100(config.data_dir, download=config.download)

    def to_device(
        images: np.ndarray, labels: np.ndarray, limit: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = images[:limit], labels[:limit]
        # NHWC -> NCHW once, on the host; the device then only ever slices and augments.
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        return x, torch.from_numpy(labels).to(device=device, dtype=torch.long)

    train_x, train_y = to_device(cifar.train_images, cifar.train_labels, config.limit_train)
    test_x, test_y = to_device(cifar.test_images, cifar.test_labels, config.limit_test)
    for name, labels in (("training", cifar.train_labels), ("test", cifar.test_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= cifar.num_classes):
            raise ValueError(
                f"{name} labels must lie in [0, {cifar.num_classes}); got {labels.min()}..{labels.max()}"
            )
    return DeviceData(train_x, train_y, test_x, test_y, cifar.num_classes)


def _load_teacher(
    config: TrainConfig, num_classes: int, device: torch.device, memory_format: torch.memory_format
) -> torch.nn.Module | None:
    if config.method == "ce":
        return None
    if not config.teacher_checkpoint:
        raise ConfigError(f"method {config.method!r} needs a teacher checkpoint (config.teacher_checkpoint)")
    teacher = build_model(config.teacher, num_classes=num_classes)
    load_weights(teacher, config.teacher_checkpoint)
    teacher = teacher.to(device, memory_format=memory_format).eval()
    teacher.requires_grad_(False)  # no grads are ever taken; also skips autograd bookkeeping
    return teacher


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# --------------------------------------------------------------------------------------------------- output


def _epoch_record(
    epoch: int,
    lr: float,
    sums: dict[str, float],
    views: int,
    top1: float,
    top5: float,
    best: float,
    train_time: float,
    epoch_time: float,
) -> dict[str, Any]:
    rows = sums["rows"]
    view_rows = rows * views
    record: dict[str, Any] = {"epoch": epoch, "lr": lr}
    # Loss terms are per-step sums over the views; weighting by rows makes the mean per image.
    record.update(
        {
            name: value / rows
            for name, value in sums.items()
            if name not in ("rows", "teacher_swaps", "student_swaps", "train_correct")
        }
    )
    if "teacher_swaps" in sums:
        record["teacher_swap_rate"] = sums["teacher_swaps"] / view_rows
    record["student_swap_rate"] = sums["student_swaps"] / view_rows
    record["train_top1"] = sums["train_correct"] / rows
    record.update(
        {
            "test_top1": top1,
            "test_top5": top5,
            "best_test_top1": best,
            "epoch_time_s": epoch_time,
            "images_per_s": rows / train_time,
        }
    )
    return record


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    swaps = f" student {record['student_swap_rate']:.3f}"
    if "teacher_swap_rate" in record:
        swaps = f" teacher {record['teacher_swap_rate']:.3f}," + swaps
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, lr {record['lr']:.4g}, "
        f"swap rate{swaps}, "
        f"train top-1 {100 * record['train_top1']:.2f}%, test top-1 {100 * record['test_top1']:.2f}% "
        f"(top-5 {100 * record['test_top5']:.2f}%, best {100 * record['best_test_top1']:.2f}%), "
        f"{record['epoch_time_s']:.1f} s, {record['images_per_s']:.0f} img/s"
    )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _print_config(
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
