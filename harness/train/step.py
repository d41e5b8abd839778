"""One epoch and one optimizer step of training (:func:`train_epoch`, :func:`train_step`), and what
every step uses (:class:`StepParts`). Nothing here waits for the device except at the log steps, the
first step of an epoch and every ``log_every``-th (progress, the step scalars of the trackers, the
non-finite check, under DDP the stop agreement)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from rich.console import Console

from harness.config import TrainConfig
from harness.data.base import Batch, TrainData
from harness.runs import RunDir

from .console import NO_LOSS_YET, RunEta, duration, progress
from .distributed import DistContext
from .errors import NonFiniteLossError
from .evaluate import autocast
from .graphs import StepGraph
from .interrupt import StopSignals, interrupted
from .methods import Method, StepLogits, processed_rows

__all__ = ["StepParts", "StepStats", "step_stats", "teacher_forward", "train_epoch", "train_step"]


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
    graph: StepGraph | None = None  # --cuda-graphs: full-batch steps replay one recorded CUDA graph
    teacher_at_once: bool | None = None  # one teacher forward over all views; None: except on the CPU


# The record's order of the counts (dicts keep it: metrics.jsonl lists the keys in it).
_COUNT_ORDER = ("teacher_swaps", "teacher_processed", "student_swaps")


@dataclass(frozen=True)
class StepStats:
    """A step's sums for the epoch record (or an epoch's, added up with ``+``) in two device vectors,
    so that an epoch adds two tensors per step however many terms and views there are.
    :meth:`as_dict` names them.

    Example
    -------
    >>> s = StepStats(("ce", "loss"), torch.tensor([4.0, 4.0]), ("student_swaps",), torch.tensor([3]), 8)
    >>> {name: value.item() for name, value in (s + s).as_dict().items()}
    {'ce': 8.0, 'student_swaps': 6, 'train_correct': 10, 'loss': 8.0}
    """

    names: tuple[str, ...]  # of ``sums``: the method's terms, then "loss"
    sums: torch.Tensor  # each term and the total loss times the rows, in the terms' dtype
    blocks: tuple[str, ...]  # what each entry of ``counts`` counts (the first: the student's weak view)
    counts: torch.Tensor  # int64: per view, rows the student / teacher gets wrong, the conditional swap swaps
    rows: int  # this rank's rows

    @property
    def loss(self) -> torch.Tensor:
        """The total loss times the rows (0-d, a view of ``sums``)."""
        return self.sums[-1]

    def clone(self) -> StepStats:
        """A copy that owns its tensors (a graphed step overwrites its outputs at the next step)."""
        return dataclasses.replace(self, sums=self.sums.clone(), counts=self.counts.clone())

    def __add__(self, other: StepStats) -> StepStats:
        if (other.names, other.blocks) != (self.names, self.blocks):
            raise ValueError(
                f"cannot add the sums of {other.names + other.blocks} to those of {self.names + self.blocks}"
            )
        return dataclasses.replace(
            self, sums=self.sums + other.sums, counts=self.counts + other.counts, rows=self.rows + other.rows
        )

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Named 0-d device tensors, what :func:`harness.runs.epoch_record` reads (after the transfer):
        every term, the swap counts over all views, ``train_correct`` (the weak view's hits), ``loss``."""
        named = dict(zip(self.names[:-1], self.sums.unbind()))
        for name in _COUNT_ORDER:
            where = [i for i, block in enumerate(self.blocks) if block == name]
            if where:  # one block per view, side by side
                named[name] = self.counts[where[0] : where[-1] + 1].sum()
        # train accuracy on the weak view (the first rows), the one closest to the test images
        named["train_correct"] = self.rows - self.counts[0]
        named["loss"] = self.loss
        return named


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
    sums: StepStats | None = None
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
            # clone: a graphed step overwrites its outputs at the next step
            sums = stats.clone() if sums is None else sums + stats
            if on_log is not None:
                window_loss = stats.loss.clone() if window_loss is None else window_loss + stats.loss
            rows += batch.global_rows
            local_rows += batch.labels.shape[0]
            # loss - loss is NaN exactly when the loss is not finite: two ops where ~isfinite takes five
            newly_bad = (first_bad_step < 0) & ((loss - loss) != 0)
            first_bad_step = torch.where(newly_bad, step, first_bad_step)
            first_bad_logits = torch.where(newly_bad, logits_finite, first_bad_logits)
            at_log_step = step == 0 or (step + 1) % config.log_every == 0
            if at_log_step:  # a sync: the first step, then every log_every steps
                _check_finite(first_bad_step, first_bad_logits, epoch, steps, run, config, dist)
                if window_loss is None:
                    loss_sum = float(sums.loss)
                else:  # both in one transfer: the trackers' step loss costs no extra sync
                    loss_sum, window_sum = torch.stack([sums.loss, window_loss]).tolist()
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
    return {**_reduce_sums({} if sums is None else sums.as_dict(), dist), "rows": rows}


