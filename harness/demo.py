"""``sld demo``: a real distillation that runs offline on a laptop CPU in well under a minute.

Data: scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``; 1797 images, 10
classes, shipped inside the package, so nothing is downloaded), one fixed train/test split. A small CNN
teacher is trained briefly with cross-entropy; then, for each seed, a narrow MLP student is trained from
the same initialization and batch order with each method of ``harness.train.methods`` (``ce``, ``kd``,
``sld``): the losses are the trainer's, and SLD goes through ``backends.sld_loss``.

The schedule is the official 240-epoch CIFAR-100 recipe scaled to the run: SGD (lr 0.05, momentum 0.9,
weight decay 5e-4, batch 64) with lr x0.1 at 150/240, 180/240 and 210/240 of the epochs, and SLD's
pseudo-teacher joining after ``gamma = 150/240`` of them, so that it takes part in a short run too.
Every method gets the same recipe; the numbers are whatever they come out as.

``run_cifar_demo`` runs the same comparison on real CIFAR-100 (from the local cache only) through the
full trainer, ``harness.train.loop.train``, with a pair's official recipe on a short schedule.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.table import Table
from torch import nn

from harness.config import CEConfig, DataConfig, KDConfig, OptimConfig, SLDConfig, TrainConfig
from harness.data.resident import epoch_batches
from harness.recipes import pair_config
from harness.train.methods import METHODS, StepLogits
from sld_core import swap_mask

__all__ = [
    "DEMO_METHODS",
    "DemoConfig",
    "DemoResult",
    "MethodResult",
    "results_table",
    "run_cifar_demo",
    "run_digits_demo",
    "scaled_schedule",
]

DEMO_METHODS = ("ce", "kd", "sld")
_OFFICIAL_EPOCHS = 240
_OFFICIAL_GAMMA = 150
_OFFICIAL_MILESTONES = (150, 180, 210)
_DIGITS_CLASSES = 10


@dataclass(frozen=True)
class DemoConfig:
    """What ``sld demo`` runs. The defaults take well under a minute on two CPU cores (digits)."""

    seeds: int = 3  # seeds 0..seeds-1: one student init and batch order each, shared by all methods
    epochs: int = 40  # student epochs; the 240-epoch schedule (lr steps, gamma) is scaled to this
    teacher_epochs: int = 5  # "briefly": a few seconds, and ~98% test accuracy
    student_hidden: int = 16  # a narrow MLP, so the student has something to learn from the teacher
    test_fraction: float = 1 / 3  # of the 1797 digits; one fixed split for every seed and method
    cifar_pair: str = "resnet56-resnet20"  # --cifar: the cheapest of the 12 official pairs

    def __post_init__(self) -> None:
        for name in ("seeds", "epochs", "teacher_epochs", "student_hidden"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1); got {self.test_fraction!r}")


def scaled_schedule(epochs: int) -> tuple[int, tuple[int, ...]]:
    """SLD's ``gamma`` and the lr milestones of the official 240-epoch recipe, scaled to ``epochs``.

    >>> scaled_schedule(240)
    (150, (150, 180, 210))
    >>> scaled_schedule(40)
    (25, (25, 30, 35))
    >>> scaled_schedule(4)
    (3, (3, 4))
    """

    def scale(epoch: int) -> int:
        return max(1, math.floor(epochs * epoch / _OFFICIAL_EPOCHS + 0.5))  # halves round up, not to even

    return scale(_OFFICIAL_GAMMA), tuple(sorted({scale(m) for m in _OFFICIAL_MILESTONES}))


def _method_config(method: str, gamma: int) -> Any:
    # mdistiller's KD defaults and SLD's official loss settings; only SLD's gamma follows the run length.
    return {"ce": CEConfig(), "kd": KDConfig(), "sld": SLDConfig(gamma=gamma)}[method]


@dataclass(frozen=True)
class MethodResult:
    """Test accuracies (fractions) of one method, one per seed, in seed order."""

    method: str
    accuracies: tuple[float, ...]
    seconds: float  # training time summed over the seeds

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the seeds; ``None`` for a single seed."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else None


@dataclass(frozen=True)
class DemoResult:
    """Everything ``sld demo`` reports (``to_json`` is what ``--json`` writes)."""

    dataset: str
    teacher: str
    student: str
    seeds: tuple[int, ...]
    epochs: int
    teacher_epochs: int
    gamma: int
    teacher_accuracy: float
    teacher_train_error: float  # how often the teacher swap fires on the training set
    methods: dict[str, MethodResult]
    wall_time_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "teacher": self.teacher,
            "student": self.student,
            "seeds": list(self.seeds),
            "epochs": self.epochs,
            "teacher_epochs": self.teacher_epochs,
            "sld_gamma": self.gamma,
            "teacher_test_accuracy": self.teacher_accuracy,
            "teacher_train_error": self.teacher_train_error,
            "methods": {
                name: {
                    "test_accuracy": list(r.accuracies),
                    "mean": r.mean,
                    "std": r.std,
                    "train_time_s": r.seconds,
                }
                for name, r in self.methods.items()
            },
            "wall_time_s": self.wall_time_s,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------------------ digits (offline)


@dataclass(frozen=True)
class _Digits:
    train_x: torch.Tensor  # float32 (N, 1, 8, 8) in [0, 1]
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor


def _load_digits(test_fraction: float) -> _Digits:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))  # fixed split, independent of the run's seeds
    images = torch.tensor(x[order] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)  # pixels count 0..16
    labels = torch.tensor(y[order], dtype=torch.long)
    n_test = int(len(labels) * test_fraction)
    return _Digits(images[n_test:], labels[n_test:], images[:n_test], labels[:n_test])


def _digits_teacher() -> nn.Module:
    """A small CNN (~150k parameters): the wide, accurate model."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
        nn.Linear(128, _DIGITS_CLASSES),
    )  # fmt: skip


