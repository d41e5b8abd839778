"""Time one training step of KD against one of SLD, side by side: what SLD costs over KD per step, and
count the ATen ops of each step, phase by phase (:mod:`harness.bench.ops`).

The step is the trainer's own: the dataset's augmentation of every view
(:class:`harness.data.resident.DeviceResidentData`), then :func:`harness.train.step.train_step`
(student forward and backward, teacher forward, the loss, the SGD update built by
:func:`harness.train.optim.build_optimizer`), so the ratio is what a run sees, not the loss alone. The
two methods alternate inside each repeat (KD, SLD, KD, SLD, ...) so that a machine that speeds up or
slows down during the measurement affects both alike; the median of the repeats is reported. On a GPU
every clock reading is preceded by a synchronize.

    python -m harness.bench.step               # resnet32x4 -> resnet8x4, batch 64, CPU
    python -m harness.bench.step --device cuda --repeats 50
    python -m harness.bench.step --device cuda --amp bf16 --channels-last --cuda-graphs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.bench.ops import PHASES, OpCounter, OpCounts
from harness.bench.timing import time_interleaved
from harness.config import AMP_MODES, ConfigError, DataConfig, KDConfig, OptimConfig, SLDConfig, TrainConfig
from harness.data.base import Batch
from harness.data.resident import DeviceResidentData
from harness.models import build_model
from harness.train.distributed import DistContext
from harness.train.graphs import CudaGraphs, StepGraph, check_cuda_graphs
from harness.train.methods import METHODS
from harness.train.optim import build_optimizer
from harness.train.step import StepParts, train_step

__all__ = [
    "CIFAR_TRAIN_IMAGES",
    "StepRunner",
    "StepTimes",
    "count_step_ops",
    "measure_step_times",
    "training_step",
]

CIFAR_TRAIN_IMAGES = 50_000  # for the time of a whole run
PAPER_MS_PER_BATCH = 12.0  # what the SLD paper quotes per batch on its GPU


@dataclass(frozen=True)
class StepTimes:
    """Median seconds per training step for KD and SLD, and what follows from them."""

    kd_s: float
    sld_s: float
    batch_size: int
    ops: dict[str, OpCounts] = field(default_factory=dict)  # "kd", "sld" -> one step's ops, when counted

    @property
    def ratio(self) -> float:
        """SLD step time / KD step time (the target is <= 1.03)."""
        return self.sld_s / self.kd_s

    @property
    def kd_images_per_s(self) -> float:
        return self.batch_size / self.kd_s

    @property
    def sld_images_per_s(self) -> float:
        return self.batch_size / self.sld_s

    def run_hours(self, step_s: float, epochs: int = 240) -> float:
        """Hours of training steps in an ``epochs``-epoch CIFAR-100 run at ``step_s`` per step (every
        step counted as a full one; evaluation not included)."""
        return epochs * math.ceil(CIFAR_TRAIN_IMAGES / self.batch_size) * step_s / 3600


@dataclass
class StepRunner:
    """One training step of a fresh student on one fixed random ``uint8`` batch, as a call: the views
    are augmented anew each call, as in training. :func:`training_step` builds it."""

    parts: StepParts
    data: DeviceResidentData
    generator: torch.Generator
    epoch: int

    def next_batch(self) -> Batch:
        return next(self.data.train_batches(1, generator=self.generator))

    def __call__(self) -> None:
        train_step(self.parts, self.next_batch(), epoch=self.epoch)


def measure_step_times(
    *,
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    batch_size: int = 64,
    views: int = 2,
    epoch: int = 151,
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: str = "off",
    channels_last: bool = False,
    cuda_graphs: bool = False,
    teacher_at_once: bool | None = None,
    count_ops: bool = False,
) -> StepTimes:
    """Median time of one training step with KD and with SLD, interleaved, and (``count_ops``) the ops
    of one step of each, counted after the timing.

    Parameters
    ----------
    teacher, student
        Model names (``harness.models.MODELS``); weights are random, which does not change the time.
    batch_size, views
        Images per step and views per image (2: weak + strong, the official SLD setting), the same
        for both methods so only the loss differs.
    epoch
        Epoch passed to the loss; the default 151 has SLD's pseudo-teacher term on (its costlier phase).
    repeats, warmup
        Timed steps per method, after ``warmup`` untimed ones each (with ``cuda_graphs`` the graph's
        own warm-up and recording come first, untimed).
    device, amp, channels_last, cuda_graphs
        Where and how the step runs, as the trainer's config fields of the same names.
    teacher_at_once
        One teacher forward over both views, or one per view; None: as the trainer does on ``device``
        (:func:`harness.train.step.teacher_forward`).
    count_ops
        Also count one more step of each method (:func:`count_step_ops`).

    Returns
    -------
    StepTimes
        With ``ops`` filled in when ``count_ops``.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher_net = build_model(teacher).to(device, memory_format=memory_format).eval().requires_grad_(False)
    runners = {
        method: training_step(
            method,
            teacher_net,
            teacher=teacher,
            student=student,
            batch_size=batch_size,
            views=views,
            epoch=epoch,
            device=device,
            seed=seed,
            amp=amp,
            channels_last=channels_last,
            cuda_graphs=cuda_graphs,
            teacher_at_once=teacher_at_once,
        )
        for method in ("kd", "sld")
    }
    if cuda_graphs:  # warm-up steps and the recording, outside the clock
        for runner in runners.values():
            for _ in range(runner.parts.graph.warmup_steps + 1):
                runner()

    def sync() -> None:
        _sync(device)

    # KD and SLD round-robin, so a change in machine load hits both alike (sld bench's timing core)
    kd_times, sld_times = time_interleaved(
        [(runners["kd"], sync), (runners["sld"], sync)], repeats=repeats, warmup=warmup
    )
    counts = {method: count_step_ops(runner) for method, runner in runners.items()} if count_ops else {}
    kd_s, sld_s = statistics.median(kd_times), statistics.median(sld_times)
    return StepTimes(kd_s=kd_s, sld_s=sld_s, batch_size=batch_size, ops=counts)


