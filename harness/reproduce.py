"""Run the paper's grid (pair x method x seed) to completion, resumably.

Each run lives in ``OUT/<pair>/<method>/seed<k>/`` (:func:`harness.runs.grid_run_dir`). Calling
:func:`run_grid` again is cheap: a run whose ``metrics.jsonl`` holds all its epochs is skipped
(:meth:`harness.runs.RunDir.state`), an interrupted one (``last.pt`` short of the
last epoch) continues with the trainer's bit-exact resume, and only missing runs start from scratch.
Teachers the remaining runs need are made ready first (:func:`ensure_teacher`; missing ones are
trained with ``sld train-teacher``'s recipe by :func:`teacher_trainer`), so a long grid never stops
halfway for want of a teacher. Errors are raised as Python exceptions; the CLI reports them.

    >>> device = torch.device("cuda")  # doctest: +SKIP
    >>> configs = grid_configs(["resnet32x4-resnet8x4"], ["kd", "sld"], 3, "runs/reproduce")  # doctest: +SKIP
    >>> train = teacher_trainer("runs", device)  # doctest: +SKIP
    >>> run_grid(configs, device, teacher_for=lambda m: ensure_teacher(m, "runs", train))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError, TrainConfig, resume_conflicts, with_overrides
from harness.recipes import pair_config, teacher_config
from harness.runs import RunDir, RunLockedError, RunState, find_teacher, grid_run_dir, teacher_run_dir

if TYPE_CHECKING:
    import torch
    from rich.console import Console

__all__ = ["ensure_teacher", "grid_configs", "run_grid", "teacher_trainer"]


def grid_configs(
    pairs: Sequence[str],
    methods: Sequence[str],
    seeds: int,
    out_dir: str | os.PathLike[str],
    overrides: dict[str, Any] | None = None,
) -> list[TrainConfig]:
    """One config per pair x method x seed (seeds 0..seeds-1): the pair's official recipe
    (:func:`harness.recipes.pair_config`) with ``overrides`` (dotted fields, ``None`` skipped, as in
    :func:`~harness.config.with_overrides`), the seed and its :func:`~harness.runs.grid_run_dir`. The teacher
    checkpoint is left unset: :func:`run_grid` finds or trains it only for runs that still train."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds must be an integer >= 1; got {seeds!r}")
    if not pairs or not methods:
        raise ConfigError("the grid needs at least one pair and one method")
    configs = []
    for pair in pairs:
        for method in methods:
            base = with_overrides(pair_config(pair, method), overrides or {})
            for seed in range(seeds):
                where = grid_run_dir(out_dir, base.pair or pair, method, seed)
                configs.append(with_overrides(base, {"seed": seed, "out_dir": str(where)}))
    return configs


def ensure_teacher(
    model: str,
    runs_dir: str | os.PathLike[str],
    train_teacher: Callable[[str, bool], None],
    *,
    min_epochs: int | None = None,
) -> Path:
    """A checkpoint for teacher ``model``: our own finished teacher run in ``RUNS/teachers/<model>``,
    else mdistiller's file (:func:`harness.runs.find_teacher`), else a new one trained by
    ``train_teacher(model, resume)``; an interrupted teacher run is resumed (``resume=True``) first.

    Raises
    ------
    ConfigError
        Our own teacher run was trained for fewer than ``min_epochs`` epochs: a 1-epoch smoke-test
        teacher must not silently teach a full reproduction.
    """
    own = RunDir(teacher_run_dir(model, runs_dir))
    state = own.state()
    if state is RunState.PARTIAL:
        train_teacher(model, True)
    elif state is RunState.NEW:
        try:
            return find_teacher(model, runs_dir)
        except FileNotFoundError:
            train_teacher(model, False)
    if min_epochs is not None and own.config.is_file():
        trained = own.read_config().optim.epochs
        if trained < min_epochs:
            raise ConfigError(
                f"teacher run {own.path} was trained for {trained} epochs, fewer than the {min_epochs} this "
                "reproduction runs; move it away (it is retrained) or pass another --runs-dir"
            )
    return find_teacher(model, runs_dir)