def _digits_student(hidden: int) -> nn.Module:
    """A one-hidden-layer MLP on the raw pixels: the narrow model."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, _DIGITS_CLASSES),
    )


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on ``count`` intra-op threads inside the block, restored after. Models this small spend
    longer synchronizing threads than computing: on a busy 2-core machine a teacher step took ~20x
    longer with 2 threads than with 1 (measured); the tests use it for the same reason."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit(
    model: nn.Module,
    method: str,
    loss_config: Any,
    data: _Digits,
    teacher_logits: torch.Tensor | None,
    optim: OptimConfig,
    seed: int,
) -> nn.Module:
    """Train ``model`` with ``METHODS[method]`` the way ``harness.train.loop`` does: seeded batches, the
    ``loss*`` entries summed, SGD with momentum and weight decay, multistep lr stepped per epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(optim.lr_milestones), optim.lr_decay)
    loss_fn = METHODS[method]
    model.train()
    for epoch in range(1, optim.epochs + 1):  # the methods count epochs from 1
        for index in epoch_batches(len(data.train_y), optim.batch_size, generator):
            logits = model(data.train_x[index])
            teacher = None if teacher_logits is None else (teacher_logits[index],)
            step = StepLogits((logits,), teacher, data.train_y[index])
            terms = loss_fn(step, epoch=epoch, config=loss_config)
            loss = sum(value for name, value in terms.items() if name.startswith("loss"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model.eval()(images).argmax(dim=1) == labels).double().mean().item()


def run_digits_demo(config: DemoConfig | None = None, *, console: Console | None = None) -> DemoResult:
    """Train the digits teacher, then every method of :data:`DEMO_METHODS` for every seed; on the CPU.

    Parameters
    ----------
    config
        Seeds, epochs and model sizes (default :class:`DemoConfig`).
    console
        Where progress lines go (default: a new stdout console).

    Returns
    -------
    DemoResult
        Test accuracies per method and seed, the teacher's test accuracy and training-set error rate.
    """
    config = DemoConfig() if config is None else config
    console = console or Console()
    started = time.perf_counter()
    gamma, milestones = scaled_schedule(config.epochs)
    optim = OptimConfig(epochs=config.epochs, lr_milestones=milestones)
    teacher_optim = replace(
        optim, epochs=config.teacher_epochs, lr_milestones=scaled_schedule(config.teacher_epochs)[1]
    )
    data = _load_digits(config.test_fraction)
    seeds = tuple(range(config.seeds))
    with torch_threads(1):
        torch.manual_seed(0)  # one teacher for every seed, as with a published checkpoint
        teacher = _fit(_digits_teacher(), "ce", CEConfig(), data, None, teacher_optim, seed=0)
        with torch.no_grad():
            teacher_logits = teacher(data.train_x)  # fixed: no augmentation, so computed once
        teacher_accuracy = _accuracy(teacher, data.test_x, data.test_y)
        teacher_train_error = swap_mask(teacher_logits, data.train_y).double().mean().item()
        console.print(
            f"teacher (CNN, {config.teacher_epochs} epochs of CE): test accuracy "
            f"{100 * teacher_accuracy:.2f}%, training-set error {100 * teacher_train_error:.2f}%"
        )
        accuracies: dict[str, list[float]] = {m: [] for m in DEMO_METHODS}
        seconds = dict.fromkeys(DEMO_METHODS, 0.0)
        for seed in seeds:
            for method in DEMO_METHODS:
                torch.manual_seed(seed)  # the same student initialization for every method
                tic = time.perf_counter()
                student = _fit(
                    _digits_student(config.student_hidden),
                    method,
                    _method_config(method, gamma),
                    data,
                    teacher_logits,
                    optim,
                    seed,
                )
                seconds[method] += time.perf_counter() - tic
                accuracies[method].append(_accuracy(student, data.test_x, data.test_y))
                console.print(f"  seed {seed}  {method:<4} test accuracy {100 * accuracies[method][-1]:.2f}%")
    return DemoResult(
        dataset=f"scikit-learn digits (8x8; {len(data.train_y)} train / {len(data.test_y)} test)",
        teacher="CNN",
        student=f"MLP-{config.student_hidden}",
        seeds=seeds,
        epochs=config.epochs,
        teacher_epochs=config.teacher_epochs,
        gamma=gamma,
        teacher_accuracy=teacher_accuracy,
        teacher_train_error=teacher_train_error,
        methods={m: MethodResult(m, tuple(accuracies[m]), seconds[m]) for m in DEMO_METHODS},
        wall_time_s=time.perf_counter() - started,
        notes=_schedule_notes(config.epochs, gamma, milestones),
    )


def _schedule_notes(epochs: int, gamma: int, milestones: tuple[int, ...]) -> tuple[str, ...]:
    joins = (
        f"the pseudo-teacher joins at epoch {gamma + 1}"
        if gamma < epochs
        else "too short a run for the pseudo-teacher to join"
    )
    return (
        f"SLD gamma = {gamma}, scaled from the official 150 of 240 epochs to 150/240 of {epochs} so that the "
        f"pseudo-teacher takes part in a short run: {joins}",
        f"every method: the official recipe scaled to {epochs} epochs, lr x0.1 after epochs "
        f"{', '.join(map(str, milestones))}",
    )


# --------------------------------------------------------------------------------------- CIFAR-100 (cached)


def run_cifar_demo(
    config: DemoConfig,
    device: torch.device,
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    console: Console | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DemoResult:
    """The same comparison on CIFAR-100 through the trainer: ``config.cifar_pair``'s teacher trained
    for ``config.teacher_epochs`` with CE, then its student with ce, kd and sld for every seed, each with
    the pair's official recipe (``pair_config``: SLD two views, ce/kd one) scaled to ``config.epochs``.

    The dataset must already be in the cache (never downloaded here):
    :class:`harness.data.cifar.DatasetError` says how to get it otherwise. Runs go to ``out_dir``
    (default: a temporary folder, deleted afterwards). ``limit_train``/``limit_test`` use the first N
    images only (tests).
    """
    from harness.data.cifar import load_cifar100
    from harness.train.loop import train

    console = console or Console(soft_wrap=True)
    base = pair_config(config.cifar_pair, "ce")  # an unknown pair fails here, before anything is loaded
    load_cifar100(data_dir, download=False)  # fail now, with the how-to, rather than after the teacher
    started = time.perf_counter()
    gamma, milestones = scaled_schedule(config.epochs)
    data = DataConfig(
        data_dir=None if data_dir is None else str(data_dir),
        download=False,
        limit_train=limit_train,
        limit_test=limit_test,
    )
    with contextlib.ExitStack() as stack:
        root = (
            Path(out_dir) if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        teacher_run = train(
            TrainConfig(
                student=base.teacher,
                method="ce",
                loss=CEConfig(),
                seed=0,
                out_dir=str(root / "teacher"),
                optim=replace(
                    base.optim,
                    epochs=config.teacher_epochs,
                    lr_milestones=scaled_schedule(config.teacher_epochs)[1],
                ),
                data=replace(data, views=1),
            ),
            device,
            console=console,
        )
        teacher_checkpoint = str(root / "teacher" / "best.pt")
        accuracies: dict[str, list[float]] = {m: [] for m in DEMO_METHODS}
        seconds = dict.fromkeys(DEMO_METHODS, 0.0)
        teacher_train_error = math.nan
        for seed in range(config.seeds):
            for method in DEMO_METHODS:
                official = pair_config(config.cifar_pair, method)
                loss = replace(official.loss, gamma=gamma) if method == "sld" else official.loss
                run_config = replace(
                    official,
                    loss=loss,
                    seed=seed,
                    teacher_checkpoint=teacher_checkpoint,
                    out_dir=str(root / f"{method}-seed{seed}"),
                    optim=replace(official.optim, epochs=config.epochs, lr_milestones=milestones),
                    data=replace(data, views=official.data.views),
                )
                tic = time.perf_counter()
                result = train(run_config, device, console=console)
                seconds[method] += time.perf_counter() - tic
                accuracies[method].append(result.last_top1)
                if result.teacher_train_error is not None:
                    teacher_train_error = result.teacher_train_error
    return DemoResult(
        dataset="CIFAR-100"
        + (f" (first {limit_train} train / {limit_test} test images)" if limit_train else ""),
        teacher=base.teacher,
        student=base.student,
        seeds=tuple(range(config.seeds)),
        epochs=config.epochs,
        teacher_epochs=config.teacher_epochs,
        gamma=gamma,
        teacher_accuracy=teacher_run.last_top1,
        teacher_train_error=teacher_train_error,
        methods={m: MethodResult(m, tuple(accuracies[m]), seconds[m]) for m in DEMO_METHODS},
        wall_time_s=time.perf_counter() - started,
        notes=(
            *_schedule_notes(config.epochs, gamma, milestones),
            "recipes from `sld train --pair`: sld trains on weak + strong views, ce and kd on the weak view; "
            "accuracy is the last epoch's test top-1",
        ),
    )


# -------------------------------------------------------------------------------------------------- output


def results_table(result: DemoResult) -> Table:
    """A Rich table: test accuracy mean ± std per method over the seeds, each seed's value, time."""
    seeds = ", ".join(map(str, result.seeds))
    table = Table(
        title=f"sld demo: {result.student} student from a {result.teacher} teacher, {result.dataset}",
        caption=(
            f"teacher: test accuracy {100 * result.teacher_accuracy:.2f}%, training-set error "
            f"{100 * result.teacher_train_error:.2f}% (how often the swap fires) | seeds {seeds} | "
            f"{result.epochs} epochs | wall time {result.wall_time_s:.1f} s"
        ),
        box=box.SIMPLE_HEAD,
    )
    table.add_column("method", no_wrap=True)
    table.add_column("test acc % (mean ± std)", justify="right", no_wrap=True)
    table.add_column("per seed", justify="right")
    table.add_column("train time", justify="right", no_wrap=True)
    for name, r in result.methods.items():
        spread = "" if r.std is None else f" ± {100 * r.std:.2f}"
        table.add_row(
            name,
            f"{100 * r.mean:.2f}{spread}",
            " ".join(f"{100 * a:.2f}" for a in r.accuracies),
            f"{r.seconds:.1f} s",
        )
    return table
