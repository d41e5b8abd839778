"""``sld demo``: a real distillation that runs offline on a laptop CPU in well under a minute.

Data: scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``; 1797 images, 10
classes, shipped inside the package, so nothing is downloaded), one fixed train/test split. A small CNN
teacher is trained briefly with cross-entropy on the clean images; then, for each seed, a narrow MLP
student is trained from the same initialization and batch order with each method of
``harness.train.methods`` (``ce``, ``kd``, ``sld``): the losses are the trainer's, and SLD goes through
``backends.sld_loss``.

Why the teacher gets things wrong: the student trains on two views of every image, as in the official
SLD CIFAR-100 recipe -- the image itself (the weak view) and a strong view, the same RandAugment (two
ops) + Cutout as the official strong view (``harness.data.augment``). The teacher is right on all but a
few clean training images (~0.3 %), but wrong on a large share of the strong views (~38 %), as CIFAR
teachers are on theirs: there the swap fires, and the demo counts the rows it corrected and measures,
on the teacher-wrong rows of the last epoch, how often each student predicts the label and how often
it repeats the teacher's mistake. ``views=1`` trains on the clean images alone (then the swap almost
never fires). The strong views are drawn once per epoch and shared by every seed and method, so the
methods differ in the loss alone (and the teacher's logits are computed once per epoch).

The schedule is the official 240-epoch CIFAR-100 recipe scaled to the run: SGD (lr 0.025, the official
SLD configs' value for every method; momentum 0.9, weight decay 5e-4, batch 64), losses summed over the
views, lr x0.1 at 150/240, 180/240 and 210/240 of the epochs, and SLD's pseudo-teacher joining after
``gamma = 150/240`` of them, so that it takes part in a short run too. Every method gets the same recipe;
the numbers are whatever they come out as.

``run_cifar_demo`` runs the same comparison on real CIFAR-100 (from the local cache only) through the
full trainer, ``harness.train.loop.train``, with a pair's official recipe on a short schedule.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
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
from harness.data.augment import cutout, rand_augment
from harness.data.resident import epoch_batches
from harness.recipes import pair_config
from harness.train.methods import METHODS, StepLogits
from harness.train.optim import build_optimizer
from sld_core import swap_mask

__all__ = [
    "DEMO_METHODS",
    "DemoConfig",
    "DemoResult",
    "MethodResult",
    "SwapStats",
    "results_table",
    "run_cifar_demo",
    "run_digits_demo",
    "scaled_schedule",
    "strong_digits_view",
]

DEMO_METHODS = ("ce", "kd", "sld")
_OFFICIAL_EPOCHS = 240
_OFFICIAL_GAMMA = 150
_OFFICIAL_MILESTONES = (150, 180, 210)
_DIGITS_CLASSES = 10
# SOLVER.LR of the official SLD configs of the same-family pairs (harness.pairs); with two views the
# gradient sums over both, and mdistiller's one-view 0.05 made SLD diverge on one seed in three here.
_STUDENT_LR = 0.025
_VIEW_SEED = 10_000  # the strong views of epoch e come from seed _VIEW_SEED + e, whatever the run's seed


@dataclass(frozen=True)
class DemoConfig:
    """What ``sld demo`` runs. The defaults take well under a minute on two CPU cores (digits)."""

    seeds: int = 3  # seeds 0..seeds-1: one student init and batch order each, shared by all methods
    epochs: int = 40  # student epochs; the 240-epoch schedule (lr steps, gamma) is scaled to this
    teacher_epochs: int = 5  # "briefly": a few seconds, ~98% test accuracy, ~0.3% training error
    student_hidden: int = 16  # a narrow MLP, so the student has something to learn from the teacher
    views: int = 2  # weak (the image) + strong (RandAugment + Cutout), the official recipe; 1: weak only
    test_fraction: float = 1 / 3  # of the 1797 digits; one fixed split for every seed and method
    cifar_pair: str = "resnet56-resnet20"  # --cifar: the cheapest of the 12 official pairs

    def __post_init__(self) -> None:
        for name in ("seeds", "epochs", "teacher_epochs", "student_hidden"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 (weak) or 2 (weak + strong); got {self.views!r}")
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
    """Test accuracies (fractions) of one method, one per seed, in seed order, and (digits) what the
    student predicts on the training rows where the teacher is wrong."""

    method: str
    accuracies: tuple[float, ...]
    seconds: float  # training time summed over the seeds
    # Per seed, on the last epoch's training rows (every view) where the teacher's top-1 is wrong: the
    # fraction the student gets right, and the fraction where it repeats the teacher's wrong class.
    # Empty where not measured (the CIFAR demo).
    wrong_rows_right: tuple[float, ...] = ()
    wrong_rows_repeated: tuple[float, ...] = ()
    views: int = 1  # views per image it trained on (losses summed over them)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the seeds; ``None`` for a single seed."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else None


@dataclass(frozen=True)
class SwapStats:
    """What the teacher swap acts on during one run of the digits demo (the same for every seed)."""

    view_errors: tuple[float, ...]  # the teacher's training-set error per view (weak, strong), over epochs
    swapped_rows: int  # rows the swap corrected over the run: every epoch, every view
    teacher_rows: int  # rows the teacher labelled over the run
    wrong_rows: int  # of them in the last epoch: where the students are measured

    @property
    def rate(self) -> float:
        return self.swapped_rows / self.teacher_rows


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
    teacher_train_error: float  # on the clean training images
    methods: dict[str, MethodResult]
    wall_time_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    swaps: SwapStats | None = None  # the digits demo's swap counts; None for the CIFAR demo

    def to_json(self) -> dict[str, Any]:
        swaps = self.swaps
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
            "teacher_view_errors": None if swaps is None else list(swaps.view_errors),
            "swapped_rows": None if swaps is None else swaps.swapped_rows,
            "teacher_rows": None if swaps is None else swaps.teacher_rows,
            "teacher_wrong_rows_last_epoch": None if swaps is None else swaps.wrong_rows,
            "methods": {
                name: {
                    "test_accuracy": list(r.accuracies),
                    "mean": r.mean,
                    "std": r.std,
                    "train_time_s": r.seconds,
                    "views": r.views,
                    "teacher_wrong_rows_right": list(r.wrong_rows_right) or None,
                    "teacher_wrong_rows_repeated": list(r.wrong_rows_repeated) or None,
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


def strong_digits_view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The official strong view's RandAugment (two ops) + Cutout (:mod:`harness.data.augment`) on
    digits: ``float32 (N, 1, H, W)`` in ``[0, 1]`` -> the same shape and range, each image augmented with
    its own draws. The grey image becomes the three equal channels the ops expect and their mean after
    (only Cutout's fill differs between them). No crop or flip: a mirrored digit is another symbol.

    >>> g = torch.Generator().manual_seed(0)
    >>> strong_digits_view(torch.rand(5, 1, 8, 8), g).shape
    torch.Size([5, 1, 8, 8])
    """
    pixels = (images * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    augmented = cutout(rand_augment(pixels, generator), generator)
    return augmented.float().mean(dim=1, keepdim=True) / 255


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


# One epoch's views of the training set: (images, teacher logits or None) per view, weak first.
_Views = tuple[tuple[torch.Tensor, torch.Tensor | None], ...]


def _fit(
    model: nn.Module,
    method: str,
    loss_config: Any,
    labels: torch.Tensor,
    views_of: Callable[[int], _Views],
    optim: OptimConfig,
    seed: int,
) -> nn.Module:
    """Train ``model`` with ``METHODS[method]`` the way ``harness.train.loop`` does: seeded batches, the
    ``loss*`` entries summed (over the views, inside the method), SGD with momentum and weight decay,
    multistep lr stepped per epoch. ``views_of(epoch)`` gives that epoch's views."""
    generator = torch.Generator().manual_seed(seed)
    optimizer, scheduler = build_optimizer(model, optim)
    loss_fn = METHODS[method]
    model.train()
    for epoch in range(1, optim.epochs + 1):  # the methods count epochs from 1
        views = views_of(epoch)
        for index in epoch_batches(len(labels), optim.batch_size, generator):
            students = tuple(model(images[index]) for images, _ in views)
            teachers = None if views[0][1] is None else tuple(t[index] for _, t in views)
            terms = loss_fn(StepLogits(students, teachers, labels[index]), epoch=epoch, config=loss_config)
            loss = sum(value for name, value in terms.items() if name.startswith("loss"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model.eval()(images).argmax(dim=1) == labels).double().mean().item()


@torch.no_grad()
def _student_views(data: _Digits, teacher: nn.Module, epochs: int, views: int) -> list[_Views]:
    """Every epoch's views with the teacher's logits: the clean images (the same each epoch) and, for
    ``views == 2``, that epoch's strong views (seeded by the epoch alone)."""
    weak = (data.train_x, teacher(data.train_x))
    if views == 1:
        return [(weak,)] * epochs
    out = []
    for epoch in range(1, epochs + 1):
        strong = strong_digits_view(data.train_x, torch.Generator().manual_seed(_VIEW_SEED + epoch))
        out.append((weak, (strong, teacher(strong))))
    return out


def _swap_stats(epoch_views: list[_Views], labels: torch.Tensor) -> SwapStats:
    wrong = [[swap_mask(t, labels) for _, t in views] for views in epoch_views]
    per_view = tuple(
        statistics.fmean(float(w[v].double().mean()) for w in wrong) for v in range(len(wrong[0]))
    )
    return SwapStats(
        view_errors=per_view,
        swapped_rows=sum(int(m.sum()) for w in wrong for m in w),
        teacher_rows=len(labels) * len(wrong) * len(wrong[0]),
        wrong_rows=sum(int(m.sum()) for m in wrong[-1]),
    )


@torch.no_grad()
def _on_teacher_wrong_rows(model: nn.Module, views: _Views, labels: torch.Tensor) -> tuple[float, float]:
    """On the rows of ``views`` (every view) where the teacher is wrong: the fraction the student gets
    right and the fraction where it predicts the teacher's wrong class (NaN when there are none)."""
    right = repeated = rows = 0
    for images, teacher_logits in views:
        wrong = swap_mask(teacher_logits, labels)
        predicted = model.eval()(images[wrong]).argmax(dim=1)
        right += int((predicted == labels[wrong]).sum())
        repeated += int((predicted == teacher_logits[wrong].argmax(dim=1)).sum())
        rows += int(wrong.sum())
    return (right / rows, repeated / rows) if rows else (math.nan, math.nan)


def run_digits_demo(config: DemoConfig | None = None, *, console: Console | None = None) -> DemoResult:
    """Train the digits teacher, then every method of :data:`DEMO_METHODS` for every seed; on the CPU.

    Parameters
    ----------
    config
        Seeds, epochs, views and model sizes (default :class:`DemoConfig`).
    console
        Where progress lines go (default: a new stdout console).

    Returns
    -------
    DemoResult
        Test accuracies per method and seed, the teacher's test accuracy and training-set error, what
        the swap acted on (:class:`SwapStats`) and, per method and seed, the student's predictions on
        the last epoch's teacher-wrong rows.

    Examples
    --------
    >>> result = run_digits_demo(DemoConfig(seeds=1, epochs=2))  # doctest: +SKIP
    >>> result.methods["sld"].accuracies, result.swaps.swapped_rows  # doctest: +SKIP
    """
    config = DemoConfig() if config is None else config
    console = console or Console()
    started = time.perf_counter()
    gamma, milestones = scaled_schedule(config.epochs)
    optim = OptimConfig(epochs=config.epochs, lr=_STUDENT_LR, lr_milestones=milestones)
    teacher_optim = OptimConfig(
        epochs=config.teacher_epochs, lr_milestones=scaled_schedule(config.teacher_epochs)[1]
    )
    data = _load_digits(config.test_fraction)
    seeds = tuple(range(config.seeds))
    with torch_threads(1):
        torch.manual_seed(0)  # one teacher for every seed, as with a published checkpoint
        clean = ((data.train_x, None),)
        teacher = _fit(_digits_teacher(), "ce", CEConfig(), data.train_y, lambda _: clean, teacher_optim, 0)
        teacher_accuracy = _accuracy(teacher, data.test_x, data.test_y)
        epoch_views = _student_views(data, teacher, config.epochs, config.views)
        swaps = _swap_stats(epoch_views, data.train_y)
        teacher_train_error = swaps.view_errors[0]
        console.print(_teacher_line(config, teacher_accuracy, swaps))
        accuracies: dict[str, list[float]] = {m: [] for m in DEMO_METHODS}
        on_wrong: dict[str, list[tuple[float, float]]] = {m: [] for m in DEMO_METHODS}
        seconds = dict.fromkeys(DEMO_METHODS, 0.0)
        for seed in seeds:
            for method in DEMO_METHODS:
                torch.manual_seed(seed)  # the same student initialization for every method
                tic = time.perf_counter()
                student = _fit(
                    _digits_student(config.student_hidden),
                    method,
                    _method_config(method, gamma),
                    data.train_y,
                    lambda epoch: epoch_views[epoch - 1],
                    optim,
                    seed,
                )
                seconds[method] += time.perf_counter() - tic
                accuracies[method].append(_accuracy(student, data.test_x, data.test_y))
                on_wrong[method].append(_on_teacher_wrong_rows(student, epoch_views[-1], data.train_y))
                right, repeated = on_wrong[method][-1]
                console.print(
                    f"  seed {seed}  {method:<4} test accuracy {100 * accuracies[method][-1]:.2f}%; on the "
                    f"{swaps.wrong_rows} teacher-wrong rows: right {100 * right:.1f}%, repeats the "
                    f"teacher {100 * repeated:.1f}%"
                )
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
        methods={
            m: MethodResult(
                m,
                tuple(accuracies[m]),
                seconds[m],
                tuple(r for r, _ in on_wrong[m]),
                tuple(p for _, p in on_wrong[m]),
                views=config.views,
            )
            for m in DEMO_METHODS
        },
        wall_time_s=time.perf_counter() - started,
        notes=(
            *_schedule_notes(config.epochs, gamma, milestones, optim.lr),
            _views_note(config.views),
        ),
        swaps=swaps,
    )


def _teacher_line(config: DemoConfig, accuracy: float, swaps: SwapStats) -> str:
    errors = swaps.view_errors
    where = f"wrong on {100 * errors[0]:.2f}% of the clean training images"
    if len(errors) > 1:
        where += f" and on {100 * errors[1]:.1f}% of their strong views"
    return (
        f"teacher (CNN, {config.teacher_epochs} epochs of CE): test accuracy {100 * accuracy:.2f}%, {where}; "
        f"the swap corrects {swaps.swapped_rows:,} of the {swaps.teacher_rows:,} rows it labels "
        f"({100 * swaps.rate:.1f}%) in each sld run"
    )


def _views_note(views: int) -> str:
    if views == 1:
        return "one view: every method trains on the clean images alone (sld demo --views 2: + strong views)"
    return (
        "two views per image, losses summed over both (the official SLD recipe): the image and a strong view "
        "(RandAugment, 2 ops + Cutout), drawn once per epoch and shared by every seed and method"
    )


def _schedule_notes(
    epochs: int, gamma: int, milestones: tuple[int, ...], lr: float | None = None
) -> tuple[str, ...]:
    joins = (
        f"the pseudo-teacher joins at epoch {gamma + 1}"
        if gamma < epochs
        else "too short a run for the pseudo-teacher to join"
    )
    return (
        f"SLD gamma = {gamma}, scaled from the official 150 of 240 epochs to 150/240 of {epochs} so that the "
        f"pseudo-teacher takes part in a short run: {joins}",
        f"every method: {'' if lr is None else f'lr {lr:g}, '}the official recipe scaled to {epochs} epochs, "
        f"lr x0.1 after epochs {', '.join(map(str, milestones))}",
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
        methods={
            m: MethodResult(
                m, tuple(accuracies[m]), seconds[m], views=pair_config(config.cifar_pair, m).data.views
            )
            for m in DEMO_METHODS
        },
        wall_time_s=time.perf_counter() - started,
        notes=(
            *_schedule_notes(config.epochs, gamma, milestones),
            "recipes from `sld train --pair`: sld trains on weak + strong views, ce and kd on the weak view; "
            "accuracy is the last epoch's test top-1",
        ),
    )


# -------------------------------------------------------------------------------------------------- output


def results_table(result: DemoResult) -> Table:
    """A Rich table: per method the views it trained on, test accuracy mean ± std over the seeds and each
    seed's value, what it predicts on the teacher-wrong rows (digits), and its training time."""
    seeds = ", ".join(map(str, result.seeds))
    teacher = f"teacher: test accuracy {100 * result.teacher_accuracy:.2f}%"
    swaps = result.swaps
    if swaps is not None:
        errors = " and ".join(
            f"{100 * e:.1f}% of the {name}" for e, name in zip(swaps.view_errors, _VIEW_NAMES)
        )
        teacher += (
            f", wrong on {errors} training views; the swap corrects {100 * swaps.rate:.1f}% of its rows in "
            "each sld run"
        )
    else:
        teacher += f", training-set error {100 * result.teacher_train_error:.2f}%"
    measured = swaps is not None and any(r.wrong_rows_right for r in result.methods.values())
    caption = f"{teacher} | seeds {seeds} | {result.epochs} epochs | wall time {result.wall_time_s:.1f} s"
    if measured:
        caption += (
            f"\ntest top-1: mean ± std over seeds | * % of the {swaps.wrong_rows} training rows of the last "
            "epoch where the teacher is wrong (the rows the swap corrects) on which the student predicts the "
            "label (right) or the teacher's wrong class (repeats), mean over seeds"
        )
    table = Table(
        title=f"sld demo: {result.student} student from a {result.teacher} teacher, {result.dataset}",
        caption=caption,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("method", no_wrap=True)
    table.add_column("views", justify="right", no_wrap=True)
    table.add_column("test top-1 %", justify="right", no_wrap=True)
    table.add_column("per seed", justify="right", no_wrap=True)
    if measured:
        table.add_column("right*", justify="right", no_wrap=True)
        table.add_column("repeats*", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for name, r in result.methods.items():
        spread = "" if r.std is None else f" ± {100 * r.std:.2f}"
        cells = [
            name,
            str(r.views),
            f"{100 * r.mean:.2f}{spread}",
            " ".join(f"{100 * a:.2f}" for a in r.accuracies),
        ]
        if measured:
            cells += [_mean_percent(r.wrong_rows_right), _mean_percent(r.wrong_rows_repeated)]
        table.add_row(*cells, f"{r.seconds:.1f} s")
    return table


_VIEW_NAMES = ("clean", "strong")  # the digits demo's weak view is the image itself


def _mean_percent(values: tuple[float, ...]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    return f"{100 * statistics.fmean(finite):.1f}" if finite else "–"
