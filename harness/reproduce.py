"""Run the paper's grid (pair x method x seed) to completion, resumably.

The columns are method names (:mod:`harness.method_names`) or the entries of a named study
(:data:`STUDIES`: the main table, the logit-processing alternatives, the conditional swap, the
pseudo-teacher on other methods, a gamma sweep). Each run lives in ``OUT/<pair>/<entry>/seed<k>/``
(:func:`harness.runs.grid_run_dir`; the entry is the method's canonical name, or e.g.
``sld_gamma100`` for a study's variant). Calling
:func:`run_grid` again is cheap: a run whose ``metrics.jsonl`` holds all its epochs is skipped
(:meth:`harness.runs.RunDir.state`), an interrupted one (``last.pt`` short of the
last epoch) continues with the trainer's bit-exact resume, and only missing runs start from scratch.
Teachers the remaining runs need are made ready first (:func:`ensure_teacher`; missing ones are
trained with ``sld train-teacher``'s recipe by :func:`teacher_trainer`), so a long grid never stops
halfway for want of a teacher. Errors are raised as Python exceptions; the CLI reports them.
:func:`run_grid` trains in this process, one run after the other; :func:`run_grid_jobs` keeps the same
order (teachers, then runs) with every run in a process of its own, many at once (:mod:`harness.jobs`:
``sld reproduce --jobs N`` / ``--launcher slurm``).

    >>> device = torch.device("cuda")  # doctest: +SKIP
    >>> entries = study_entries(["main"])  # kd, dkd, mlkd, ls-mlkd, sld
    >>> configs = grid_configs(["wrn40_2-wrn16_2"], entries, 3, "runs/reproduce")  # doctest: +SKIP
    >>> train = teacher_trainer("runs", device)  # doctest: +SKIP
    >>> run_grid(configs, device, teacher_for=lambda m: ensure_teacher(m, "runs", train))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError, SLDConfig, TrainConfig, resume_conflicts, with_overrides
from harness.jobs import Job, JobOutcome, prepare_job
from harness.method_names import canonical_name
from harness.recipes import pair_config, teacher_config
from harness.runs import (
    RunDir,
    RunLockedError,
    RunState,
    find_teacher,
    grid_run_dir,
    published_teacher_file,
    teacher_run_dir,
)

if TYPE_CHECKING:
    import torch
    from rich.console import Console

__all__ = [
    "DEFAULT_GAMMAS",
    "DEFAULT_THRESHOLDS",
    "MAIN_METHODS",
    "STUDIES",
    "STUDY_PAIR",
    "GridEntry",
    "Launch",
    "ensure_teacher",
    "grid_configs",
    "grid_teachers",
    "plan_grid",
    "run_grid",
    "run_grid_jobs",
    "study_entries",
    "teacher_run_config",
    "teacher_trainer",
]

# The columns of the seed's main CIFAR-100 table (SLD against KD, DKD, MLKD and LS-MLKD).
MAIN_METHODS = ("kd", "dkd", "mlkd", "ls-mlkd", "sld")
DEFAULT_THRESHOLDS = (0.25, 0.5, 0.75)  # conditional swap: probability gaps p[top] - p[target]
DEFAULT_GAMMAS = (0, 50, 100, 150, 180, 210, 240)  # epochs after which the pseudo-teacher joins (240: never)
STUDY_PAIR = "wrn40_2-wrn16_2"  # the seed's headline pair: SLD 77.19 vs MLKD 76.63 vs LS-MLKD 76.95


@dataclass(frozen=True)
class GridEntry:
    """One column of a grid: a method name (:mod:`harness.method_names`) with config overrides on top
    of its recipe, trained in ``OUT/<pair>/<name>/seed<k>/``."""

    name: str  # the run directory under OUT/<pair>/
    method: str  # a method name
    overrides: tuple[tuple[str, Any], ...] = ()  # dotted config fields, e.g. (("loss.gamma", 100),)

    @classmethod
    def of(cls, method: str) -> GridEntry:
        """The entry of a method name with its recipe as it is (directory: the canonical name)."""
        return cls(canonical_name(method), method)


StudyEntries = Callable[[Sequence[float], Sequence[float]], list[GridEntry]]


def _processing(thresholds: Sequence[float], gammas: Sequence[float]) -> list[GridEntry]:
    # The paper's logit-processing ablation: the swap against the alternatives it rejects, inside SLD.
    names = ("sld@none", "sld", "sld@soft-add", "sld@max-add", "sld@double", "sld@halve", "sld@smooth")
    return [GridEntry.of(n) for n in names]


def _conditional_swap(thresholds: Sequence[float], gammas: Sequence[float]) -> list[GridEntry]:
    entries = [GridEntry.of("sld")]
    for threshold in thresholds:
        entries += [GridEntry.of(f"sld@cswap-lt{threshold:g}"), GridEntry.of(f"sld@cswap-ge{threshold:g}")]
    return entries


def _pseudo_teacher(thresholds: Sequence[float], gammas: Sequence[float]) -> list[GridEntry]:
    # The pseudo-teacher alone, and with SLD's swap, on the other losses.
    names = ("kd", "kd+pt", "sld-kd", "dkd", "dkd+pt", "sld-dkd", "mlkd", "mlkd+pt", "sld-mlkd")
    return [GridEntry.of(n) for n in names]


def _gamma(thresholds: Sequence[float], gammas: Sequence[float]) -> list[GridEntry]:
    # SLD's loss scheduling; the recipe's own gamma is the plain sld run.
    return [
        GridEntry.of("sld")
        if g == SLDConfig.gamma
        else GridEntry(f"sld_gamma{g:g}", "sld", (("loss.gamma", g),))
        for g in gammas
    ]


def _main(thresholds: Sequence[float], gammas: Sequence[float]) -> list[GridEntry]:
    return [GridEntry.of(n) for n in MAIN_METHODS]


def _ablations(thresholds: Sequence[float], gammas: Sequence[float]) -> list[GridEntry]:
    entries: list[GridEntry] = []
    for study in (_processing, _conditional_swap, _pseudo_teacher, _gamma):
        entries += study(thresholds, gammas)
    return entries


# name -> (what it reruns, its entries given the thresholds and gammas): `sld reproduce --study NAME`.
STUDIES: dict[str, tuple[str, StudyEntries]] = {
    "main": ("the main table: " + ", ".join(MAIN_METHODS), _main),
    "processing": ("SLD's swap against the other ways to fix a wrong teacher", _processing),
    "conditional-swap": ("SLD swapping only below / at least each of --thresholds", _conditional_swap),
    "pseudo-teacher": ("the pseudo-teacher, and SLD's swap with it, on KD, DKD and MLKD", _pseudo_teacher),
    "gamma": ("SLD with the pseudo-teacher joining after each of --gammas", _gamma),
    "ablations": ("processing + conditional-swap + pseudo-teacher + gamma", _ablations),
}


def study_entries(
    studies: Sequence[str],
    methods: Sequence[str] = (),
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
) -> list[GridEntry]:
    """The grid entries of the named :data:`STUDIES`, then of the method names ``methods``, in order,
    each directory once.

    >>> [e.name for e in study_entries(["gamma"], ["kd"], gammas=(100, 150))]
    ['sld_gamma100', 'sld', 'kd']

    Raises
    ------
    ConfigError
        An unknown study or method name, or two entries that would share a directory with different
        configs.
    """
    entries: list[GridEntry] = []
    for study in studies:
        if study not in STUDIES:
            raise ConfigError(f"unknown study {study!r}; valid studies: {', '.join(STUDIES)}")
        entries += STUDIES[study][1](tuple(thresholds), tuple(gammas))
    entries += [GridEntry.of(m) for m in methods]
    unique: dict[str, GridEntry] = {}
    for entry in entries:
        if unique.setdefault(entry.name, entry) != entry:
            raise ConfigError(
                f"two grid entries want the directory {entry.name!r}: {unique[entry.name]} and {entry}"
            )
    return list(unique.values())


def grid_configs(
    pairs: Sequence[str],
    methods: Sequence[str | GridEntry],
    seeds: int,
    out_dir: str | os.PathLike[str],
    overrides: dict[str, Any] | None = None,
) -> list[TrainConfig]:
    """One config per pair x method x seed (seeds 0..seeds-1): the pair's official recipe for the
    method name (:func:`harness.recipes.pair_config`), a :class:`GridEntry`'s own overrides, then
    ``overrides`` (dotted fields, ``None`` skipped, as in :func:`~harness.config.with_overrides`), the
    seed and its :func:`~harness.runs.grid_run_dir` (``OUT/<pair>/<entry name>/seed<k>``; a plain
    method name is the entry of its canonical name). The teacher checkpoint is left unset:
    :func:`run_grid` finds or trains it only for runs that still train."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds must be an integer >= 1; got {seeds!r}")
    if not pairs or not methods:
        raise ConfigError("the grid needs at least one pair and one method")
    entries = [m if isinstance(m, GridEntry) else GridEntry.of(m) for m in methods]
    configs = []
    for pair in pairs:
        for entry in entries:
            base = with_overrides(pair_config(pair, entry.method), dict(entry.overrides))
            base = with_overrides(base, overrides or {})
            for seed in range(seeds):
                where = grid_run_dir(out_dir, base.pair or pair, entry.name, seed)
                configs.append(with_overrides(base, {"seed": seed, "out_dir": str(where)}))
    return configs


