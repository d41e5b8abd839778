"""The training loop: ``train(config, device) -> RunResult``.

Each epoch the dataset (:mod:`harness.train.data`; for CIFAR-100 ``uint8`` images held on the device,
augmented there per batch) yields this rank's views of every global batch; the student runs one forward
per view, the teacher (eval mode) one over all views (on the CPU one per view), the method
(:mod:`harness.train.methods`) sees all of them at once, and one backward follows. Running sums stay on
the device and are read every ``log_every`` steps. After every epoch: evaluation, the checkpoint
(:class:`~harness.train.checkpoint.TrainState`) and the metric record (``metrics.jsonl``), written
through :class:`harness.runs.RunDir`. The loop never calls ``.cuda()``: everything goes ``.to(device)``.

A run owns its directory: the process (rank 0 under DDP) holds :meth:`harness.runs.RunDir.lock` for as
long as it trains. ``last.pt`` is the commit point of an epoch (written first); a resumed run rebuilds
``metrics.jsonl`` and ``best.pt`` from it, so a crash between any two writes leaves nothing that resuming
does not repair, and refuses a teacher file whose SHA-256 is not the one recorded when the run started.

Under ``torchrun`` (``sld train --nproc N``) the same function trains data-parallel: the student is
wrapped in ``DistributedDataParallel``, each rank takes its share of every global batch, sums and
evaluations are all-reduced, and only rank 0 prints and writes (``harness.train.distributed`` says
exactly what is split how). SIGINT/SIGTERM stop a run between steps with a message saying how to resume
(``harness.train.interrupt``).
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from harness.config import ConfigError, TrainConfig, train_config_to_dict, with_overrides
from harness.models import CheckpointError, build_model, load_weights
from harness.runs import RunDir, epoch_record, file_sha256

from .checkpoint import (
    TrainState,
    capture_rng,
    check_teacher,
    load_model_state,
    load_resume_state,
    repair_best,
    restore_rng,
    save_checkpoint,
)
from .console import RunEta, epoch_line, print_config
from .data import load_data
from .device import as_device, float16_slowdown
from .distributed import DistContext, check_global_batch, context
from .errors import NonFiniteLossError
from .evaluate import evaluate
from .graphs import CudaGraphs, StepGraph, check_cuda_graphs
from .interrupt import StopSignals, TrainingInterrupted, interrupted
from .methods import METHODS
from .optim import build_optimizer, load_optimizer_state
from .provenance import environment, utc_now
from .session import Session, log_step
from .step import StepParts, train_epoch
from .trackers import Trackers, make_trackers, run_meta

__all__ = ["NonFiniteLossError", "RunResult", "TrainingInterrupted", "train"]

_SLOW_FP16 = 3.0  # float16_slowdown() above this is emulated float16 (8.5-35x measured): worth a warning


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports (``summary.json``); the per-epoch detail is in ``metrics.jsonl``."""

    out_dir: Path
    epochs: int  # the last epoch trained (== config.optim.epochs when the run finished)
    best_top1: float  # best test top-1 (fraction) over the epochs, and where it was reached
    best_epoch: int
    last_top1: float
    last_top5: float
    last_test_loss: float = math.nan  # mean test cross-entropy of the last epoch
    teacher_top1: float | None = None  # teacher's test top-1 (None for method "ce")
    teacher_train_error: float | None = None  # how often the teacher swap fires on the training set
    history: list[dict[str, Any]] = field(default_factory=list)  # this invocation's metric records


