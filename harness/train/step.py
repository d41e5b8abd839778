"""One epoch and one optimizer step of training (:func:`train_epoch`, :func:`train_step`), and what
every step uses (:class:`StepParts`). Nothing here waits for the device except at the log steps, the
first step of an epoch and every ``log_every``-th (progress, the step scalars of the trackers, the
non-finite check, under DDP the stop agreement)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from rich.console import Console

from harness.config import TrainConfig
from harness.data.base import Batch, TrainData
from harness.runs import RunDir
from sld_core import swap_mask

from .console import NO_LOSS_YET, RunEta, duration, progress
from .distributed import DistContext
from .errors import NonFiniteLossError
from .evaluate import autocast
from .interrupt import StopSignals, interrupted
from .methods import Method, StepLogits, processed_rows

__all__ = ["StepParts", "train_epoch", "train_step"]


@dataclass(frozen=True)
class StepParts:
    """What every training step uses, built once per run."""

    student: torch.nn.Module  # what runs forward: the module, or its DDP / torch.compile wrapper
    teacher: torch.nn.Module | None  # eval mode, no grad
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    config: TrainConfig
    dist: DistContext = field(default_factory=DistContext)


def train_epoch(
    parts: StepParts,
    data: TrainData,
    epoch: int,
    generator: torch.Generator,
    console: Console,
    run: RunDir,
    stop: StopSignals,
    *,
    eta: RunEta | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """One pass over the training set. Running sums stay on the device; the host reads them only at
    the log steps (the epoch's first step, so the bar shows a loss at once, and every
    ``config.log_every``-th) and at the end.

    At a log step the bar shows the running mean loss and the time left (the epoch's and, with
    ``eta``, the run's), and ``on_log(global_step, {"loss": ..., "lr": ...})`` gets the mean loss per
    image since the previous log step (this rank's rows) and the learning rate: the trackers' step
    scalars, read in the same transfer, so they add no sync. ``global_step`` counts from 1 over the run.

    Under DDP every rank walks the same global batches and trains on its share of each; a stop
    signal is agreed on at the log steps (a collective), so all ranks stop at the same step.
    """
    config, dist = parts.config, parts.dist
    parts.student.train()
    sums: dict[str, torch.Tensor] = {}
    first_bad_step = torch.full((), -1, dtype=torch.long, device=generator.device)
    # Whether the student's and the teacher's logits were finite at that step: what the message blames.
    first_bad_logits = torch.ones(2, dtype=torch.bool, device=generator.device)
    steps = data.steps_per_epoch(dist.world_size)
    rows = local_rows = 0  # images seen this epoch (all ranks, this rank): known on the host, no sync
    # With on_log: the loss summed since the previous log step, on the device (one add per step, no sync),
    # and the rows it covers (host).
    window_loss: torch.Tensor | None = None
    logged_rows = 0
    lr = float(parts.optimizer.param_groups[0]["lr"])  # stepped per epoch: constant within one
    started = time.perf_counter()
    batches = data.train_batches(epoch, generator=generator, rank=dist.rank, world_size=dist.world_size)
    with progress(console) as bar:
        task = bar.add_task(
            f"epoch {epoch}/{config.optim.epochs}", total=steps, loss=NO_LOSS_YET, run_eta=duration(None)
        )
        for step, batch in enumerate(batches):
            loss, stats, logits_finite = train_step(parts, batch, epoch=epoch)
            for name, value in stats.items():
                sums[name] = sums[name] + value if name in sums else value
            if on_log is not None:
                window_loss = stats["loss"] if window_loss is None else window_loss + stats["loss"]
            rows += batch.global_rows
            local_rows += batch.labels.shape[0]
            newly_bad = (first_bad_step < 0) & ~torch.isfinite(loss)
            first_bad_step = torch.where(newly_bad, step, first_bad_step)
            first_bad_logits = torch.where(newly_bad, logits_finite, first_bad_logits)
            at_log_step = step == 0 or (step + 1) % config.log_every == 0
            if at_log_step:  # a sync: the first step, then every log_every steps
                _check_finite(first_bad_step, first_bad_logits, epoch, steps, run, config, dist)
                if window_loss is None:
                    loss_sum = float(sums["loss"])
                else:  # both in one transfer: the trackers' step loss costs no extra sync
                    loss_sum, window_sum = torch.stack([sums["loss"], window_loss]).tolist()
                    window_rows = local_rows - logged_rows
                    on_log((epoch - 1) * steps + step + 1, {"loss": window_sum / window_rows, "lr": lr})
                    window_loss, logged_rows = None, local_rows
                elapsed, done = time.perf_counter() - started, (step + 1) / steps
                left = None if eta is None else eta.remaining(epoch=epoch, done=done, elapsed=elapsed)
                bar.update(
                    task, completed=step + 1, loss=f"{loss_sum / local_rows:.4f}", run_eta=duration(left)
                )
            # One process polls its flag every step for free; ranks must agree, at the log steps.
            if dist.active:
                stopping = at_log_step and dist.any(stop.received is not None)
            else:
                stopping = stop.received is not None
            if stopping:
                raise interrupted(stop.received, run, epoch, config.optim.epochs, between_epochs=False)
    _check_finite(first_bad_step, first_bad_logits, epoch, steps, run, config, dist)
    return {**_reduce_sums(sums, dist), "rows": rows}


def train_step(
    parts: StepParts, batch: Batch, *, epoch: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step on this rank's rows of one global batch: the student's and the teacher's
    logits of every view, the method's loss terms, one backward. Nothing here waits for the device.

    Under DDP the loss is weighted by ``world_size * rows / global_rows``: DDP averages gradients over
    ranks, and this makes that the global batch mean (exactly 1 when the shards are equal, i.e. every
    batch but maybe the last).

    Returns
    -------
    (loss, stats, logits_finite)
        This rank's detached total loss (0-d, before the DDP weight); this step's device-side sums
        for the epoch record: every term times the rows trained on, swap counts (and, for the
        conditional swap, the rows it swaps) and correct weak-view predictions; and whether the
        student's and the teacher's logits were all finite (bool, (2,)), which says what to blame when
        the loss is not.
    """
    config, labels = parts.config, batch.labels
    rows = labels.shape[0]
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    parts.optimizer.zero_grad(set_to_none=True)  # frees the grads instead of writing zeros into them
    students, teachers = [], []
    for view in batch.views:
        x = view.contiguous(memory_format=memory_format)
        with autocast(config.amp, x.device):
            students.append(parts.student(x))
            if parts.teacher is not None:
                with torch.no_grad():
                    teachers.append(parts.teacher(x))
    logits = StepLogits(tuple(students), tuple(teachers) if parts.teacher is not None else None, labels)
    terms = parts.method(logits, epoch=epoch, config=config.loss)
    loss = torch.zeros((), device=labels.device)
    stats: dict[str, torch.Tensor] = {}
    for name, value in terms.items():
        if name.startswith("loss"):
            loss = loss + value
        stats[name] = value.detach() * rows
    if teachers:
        stats["teacher_swaps"] = _swap_count(teachers, labels)
        processed = [processed_rows(config.loss, t, labels) for t in teachers]
        if processed[0] is not None:  # the conditional swap: the rows it swaps, a subset of the above
            stats["teacher_processed"] = torch.stack([mask.sum() for mask in processed]).sum()
    stats["student_swaps"] = _swap_count([s.detach() for s in students], labels)
    # train accuracy on the weak view, the one closest to the test images
    stats["train_correct"] = (students[0].detach().argmax(dim=1) == labels).sum()
    # One sum per view is finite exactly when every logit is (or the sum overflows: divergence too).
    logits_finite = torch.stack([_all_finite(students, labels.device), _all_finite(teachers, labels.device)])
    weight = parts.dist.world_size * rows / batch.global_rows
    parts.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    loss = loss.detach()
    stats["loss"] = loss * rows
    return loss, stats, logits_finite


def _all_finite(logits: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not logits:  # no teacher
        return torch.ones((), dtype=torch.bool, device=device)
    total = torch.stack([z.detach().sum(dtype=torch.float32) for z in logits]).sum()
    return torch.isfinite(total)


def _swap_count(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Rows the swap changes, summed over the views."""
    return torch.stack([swap_mask(z, labels, check_targets=False).sum() for z in logits]).sum()


def _check_finite(
    first_bad_step: torch.Tensor,
    first_bad_logits: torch.Tensor,
    epoch: int,
    steps: int,
    run: RunDir,
    config: TrainConfig,
    dist: DistContext,
) -> None:
    first = first_bad_step
    if dist.active:  # the first bad step on any rank; every rank then raises the same error
        never = torch.full_like(first_bad_step, steps)
        first = dist.all_reduce_min(torch.where(first_bad_step < 0, never, first_bad_step))
        first = torch.where(first == steps, -1, first)
    bad = int(first)
    if bad < 0:
        return
    if dist.active:  # the logits of the ranks that failed at that step (a collective on every rank)
        failed = first_bad_step == first
        mine = torch.where(failed, ~first_bad_logits, torch.zeros_like(first_bad_logits))
        first_bad_logits = dist.all_reduce_sum(mine.long()) == 0
    student_ok, teacher_ok = first_bad_logits.tolist()
    kept = (
        f"the last good checkpoint {run.last} (epoch {epoch - 1}) is kept"
        if run.last.exists()
        else "no checkpoint had been written yet"
    )
    raise NonFiniteLossError(
        f"non-finite loss (NaN/inf) at epoch {epoch}, step {bad + 1}/{steps}; training "
        f"stopped and {kept}. {_likely_cause(student_ok, teacher_ok, config)}"
    )


def _likely_cause(student_ok: bool, teacher_ok: bool, config: TrainConfig) -> str:
    """What to blame for a non-finite loss, from which logits were finite at the first bad step."""
    if not student_ok:
        return "The student's logits were not finite: it diverged. Lower the learning rate or try --amp off."
    if not teacher_ok:
        fix = (
            "under --amp fp16 they overflow float16: try --amp bf16 or off"
            if config.amp == "fp16"
            else "check the teacher checkpoint and the input data"
        )
        return f"The teacher's logits were not finite (its weights are checked when it loads); {fix}."
    settings = ", ".join(
        f"loss.{f.name}={getattr(config.loss, f.name)!r}"
        for f in dataclasses.fields(config.loss)
        if "temperature" in f.name
    )
    return (
        "The student's and the teacher's logits were finite, so the loss itself overflowed: the method's "
        f"settings are the cause, not the learning rate; check them{f' ({settings})' if settings else ''}."
    )


def _reduce_sums(sums: dict[str, torch.Tensor], dist: DistContext) -> dict[str, float]:
    """Device sums -> Python floats in one transfer (one sync), summed over the ranks under DDP."""
    keys = list(sums)
    if not keys:
        return {}
    stacked = torch.stack([sums[k].detach().float() for k in keys])
    return dict(zip(keys, dist.all_reduce_sum(stacked).tolist()))