def ensure_teacher(
    model: str,
    runs_dir: str | os.PathLike[str],
    train_teacher: Callable[[str, bool], None],
    *,
    min_epochs: int | None = None,
    given: str | os.PathLike[str] | None = None,
) -> Path:
    """A checkpoint for teacher ``model``: the file ``given`` (``sld reproduce --teacher MODEL=PATH``)
    when there is one, else our own finished teacher run in ``RUNS/teachers/<model>``, else the
    published file (mdistiller's, or torchvision's for an ImageNet teacher:
    :func:`harness.runs.find_teacher`), else a new one trained by ``train_teacher(model, resume)``; an
    interrupted teacher run is resumed (``resume=True``) first. ImageNet teachers are never trained
    here: the official runs use torchvision's published weights.

    Parameters
    ----------
    model
        The teacher's model name, e.g. ``"resnet34"``.
    runs_dir
        Where our own teacher runs live (``RUNS/teachers/<model>``).
    train_teacher
        ``train_teacher(model, resume)`` trains (or resumes) our own run of the teacher.
    min_epochs
        The fewest epochs our own teacher run may have been trained for (a given file is not checked).
    given
        A checkpoint the user named: it wins over every lookup, and nothing is trained.

    Returns
    -------
    Path
        The checkpoint to distill from.

    Raises
    ------
    harness.runs.TeacherNotFoundError
        An ImageNet teacher's file is missing; the message names the file to fetch and where.
    ConfigError
        ``given`` is not a file; or our own teacher run was trained for fewer than ``min_epochs``
        epochs: a 1-epoch smoke-test teacher must not silently teach a full reproduction.

    Example
    -------
    >>> ensure_teacher("resnet34", "runs", train, given="resnet34-333f7ec4.pth")  # doctest: +SKIP
    PosixPath('resnet34-333f7ec4.pth')
    """
    if given is not None:
        if not Path(given).is_file():
            raise ConfigError(f"teacher {model!r}: no checkpoint file {given}")
        return Path(given)
    own = RunDir(teacher_run_dir(model, runs_dir))
    state = own.state()
    if state is RunState.PARTIAL:
        train_teacher(model, True)
    elif state is RunState.NEW:
        try:
            return find_teacher(model, runs_dir)
        except FileNotFoundError:
            if published_teacher_file(model) is not None:
                raise
            train_teacher(model, False)
    if min_epochs is not None and own.config.is_file():
        trained = own.read_config().optim.epochs
        if trained < min_epochs:
            raise ConfigError(
                f"teacher run {own.path} was trained for {trained} epochs, fewer than the {min_epochs} this "
                "reproduction runs; move it away (it is retrained) or pass another --runs-dir"
            )
    return find_teacher(model, runs_dir)