def teacher_trainer(
    runs_dir: str | os.PathLike[str],
    device: torch.device,
    *,
    overrides: dict[str, Any] | None = None,
    console: Console | None = None,
) -> Callable[[str, bool], None]:
    """The ``train_teacher(model, resume)`` for :func:`ensure_teacher` that does what
    ``sld train-teacher --model MODEL [--resume]`` does, in this process: a new run trains
    :func:`~harness.recipes.teacher_config` with ``overrides`` (dotted fields, ``None`` skipped); an
    interrupted one continues from its own ``config.json`` with ``overrides`` on top. Training goes
    through :func:`harness.train.loop.train`, whose errors (``ConfigError``, ``TrainingInterrupted``,
    ...) propagate as they are."""

    def train_teacher(model: str, resume: bool) -> None:
        from rich.console import Console

        from harness.train.checkpoint import resume_config
        from harness.train.loop import train

        run = RunDir(teacher_run_dir(model, runs_dir))
        base = resume_config(run) if resume else teacher_config(model, runs_dir)
        config = with_overrides(base, overrides or {})
        out = console or Console(soft_wrap=True)
        out.rule(f"[bold]{'resuming' if resume else 'training'} teacher {model}: {config.out_dir}")
        train(config, device, resume=resume, console=out)

    return train_teacher


def run_grid(
    configs: Sequence[TrainConfig],
    device: torch.device,
    *,
    teacher_for: Callable[[str], Path],
    console: Console | None = None,
) -> list[Path]:
    """Train, resume or skip each of ``configs`` (see :class:`RunState`); returns their directories.

    ``teacher_for(model)`` gives a teacher checkpoint (e.g. :func:`ensure_teacher`); it is called once
    per teacher model, for the runs that still train, before any of them starts.

    Raises
    ------
    ConfigError
        A finished run's config differs from the requested one (e.g. other ``--epochs``): the message
        lists the fields; choose another output directory. The trainer raises the same for a run to resume.
    harness.runs.RunLockedError
        Another process trains in one of the grid's directories (checked before anything starts; the
        message names each such directory and its PID).
    """
    from rich.console import Console

    from harness.train.loop import train

    console = console or Console(soft_wrap=True)
    locked = []
    for config in configs:
        try:
            RunDir(config.out_dir).check_unlocked()
        except RunLockedError as exc:
            locked.append(str(exc))
    if locked:
        raise RunLockedError("; ".join(locked))
    todo: list[tuple[TrainConfig, RunState]] = []
    for config in configs:
        state = RunDir(config.out_dir).state()
        if state is RunState.DONE:
            stored = RunDir(config.out_dir).read_config()
            # The trainer's own resume rule; the teacher's path is not known yet and may move.
            diffs = resume_conflicts(stored, config, ignore={"teacher_checkpoint"})
            if diffs:
                raise ConfigError(
                    f"{config.out_dir} holds a finished run with another config ({', '.join(diffs)}); "
                    "choose another --out directory"
                )
            console.print(
                f"[green]done[/green] {config.out_dir}: all {stored.optim.epochs} epochs recorded, skipped"
            )
        else:
            todo.append((config, state))

    teachers = {c.teacher: teacher_for(c.teacher) for c, _ in todo if c.method != "ce" and c.teacher}
    for i, (config, state) in enumerate(todo, start=1):
        if config.method != "ce" and config.teacher:
            config = with_overrides(config, {"teacher_checkpoint": str(teachers[config.teacher])})
        verb = "resuming" if state is RunState.PARTIAL else "training"
        console.rule(f"[bold]{verb} {i}/{len(todo)}: {config.out_dir}")
        train(config, device, resume=state is RunState.PARTIAL, console=console)
    return [Path(c.out_dir) for c in configs]