def training_step(
    method: str,
    teacher_net: torch.nn.Module,
    *,
    teacher: str,
    student: str,
    batch_size: int = 64,
    views: int = 2,
    epoch: int = 151,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: str = "off",
    channels_last: bool = False,
    cuda_graphs: bool = False,
    teacher_at_once: bool | None = None,
) -> StepRunner:
    """A :class:`StepRunner`: one training step per call of a fresh ``student`` taught by
    ``teacher_net`` (the model named ``teacher``, eval mode, in the memory format asked for) with
    ``method`` ("kd" or "sld", default recipes) on one fixed random ``uint8`` batch.

    Example
    -------
    >>> teacher = build_model("resnet8").eval().requires_grad_(False)
    >>> step = training_step("sld", teacher, teacher="resnet8", student="resnet8", batch_size=8)
    >>> step()  # augment, forward, loss, backward, update
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(
        0, 256, (batch_size, 32, 32, 3), dtype=torch.uint8, generator=generator, device=device
    )
    labels = torch.randint(0, 100, (batch_size,), generator=generator, device=device)
    data = DeviceResidentData(
        images.cpu().numpy(),
        labels.cpu().numpy(),
        images[:2].cpu().numpy(),
        labels[:2].cpu().numpy(),
        num_classes=100,
        device=device,
        batch_size=batch_size,
        views=views,
    )
    config = _config(
        method,
        batch_size,
        views,
        student=student,
        teacher=teacher,
        amp=amp,
        channels_last=channels_last,
        cuda_graphs=cuda_graphs,
    )
    check_cuda_graphs(config, device, DistContext())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = build_model(student).to(device, memory_format=memory_format).train()
    optimizer, _ = build_optimizer(net, config.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    graph = StepGraph(CudaGraphs(device)) if cuda_graphs else None
    parts = StepParts(
        net,
        teacher_net,
        METHODS[method],
        optimizer,
        scaler,
        config,
        graph=graph,
        teacher_at_once=teacher_at_once,
    )
    return StepRunner(parts, data, generator, epoch)


def _config(method: str, batch_size: int, views: int, **fields: Any) -> TrainConfig:
    """The trainer's config of one bench step: ``method``'s default recipe."""
    fields = {"student": "resnet8x4", "teacher": "resnet32x4", **fields}
    return TrainConfig(
        method=method,
        loss=KDConfig() if method == "kd" else SLDConfig(),
        optim=OptimConfig(batch_size=batch_size),
        data=DataConfig(views=views),
        **fields,
    )


def count_step_ops(runner: StepRunner) -> OpCounts:
    """The ATen ops of one more step of ``runner``, per phase of :data:`harness.bench.ops.PHASES`
    (hooks on the student, the teacher, the method and the optimizer mark the phases; backward is
    what autograd's engine runs). Run a step or two first: the first step also creates the
    optimizer's momentum buffers, a graphed step records first.

    Example
    -------
    >>> teacher = build_model("resnet8").eval().requires_grad_(False)
    >>> step = training_step("kd", teacher, teacher="resnet8", student="resnet8", batch_size=8)
    >>> step()
    >>> count_step_ops(step).launching["optimizer"] < 10  # multi-tensor SGD: a few ops for all parameters
    True
    """
    counter = OpCounter()
    with _phase_hooks(runner, counter) as parts:
        with counter:
            with counter.phase("augmentation"):
                batch = runner.next_batch()
            train_step(parts, batch, epoch=runner.epoch)
        _sync(batch.labels.device)
    return counter.counts


@contextmanager
def _phase_hooks(runner: StepRunner, counter: OpCounter) -> Iterator[StepParts]:
    """``runner.parts`` with its method wrapped and hooks on its modules and optimizer that mark the
    phases for ``counter``; everything is removed again on exit."""
    parts = runner.parts
    method = parts.method

    def counted_method(*args: Any, **kwargs: Any) -> Any:
        with counter.phase("loss"):
            return method(*args, **kwargs)

    handles = []
    for module, name in ((parts.student, "student forward"), (parts.teacher, "teacher forward")):
        if module is not None:
            handles.append(module.register_forward_pre_hook(lambda *_, name=name: counter.enter(name)))
            handles.append(module.register_forward_hook(lambda *_: counter.leave()))
    handles.append(parts.optimizer.register_step_pre_hook(lambda *_: counter.enter("optimizer")))
    handles.append(parts.optimizer.register_step_post_hook(lambda *_: counter.leave()))
    try:
        yield dataclasses.replace(parts, method=counted_method)
    finally:
        for handle in handles:
            handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_counts(counts: dict[str, OpCounts]) -> None:
    names = list(counts)
    print("ATen ops per step, all / launching (views, allocations and profiler markers left out):")
    print(f"{'phase':<18}" + "".join(f"{name.upper():>16}" for name in names))
    for phase in PHASES:
        cells = (f"{counts[n].all.get(phase, 0):>8} /{counts[n].launching.get(phase, 0):>6}" for n in names)
        print(f"{phase:<18}{''.join(cells)}")
    totals = (f"{counts[n].total:>8} /{counts[n].total_launching:>6}" for n in names)
    print(f"{'total':<18}{''.join(totals)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--amp", choices=AMP_MODES, default="off")
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay each step as one CUDA graph")
    parser.add_argument(
        "--teacher-forward",
        choices=("auto", "at-once", "per-view"),
        default="auto",
        help="one teacher forward over both views or one per view (auto: per view on the CPU only)",
    )
    parser.add_argument("--no-ops", action="store_true", help="skip the op count")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads; 1 is steadier on a shared machine"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        check_cuda_graphs(
            _config("sld", 2, 2, amp=args.amp, cuda_graphs=args.cuda_graphs),
            torch.device(args.device),
            DistContext(),
        )
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    times = measure_step_times(
        device=args.device,
        repeats=args.repeats,
        batch_size=args.batch_size,
        views=args.views,
        amp=args.amp,
        channels_last=args.channels_last,
        cuda_graphs=args.cuda_graphs,
        teacher_at_once={"auto": None, "at-once": True, "per-view": False}[args.teacher_forward],
        count_ops=not args.no_ops,
    )
    setting = (
        f"amp {args.amp}, {'channels-last' if args.channels_last else 'NCHW'}, "
        + ("CUDA graphs" if args.cuda_graphs else "eager")
        + f", teacher forward {args.teacher_forward}"
    )
    print(f"resnet32x4 -> resnet8x4, batch {args.batch_size}, {args.views} views, {args.device}, {setting}")
    print(f"KD  step {1000 * times.kd_s:8.2f} ms  {times.kd_images_per_s:8.1f} img/s")
    print(
        f"SLD step {1000 * times.sld_s:8.2f} ms  {times.sld_images_per_s:8.1f} img/s"
        f"  (the paper quotes ~{PAPER_MS_PER_BATCH:.0f} ms per batch)"
    )
    print(f"SLD/KD step-time ratio {times.ratio:.3f} (target <= 1.03)")
    print(
        f"240-epoch CIFAR-100 run, training steps only: KD {times.run_hours(times.kd_s):.2f} h, "
        f"SLD {times.run_hours(times.sld_s):.2f} h"
    )
    if times.ops:
        _print_counts(times.ops)
    if args.json is not None:
        record = {
            "device": args.device,
            "batch_size": args.batch_size,
            "views": args.views,
            "amp": args.amp,
            "channels_last": args.channels_last,
            "cuda_graphs": args.cuda_graphs,
            "teacher_forward": args.teacher_forward,
            "kd_ms": 1000 * times.kd_s,
            "sld_ms": 1000 * times.sld_s,
            "ratio": times.ratio,
            "sld_run_hours": times.run_hours(times.sld_s),
            "ops": {m: {"all": dict(c.all), "launching": dict(c.launching)} for m, c in times.ops.items()},
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