def teacher_run_config(
    model: str,
    runs_dir: str | os.PathLike[str],
    *,
    resume: bool,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The config of teacher ``model``'s own run in ``RUNS/teachers/<model>``: a new run trains
    :func:`~harness.recipes.teacher_config`, an interrupted one (``resume``) continues from the config
    its ``last.pt`` holds; ``overrides`` (dotted fields, ``None`` skipped) on top of either.

    Example
    -------
    >>> teacher_run_config("resnet56", "runs", resume=False, overrides={"optim.epochs": 2}).out_dir
    'runs/teachers/resnet56'
    """
    if resume:
        from harness.train.checkpoint import resume_config

        base = resume_config(RunDir(teacher_run_dir(model, runs_dir)))
    else:
        base = teacher_config(model, runs_dir)
    return with_overrides(base, overrides or {})


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

        from harness.train.loop import train

        config = teacher_run_config(model, runs_dir, resume=resume, overrides=overrides)
        out = console or Console(soft_wrap=True)
        out.rule(f"[bold]{'resuming' if resume else 'training'} teacher {model}: {config.out_dir}")
        train(config, device, resume=resume, console=out)

    return train_teacher


def plan_grid(
    configs: Sequence[TrainConfig], console: Console | None = None
) -> list[tuple[TrainConfig, RunState]]:
    """The runs of ``configs`` that still train, with where each stands (new or partial); a finished
    run is skipped with a line on ``console``.

    Raises
    ------
    ConfigError
        A finished run's config differs from the requested one (e.g. other ``--epochs``): the message
        lists the fields; choose another output directory.
    harness.runs.RunLockedError
        Another process trains in one of the grid's directories (the message names each such directory
        and its PID): nothing is started.
    """
    from rich.console import Console

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
    return todo


def _needs_teacher(config: TrainConfig) -> bool:
    return config.method != "ce" and config.teacher is not None


def grid_teachers(configs: Sequence[TrainConfig]) -> list[str]:
    """The teacher models the runs of ``configs`` distill from, sorted, each once (``ce`` runs have none).

    >>> grid_teachers(grid_configs(["resnet34-resnet18"], ["ce", "sld"], 1, "out"))
    ['resnet34']
    """
    return sorted({c.teacher for c in configs if _needs_teacher(c)})


def run_grid(
    configs: Sequence[TrainConfig],
    device: torch.device,
    *,
    teacher_for: Callable[[str], Path],
    console: Console | None = None,
) -> list[Path]:
    """Train, resume or skip each of ``configs`` (see :class:`RunState`) in this process, one after
    the other; returns their directories.

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
    todo = plan_grid(configs, console)
    teachers = {c.teacher: teacher_for(c.teacher) for c, _ in todo if _needs_teacher(c)}
    for i, (config, state) in enumerate(todo, start=1):
        if _needs_teacher(config):
            config = with_overrides(config, {"teacher_checkpoint": str(teachers[config.teacher])})
        verb = "resuming" if state is RunState.PARTIAL else "training"
        console.rule(f"[bold]{verb} {i}/{len(todo)}: {config.out_dir}")
        train(config, device, resume=state is RunState.PARTIAL, console=console)
    return [Path(c.out_dir) for c in configs]