def train(
    config: TrainConfig,
    device: torch.device | str,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Train ``config.student`` with ``config.method`` and return the accuracies.

    Runs data-parallel when a ``torch.distributed`` process group is initialized (``torchrun``; see
    :mod:`harness.train.distributed`): then ``config.optim.batch_size`` is the global batch, and every
    rank returns the same :class:`RunResult`.

    Parameters
    ----------
    config
        The whole run; saved to ``config.out_dir / "config.json"``. ``config.sync_bn`` (CUDA only)
        makes BatchNorm use the global batch's statistics under DDP; ``config.trackers`` names where
        the records also go (:mod:`harness.train.trackers`; rank 0 only). ``run.json`` records each
        session's commit, packages, device and times (:meth:`harness.runs.RunDir.begin_session`).
    device
        Where everything runs (``torch.device("cuda")``, ``"cpu"``, ``"cuda:1"``, ...; checked by
        :func:`harness.train.device.as_device`); under DDP this rank's device.
    resume
        Continue from ``config.out_dir / "last.pt"``; the checkpoint's config must match ``config``
        except in where/how-fast fields (output dir, logging interval, compile, data location), and
        the teacher file must be the one the run started with (same SHA-256). The world size may
        differ. ``metrics.jsonl`` and ``best.pt`` are repaired from ``last.pt`` first (a message says
        what was repaired); a run killed after its last epoch but before its summary is finished
        without training. Without ``resume`` an existing ``last.pt`` there is an error, never
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
        Bad configuration or device, missing data or teacher, a teacher with non-finite weights or
        another than the run started with, unreadable or mismatched checkpoints, a tracker whose
        package is missing or that cannot start.
    harness.runs.RunLockedError
        Another process trains in ``config.out_dir``; the message names its PID.
    NonFiniteLossError
        The loss became NaN/inf; the message names the epoch and step; ``last.pt`` keeps the last good epoch.
    TrainingInterrupted
        SIGINT or SIGTERM arrived; the run stopped between steps, ``last.pt`` holds the last complete epoch.
    harness.train.checkpoint.CheckpointWriteError
        A checkpoint could not be written (disk full, ...); the previous one is intact.

    Example
    -------
    >>> result = train(TrainConfig(student="resnet8", method="ce"), "cpu")  # doctest: +SKIP
    """
    device = as_device(device)  # "cpu", "cuda:1", ... or a torch.device
    dist = context(device)
    if dist.active:
        check_global_batch(config.optim.batch_size, dist.world_size)
    if config.sync_bn and device.type != "cuda":
        raise ConfigError(
            "sync_bn (--sync-bn) needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)"
        )
    check_cuda_graphs(config, device, dist)
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be an epoch >= 1; got {stop_after}")
    # Metric lines stay one line each in logs; the other ranks compute the same numbers silently.
    console = console or Console(soft_wrap=True)
    if not dist.is_main:
        console = Console(quiet=True)
    # Only rank 0 tracks; a tracker's missing package stops the run here, before anything is loaded.
    trackers = make_trackers(config.trackers) if dist.is_main else Trackers()
    trackers.console = console
    if config.amp == "fp16" and device.type == "cpu" and (slowdown := float16_slowdown()) > _SLOW_FP16:
        console.print(
            f"[bold yellow]warning:[/bold yellow] --amp fp16 on this CPU: a float16 convolution ran "
            f"{slowdown:.0f}x slower than float32 (float16 is emulated here); --amp off trains faster"
        )
    run = RunDir(config.out_dir)
    # One process trains in a directory; held until this call returns (the kernel drops it if we die).
    lock = dist.on_main(run.lock)
    try:
        return _train_in(run, config, device, dist, console, resume, on_epoch_end, stop_after, trackers)
    finally:
        if lock is not None:
            lock.release()


def _train_in(
    run: RunDir,
    config: TrainConfig,
    device: torch.device,
    dist: DistContext,
    console: Console,
    resume: bool,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    stop_after: int | None,
    trackers: Trackers,
) -> RunResult:
    """:func:`train`'s body, run while holding the directory's lock."""
    if run.last.exists() and not resume:
        raise ConfigError(
            f"{run.path} already holds a run ({run.last.name}); pass --resume to continue "
            "it or choose another --out directory"
        )
    resumed = load_resume_state(run, config) if resume else None
    if resumed is None:
        _seed_everything(config.seed)  # before building the model: its initialization draws from it
    elif config.data.classes is None:
        saved_classes = resumed.config["data"].get("classes")
        config = with_overrides(config, {"data.classes": tuple(saved_classes) if saved_classes else None})

    data = load_data(config.data, device, batch_size=config.optim.batch_size, seed=config.seed)
    if config.data.dataset != "cifar100" and config.data.classes is None:
        # Recorded in config.json, so that evaluation, --resume and --config replays see this mapping.
        config = with_overrides(config, {"data.classes": data.classes})
    student = build_model(config.student, num_classes=data.num_classes, **_model_options(config)).to(
        device, memory_format=_memory_format(config)
    )
    if config.sync_bn:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)  # same state_dict keys
    teacher, teacher_sha256 = _load_teacher(config, data.num_classes, device)
    if resumed is not None:
        check_teacher(resumed, teacher_sha256, config.teacher_checkpoint, run)
    optimizer, scheduler = build_optimizer(student, config.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    start_epoch, best_top1, best_epoch = 1, -1.0, 0
    if resumed is not None:
        load_model_state(student, resumed.model, run.last)
        load_optimizer_state(optimizer, resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
        scaler.load_state_dict(resumed.scaler)
        restore_rng(resumed.rng, generator)
        start_epoch, best_top1, best_epoch = resumed.epoch + 1, resumed.best_acc, resumed.best_epoch

    def prepare_directory() -> None:
        """Make the directory agree with last.pt: its records, its best epoch, no stale temp files."""
        run.path.mkdir(parents=True, exist_ok=True)
        run.remove_partial_writes()  # temp files of a write that a kill -9 cut short (we hold the lock)
        if resumed is None:
            run.write_metrics([])  # records of an earlier attempt that never wrote a checkpoint
            repairs: list[str | None] = []
        else:
            repairs = [run.recover_metrics(resumed.epoch, resumed.history), repair_best(run, resumed)]
        for message in filter(None, repairs):
            console.print(f"[yellow]{message}[/yellow]")
        run.write_config(config)

    dist.on_main(prepare_directory)
    if resumed is None:
        records: list[dict[str, Any]] = []
    elif resumed.history is not None:
        records = list(resumed.history)
    else:  # a checkpoint of an older version keeps no records: the repaired file's (rank 0 writes them)
        records = dist.on_main(run.read_metrics) or []
    print_config(console, config, device, dist, resume_from=start_epoch - 1 if resumed else None)
    begin = functools.partial(
        run.begin_session,
        environment(device, world_size=dist.world_size),
        started=utc_now(),
        first_epoch=start_epoch,
        resumed=resumed is not None,
    )
    info = dist.on_main(begin)
    meta = run_meta(
        run,
        config,
        first_epoch=start_epoch,
        steps_per_epoch=data.steps_per_epoch(dist.world_size),
        started=info["started"] if info else None,
    )
    if trackers:
        console.print(f"tracking to {', '.join(trackers.names)} as {meta.name}")
    last_epoch = config.optim.epochs if stop_after is None else min(stop_after, config.optim.epochs)
    with Session(run, dist, console, trackers, meta, last_epoch=start_epoch - 1) as session:
        evaluate_on = functools.partial(
            evaluate,
            data=data,
            amp=config.amp,
            channels_last=config.channels_last,
            dist=dist,
        )
        teacher_top1 = teacher_train_error = None
        if teacher is not None:
            teacher_top1 = evaluate_on(teacher, split="test")[0]
            teacher_train_error = 1.0 - evaluate_on(teacher, split="train")[0]
            # Written now, not only in summary.json at the end: a report can show it for unfinished runs.
            measured = {"teacher": config.teacher, "teacher_checkpoint": config.teacher_checkpoint,
                        "teacher_sha256": teacher_sha256, "teacher_top1": teacher_top1,
                        "teacher_train_error": teacher_train_error}
            dist.on_main(functools.partial(run.write_teacher, measured))
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
        graph = StepGraph(CudaGraphs(device)) if config.cuda_graphs else None
        parts = StepParts(forward, teacher, METHODS[config.method], optimizer, scaler, config, dist, graph)
        history: list[dict[str, Any]] = []
        eta = RunEta(config.optim.epochs)  # the whole run, also when --stop-after ends this session sooner
        with StopSignals() as stop:
            for epoch in range(start_epoch, last_epoch + 1):
                lr = optimizer.param_groups[0]["lr"]
                started = time.perf_counter()
                sums = train_epoch(
                    parts, data, epoch, generator, console, run, stop, eta=eta,
                    on_log=functools.partial(log_step, trackers, epoch) if trackers else None,
                )
                train_time = time.perf_counter() - started
                scheduler.step()
                # every rank evaluates (and rank 0 saves) rank 0's BN statistics
                dist.broadcast_buffers(student)
                top1, top5, test_loss = evaluate_on(eval_model, split="test")
                if top1 > best_top1:
                    best_top1, best_epoch = top1, epoch
                record = epoch_record(
                    epoch=epoch,
                    lr=lr,
                    sums=sums,
                    views=config.data.views,
                    test=(top1, top5),
                    test_loss=test_loss,
                    best=best_top1,
                    epoch_time_s=time.perf_counter() - started,
                    images_per_s=sums["rows"] / train_time,
                )
                state = TrainState(
                    model=student.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(),
                    epoch=epoch,
                    best_acc=best_top1,
                    best_epoch=best_epoch,
                    config=train_config_to_dict(config),
                    rng=capture_rng(generator),
                    world_size=dist.world_size,
                    history=(records := [*records, record]),
                    teacher_sha256=teacher_sha256,
                )
                is_best = best_epoch == epoch
                dist.on_main(functools.partial(_write_epoch, run, records, state.to_payload(), is_best))
                session.last_epoch = epoch
                trackers.log_epoch(record)  # after last.pt: a tracker never shows an uncommitted epoch
                eta.epoch_finished(time.perf_counter() - started)
                left = eta.remaining(epoch=epoch, done=1.0, elapsed=0.0)
                console.print(epoch_line(record, config.optim.epochs, run_left=left))
                history.append(record)
                if on_epoch_end is not None:
                    on_epoch_end(record)
                if dist.any(stop.received is not None) and epoch < config.optim.epochs:
                    raise interrupted(stop.received, run, epoch, config.optim.epochs, between_epochs=True)

        last = records[-1] if records else {}
        result = RunResult(
            out_dir=run.path,
            epochs=int(last.get("epoch", start_epoch - 1)),
            best_top1=best_top1,
            best_epoch=best_epoch,
            last_top1=last.get("test_top1", math.nan),
            last_top5=last.get("test_top5", math.nan),
            last_test_loss=last.get("test_loss", math.nan),
            teacher_top1=teacher_top1,
            teacher_train_error=teacher_train_error,
            history=history,
        )
        session.finished = result.epochs >= config.optim.epochs
        if not session.finished:
            console.print(
                f"[bold]stopped after epoch {result.epochs}/{config.optim.epochs} as asked[/bold]; "
                f"continue with: sld train --out {run.path} --resume"
            )
            return result
        summary = {k: v for k, v in asdict(result).items() if k != "history"}
        dist.on_main(functools.partial(run.write_summary, summary))
        console.print(
            f"[bold]best test top-1 {100 * best_top1:.2f}% (epoch {best_epoch}), "
            f"last {100 * result.last_top1:.2f}%[/bold] -> {run.path}"
        )
        return result


def _write_epoch(
    run: RunDir, records: list[dict[str, Any]], payload: dict[str, Any], is_best: bool
) -> None:
    # last.pt is the commit point: it carries the records and its best epoch, so a crash after it and
    # before best.pt or metrics.jsonl is repaired on resume (repair_best, recover_metrics), and a crash
    # before it leaves the previous epoch's set whole. metrics.jsonl never shows an uncommitted epoch.
    save_checkpoint(run.last, payload)
    if is_best:
        save_checkpoint(run.best, payload)
    run.write_metrics(records)


# --------------------------------------------------------------------------------------------------- set-up


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global state, for code that draws from np.random.*)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _load_teacher(
    config: TrainConfig, num_classes: int, device: torch.device
) -> tuple[torch.nn.Module | None, str | None]:
    """The teacher in eval mode, no grad, and its file's SHA-256 (None, None for method ``ce``)."""
    if config.method == "ce":
        return None, None
    if not config.teacher_checkpoint:
        raise ConfigError(f"method {config.method!r} needs a teacher checkpoint (config.teacher_checkpoint)")
    teacher = build_model(config.teacher, num_classes=num_classes)
    load_weights(teacher, config.teacher_checkpoint)  # checks the file first: its errors name it best
    sha256 = file_sha256(config.teacher_checkpoint)
    state = teacher.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"teacher checkpoint {config.teacher_checkpoint} holds NaN or infinite values in {len(bad)} "
            f"tensor(s) ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): it cannot teach; "
            "retrain or re-download it"
        )
    teacher = teacher.to(device, memory_format=_memory_format(config)).eval()
    teacher.requires_grad_(False)  # no grads are ever taken; also skips autograd bookkeeping
    return teacher, sha256


def _model_options(config: TrainConfig) -> dict[str, Any]:
    """Constructor keywords of the student that the config sets (the WRN BatchNorm quirk)."""
    return {"official_bn_updates": config.official_wrn_bn} if config.student.startswith("wrn_") else {}


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format