def train_step(parts: StepParts, batch: Batch, *, epoch: int) -> tuple[torch.Tensor, StepStats, torch.Tensor]:
    """One optimizer step on this rank's rows of one global batch: the student's logits of every view
    (one forward per view: BatchNorm normalizes each view with its own statistics, as officially), the
    teacher's in one forward over all views off the CPU (:func:`teacher_forward`), the method's loss
    terms, one backward, one multi-tensor SGD update. Nothing here waits for the device.

    With ``parts.graph`` (``--cuda-graphs``) every full batch replays one recorded CUDA graph of this
    step (:class:`harness.train.graphs.StepGraph`); a short batch runs eagerly.

    Under DDP the loss is weighted by ``world_size * rows / global_rows``: DDP averages gradients over
    ranks, and this makes that the global batch mean (exactly 1 when the shards are equal, i.e. every
    batch but maybe the last).

    Returns
    -------
    (loss, stats, logits_finite)
        This rank's detached total loss (0-d, before the DDP weight); this step's device-side sums
        for the epoch record (:class:`StepStats`: every term times the rows trained on, the rows each
        model gets wrong per view (and, for the conditional swap, the rows it swaps), whence swap
        counts and correct weak-view predictions); and whether the student's and the teacher's logits
        were all finite (bool, (2,)), which says what to blame when the loss is not. A graphed step
        returns the same tensors every time and the next step overwrites them: copy what you keep.
    """
    rows = batch.global_rows
    if parts.graph is None or rows != parts.config.optim.batch_size:
        return _step(parts, batch.views, batch.labels, global_rows=rows, epoch=epoch)

    def step(*tensors: torch.Tensor) -> tuple[torch.Tensor, StepStats, torch.Tensor]:
        return _step(parts, tensors[:-1], tensors[-1], global_rows=rows, epoch=epoch)

    # The epoch and the learning rates are Python numbers that the recorded kernels hold as constants.
    lrs = tuple(group["lr"] for group in parts.optimizer.param_groups)
    return parts.graph.run(step, (*batch.views, batch.labels), key=(epoch, lrs))


def teacher_forward(
    teacher: torch.nn.Module, views: Sequence[torch.Tensor], *, at_once: bool | None = None
) -> torch.Tensor:
    """The teacher's logits of every view, view after view along the rows: ``(len(views) * B, C)``.

    In eval mode a network's rows do not interact (BatchNorm uses its running statistics), so one
    forward over the views concatenated gives the logits of one forward per view with half the
    launches; on the CPU they are bit-identical (tests/test_step.py), on CUDA cuDNN may pick another
    algorithm for the larger batch and round differently. A teacher in training mode (its BatchNorm
    would mix the views) runs one forward per view.

    Parameters
    ----------
    teacher
        Any module mapping ``(B, ...)`` inputs to ``(B, C)`` logits.
    views
        Inputs of equal shape and memory format (``cat`` keeps channels-last).
    at_once
        One forward over all views (default on every device but the CPU) or one per view (default on
        the CPU, where launches cost next to nothing and the doubled batch ran ~25 % slower: its
        activations pass 32 MiB, which glibc's malloc maps afresh, page fault by page fault, at every
        call; benchmarks/RESULTS.md).

    Returns
    -------
    Tensor, shape (len(views) * B, C)

    Example
    -------
    >>> net = torch.nn.Linear(4, 3).eval()
    >>> weak, strong = torch.randn(2, 4), torch.randn(2, 4)
    >>> together = teacher_forward(net, [weak, strong], at_once=True)
    >>> torch.equal(together, torch.cat([net(weak), net(strong)]))
    True
    """
    if at_once is None:
        at_once = views[0].device.type != "cpu"
    if len(views) == 1:
        return teacher(views[0])
    if teacher.training or not at_once:
        return torch.cat([teacher(x) for x in views])
    return teacher(torch.cat(list(views)))