# A way to train jobs to their end (harness.jobs.run_pool or run_array with their options bound).
Launch = Callable[[Sequence[Job]], list[JobOutcome]]


class _TeacherDeferred(Exception):
    """ensure_teacher asked for a teacher run: run_grid_jobs trains it as a job instead, later."""


def run_grid_jobs(
    configs: Sequence[TrainConfig],
    launch: Launch,
    *,
    runs_dir: str | os.PathLike[str],
    overrides: dict[str, Any] | None = None,
    min_epochs: int | None = None,
    teacher_paths: Mapping[str, str | os.PathLike[str]] | None = None,
    console: Console | None = None,
) -> list[JobOutcome]:
    """:func:`run_grid` with every run in a process of its own, many at once: ``launch`` (e.g.
    :func:`harness.jobs.run_pool` with its slots bound) trains first the teacher runs that are missing
    or interrupted (:func:`ensure_teacher`'s rules; ``teacher_run_config`` with ``overrides``), then the
    grid's runs that still train, each with its teacher's checkpoint. So no two processes train one
    teacher, and no student starts before its teacher is ready. A failed run does not stop the others;
    the students of a failed teacher are not started. ``teacher_paths`` (model -> checkpoint file, as
    ``sld reproduce --teacher MODEL=PATH`` gives them) are used as they are: those teachers are neither
    looked up nor trained.

    Returns
    -------
    list of JobOutcome
        The teachers' and the runs' (finished runs skipped at the start are not in it).

    Raises
    ------
    ConfigError, harness.runs.RunLockedError
        As :func:`run_grid`, before anything starts; :func:`ensure_teacher`'s errors too.
    harness.jobs.JobsInterrupted
        Ctrl-C / SIGTERM stopped the runs (each resumable).

    Example
    -------
    >>> launch = functools.partial(run_pool, slots=2, devices=["cpu"])  # doctest: +SKIP
    >>> outcomes = run_grid_jobs(configs, launch, runs_dir="runs")  # doctest: +SKIP
    """
    from rich.console import Console

    console = console or Console(soft_wrap=True)
    todo = plan_grid(configs, console)
    to_train: dict[str, bool] = {}  # teacher model -> resume

    def defer(model: str, resume: bool) -> None:
        to_train[model] = resume
        raise _TeacherDeferred

    def already_trained(model: str, resume: bool) -> None:
        raise ConfigError(f"teacher run {teacher_run_dir(model, runs_dir)} did not finish; see its train.log")

    teachers: dict[str, Path] = {}
    for model in dict.fromkeys(c.teacher for c, _ in todo if _needs_teacher(c)):
        try:
            given = (teacher_paths or {}).get(model)
            teachers[model] = ensure_teacher(model, runs_dir, defer, min_epochs=min_epochs, given=given)
        except _TeacherDeferred:
            pass
    outcomes: list[JobOutcome] = []
    failed_teachers: dict[str, JobOutcome] = {}
    if to_train:
        jobs = [
            prepare_job(teacher_run_config(m, runs_dir, resume=r, overrides=overrides), f"teacher {m}")
            for m, r in to_train.items()
        ]
        console.rule(f"[bold]{len(jobs)} teacher run(s) first: {', '.join(to_train)}")
        for model, outcome in zip(to_train, launch(jobs)):
            outcomes.append(outcome)
            if outcome.ok:
                teachers[model] = ensure_teacher(model, runs_dir, already_trained, min_epochs=min_epochs)
            else:
                failed_teachers[model] = outcome
    students: list[Job] = []
    for config, _ in todo:
        label = "/".join(Path(config.out_dir).parts[-3:])  # <pair>/<entry>/seed<k>
        if _needs_teacher(config):
            if config.teacher in failed_teachers:
                reason = f"its teacher failed ({failed_teachers[config.teacher].describe()})"
                outcomes.append(JobOutcome(Job(Path(config.out_dir), label), "not started", reason=reason))
                continue
            config = with_overrides(config, {"teacher_checkpoint": str(teachers[config.teacher])})
        students.append(prepare_job(config, label))
    if students:
        console.rule(f"[bold]{len(students)} run(s)")
        outcomes += launch(students)
    return outcomes