def _step(
    parts: StepParts,
    views: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    global_rows: int,
    epoch: int,
) -> tuple[torch.Tensor, StepStats, torch.Tensor]:
    config = parts.config
    rows = labels.shape[0]
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    parts.optimizer.zero_grad(set_to_none=True)  # frees the grads instead of writing zeros into them
    xs = [view.contiguous(memory_format=memory_format) for view in views]
    # Without autocast's cast cache a weight is cast anew for each view, as one region per view did:
    # a shared cast would sum both views' weight gradients in bf16 before the float32 update, and a
    # CUDA graph cannot hold the cache (it lives outside the graph's memory).
    with autocast(config.amp, labels.device, cache=False):
        students = tuple(parts.student(x) for x in xs)
        if parts.teacher is not None:
            with torch.no_grad():
                teacher_rows = teacher_forward(parts.teacher, xs, at_once=parts.teacher_at_once)
    teachers = teacher_rows.split(rows) if parts.teacher is not None else None
    terms = parts.method(StepLogits(students, teachers, labels), epoch=epoch, config=config.loss)
    losses = [value for name, value in terms.items() if name.startswith("loss")]
    loss = sum(losses[1:], losses[0]) if losses else torch.zeros((), device=labels.device)
    if parts.teacher is None:
        teacher_rows = processed = None
    else:  # the conditional swap: the rows it swaps, a subset of the swap's (None for the others)
        processed = processed_rows(config.loss, teacher_rows, labels)
    stats, logits_finite = step_stats(terms, loss, students, teacher_rows, labels, processed=processed)
    weight = parts.dist.world_size * rows / global_rows
    parts.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return loss.detach(), stats, logits_finite


def step_stats(
    terms: dict[str, torch.Tensor],
    loss: torch.Tensor,
    students: Sequence[torch.Tensor],
    teacher_rows: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    processed: torch.Tensor | None = None,
) -> tuple[StepStats, torch.Tensor]:
    """One step's sums for the epoch record and whether its logits were finite, in ten ops or so
    whatever the number of terms and views (on a GPU each is a launch, every step).

    Parameters
    ----------
    terms
        The method's terms, 0-d tensors of one dtype (float32 for float32 and half-precision logits).
    loss
        The total loss (0-d).
    students
        The student's logits, ``(B, C)`` per view.
    teacher_rows
        The teacher's logits of every view along the rows, ``(len(students) * B, C)``; None without a teacher.
    labels
        int64 ``(B,)`` in ``[0, C)`` (checked when the data loads, so not clamped here).
    processed
        Boolean ``(len(students) * B,)``: the rows the conditional swap changes, or None.

    Returns
    -------
    (stats, logits_finite)
        :class:`StepStats`; and whether the student's and the teacher's logits were all finite (bool,
        (2,): ``[student, teacher]``; True for a missing teacher). One float32 sum per model is finite
        exactly when every logit is (or the sum overflows: divergence too), and ``s - s == 0`` tells
        that in two ops where ``isfinite`` takes four (``inf - inf`` and ``nan - nan`` are NaN).
    """
    rows, views = labels.shape[0], len(students)
    models = [*students, teacher_rows] if teacher_rows is not None else list(students)
    blocks = ("student_swaps",) * views + (("teacher_swaps",) * views if teacher_rows is not None else ())
    with torch.no_grad():
        names = (*(name for name in terms if name != "loss"), "loss")
        # One multiplication for all terms: each entry is bit for bit the term times the rows.
        sums = torch.stack([*(terms[name] for name in names[:-1]), loss]) * rows
        # Every model's logits of every view along the rows (the student's first), in blocks of B rows:
        # one argmax and one comparison for all. cat upcasts to a common dtype, which keeps the argmax.
        logits = torch.cat(models) if len(models) > 1 else models[0]
        wrong = logits.argmax(1).view(-1, rows) != labels
        if processed is not None:
            wrong = torch.cat([wrong, processed.view(views, rows)])
            blocks += ("teacher_processed",) * views
        counts = wrong.sum(1)  # int64 per block: exact however many steps are added up
        # the student's and the teacher's half of the rows (both are views * B rows of C logits)
        totals = logits.view(2 if teacher_rows is not None else 1, -1).sum(1, dtype=torch.float32)
        drift = totals - totals
        if teacher_rows is None:
            drift = torch.nn.functional.pad(drift, (0, 1))  # a missing teacher counts as finite
        logits_finite = drift == 0
    return StepStats(names, sums, blocks, counts, rows), logits_finite


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
