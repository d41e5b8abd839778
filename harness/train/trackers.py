"""Experiment trackers: where a run's records go besides ``metrics.jsonl`` (``sld train --log
csv,tensorboard,wandb``, ``TrainConfig.trackers``).

Every tracker has the one interface the training loop calls (:class:`Tracker`): :meth:`~Tracker.start`
with the run (its resolved config as hyper-parameters, a name and tags from the pair, method and seed),
:meth:`~Tracker.log_epoch` with each epoch's metric record once it is committed (after ``last.pt``),
:meth:`~Tracker.log_step` with the step scalars (the loss and the lr every ``log_every`` steps, read at
the host sync the loop does anyway: no tracker adds a device sync) and :meth:`~Tracker.finish`. Only
rank 0 tracks. A resumed run continues its trackers' records: rows, events and W&B history past the
epoch ``last.pt`` holds are dropped or superseded.

- ``csv``: ``metrics.csv`` (the records of ``metrics.jsonl``) and ``steps.csv``
  (:data:`harness.runs.STEP_COLUMNS`), written through :class:`harness.runs.RunDir`;
- ``tensorboard``: event files under ``OUT/tensorboard/`` through ``torch.utils.tensorboard``
  (package ``tensorboard``: the ``tensorboard`` extra): ``epochs/`` (tags ``epoch/<key>``, step =
  epoch; the config as hyper-parameters and as text) and ``steps/`` (``step/loss``, ``step/lr``, step =
  the global step);
- ``wandb``: a W&B run (package ``wandb``: the ``wandb`` extra) in ``OUT/wandb/``, keys
  ``epoch/<key>`` against ``epoch`` and ``step/<key>`` against ``global_step``; ``WANDB_MODE=offline``
  works without a network (``wandb sync OUT/wandb/offline-run-*`` uploads it later), ``WANDB_PROJECT``
  names the project (default ``sld``). A resumed run continues the same W&B run (its id is derived
  from the run directory and its first start).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.config import TRACKERS, ConfigError, TrainConfig, flat_config, train_config_to_dict
from harness.method_names import method_label
from harness.runs import RunDir

__all__ = [
    "CsvTracker",
    "RunMeta",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "check_installed",
    "make_trackers",
    "run_meta",
]

# tracker -> (the package it imports, the extra of this project that installs it)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
_PROJECT = "swapped-logit-distillation"
_HPARAM_METRICS = ("test_top1", "test_top5", "test_loss", "best_test_top1")  # the hparams table's columns


@dataclass(frozen=True)
class RunMeta:
    """What a tracker learns when a run (or a resumed run) starts."""

    run: RunDir
    config: TrainConfig
    name: str  # e.g. "wrn40_2-wrn16_2/sld/seed0"
    group: str  # the run without its seed, e.g. "wrn40_2-wrn16_2/sld": seeds of one experiment
    tags: tuple[str, ...]
    first_epoch: int  # the epoch this session trains first (> 1 when resumed)
    steps_per_epoch: int
    run_id: str  # stable over the run's sessions (a resumed run keeps it)


def run_meta(
    run: RunDir, config: TrainConfig, *, first_epoch: int, steps_per_epoch: int, started: str | None
) -> RunMeta:
    """The :class:`RunMeta` of ``config``'s run: the name and tags from the pair (or the student), the
    method's name (:func:`harness.method_names.method_label`) and the seed; ``started`` (the run's
    first start, from ``run.json``) makes the id stable across resumes.

    Example
    -------
    >>> meta = run_meta(RunDir("runs/x"), config, first_epoch=1, steps_per_epoch=782,
    ...                 started="2025-01-01T00:00:00+00:00")  # doctest: +SKIP
    >>> meta.name  # doctest: +SKIP
    'wrn40_2-wrn16_2/sld/seed0'
    """
    label = method_label(config)
    subject = config.pair or config.student
    group = f"{subject}/{label}"
    tags = [subject, label, config.method, f"seed{config.seed}", f"views{config.data.views}",
            config.data.dataset]
    identity = f"{run.path.resolve()}|{started}"
    return RunMeta(
        run=run,
        config=config,
        name=f"{group}/seed{config.seed}",
        group=group,
        tags=tuple(dict.fromkeys(tags)),
        first_epoch=first_epoch,
        steps_per_epoch=steps_per_epoch,
        run_id=hashlib.sha256(identity.encode()).hexdigest()[:16],
    )


class Tracker:
    """One destination of a run's records. Subclasses implement every method; the loop calls
    :meth:`start` once, then :meth:`log_step` / :meth:`log_epoch` as the run goes, then :meth:`finish`
    (also when the run fails or is interrupted, with ``ok=False``)."""

    name = ""

    def start(self, meta: RunMeta) -> None:
        raise NotImplementedError

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One epoch's metric record (``metrics.jsonl``'s), after its checkpoint is written."""
        raise NotImplementedError

    def log_step(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        """Scalars at global step ``step`` (1, 2, ... over the run) of ``epoch``: ``loss`` (the mean
        per image since the previous call) and ``lr``."""
        raise NotImplementedError

    def finish(self, ok: bool) -> None:
        raise NotImplementedError


class CsvTracker(Tracker):
    """``metrics.csv`` (rewritten whole each epoch, as ``metrics.jsonl`` is) and ``steps.csv``
    (appended every ``log_every`` steps)."""

    name = "csv"

    def __init__(self) -> None:
        self._run: RunDir | None = None
        self._records: list[dict[str, Any]] = []

    def start(self, meta: RunMeta) -> None:
        self._run = meta.run
        done = meta.first_epoch - 1
        # metrics.jsonl already agrees with last.pt here (the loop repaired it): its records are the rows.
        self._records = meta.run.read_metrics()[:done] if done > 0 else []
        meta.run.trim_steps(done)
        meta.run.write_metrics_csv(self._records)

    def log_epoch(self, record: dict[str, Any]) -> None:
        assert self._run is not None, "start() first"
        self._records.append(record)
        self._run.write_metrics_csv(self._records)

    def log_step(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        assert self._run is not None, "start() first"
        self._run.append_steps([{"step": step, "epoch": epoch, **scalars}])

    def finish(self, ok: bool) -> None:
        self._run = None


class TensorBoardTracker(Tracker):
    """Event files through ``torch.utils.tensorboard``: ``tensorboard/epochs`` and ``tensorboard/steps``
    (two writers, so that a resumed run purges each one's events from its own restart step)."""

    name = "tensorboard"

    def __init__(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        self._writer_class = SummaryWriter
        self._epochs: Any = None
        self._steps: Any = None

    def start(self, meta: RunMeta) -> None:
        from torch.utils.tensorboard.summary import hparams

        resumed = meta.first_epoch > 1
        root = meta.run.tensorboard_dir
        # purge_step: events a crashed session wrote past the resumed epoch are hidden, not doubled.
        self._epochs = self._writer_class(
            str(root / "epochs"), purge_step=meta.first_epoch if resumed else None
        )
        first_step = (meta.first_epoch - 1) * meta.steps_per_epoch + 1
        self._steps = self._writer_class(str(root / "steps"), purge_step=first_step if resumed else None)
        if not resumed:
            params = {key: _hparam_value(value) for key, value in flat_config(meta.config).items()}
            metrics = {f"epoch/{key}": 0.0 for key in _HPARAM_METRICS}  # tags the hparams view reads
            for summary in hparams(params, metrics):
                self._epochs.file_writer.add_summary(summary)
            config_json = json.dumps(train_config_to_dict(meta.config), indent=2)
            self._epochs.add_text("config", f"```\n{config_json}\n```")
            self._epochs.add_text("run", f"{meta.name} (tags: {', '.join(meta.tags)})")
        self._epochs.flush()

    def log_epoch(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for key, value in _scalars(record).items():
            self._epochs.add_scalar(f"epoch/{key}", value, epoch)
        self._epochs.flush()  # once per epoch: TensorBoard shows the epoch while the next one trains
        self._steps.flush()

    def log_step(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self._steps.add_scalar(f"step/{key}", value, step)

    def finish(self, ok: bool) -> None:
        for writer in (self._epochs, self._steps):
            if writer is not None:
                writer.close()
        self._epochs = self._steps = None


class WandbTracker(Tracker):
    """A W&B run in ``OUT/wandb/``: the config as its config, name/group/tags from the run."""

    name = "wandb"

    def __init__(self) -> None:
        self._wandb = importlib.import_module("wandb")  # ImportError without the wandb package
        self._run: Any = None

    def start(self, meta: RunMeta) -> None:
        wandb = self._wandb
        try:
            self._run = wandb.init(
                dir=str(meta.run.path),
                project=os.environ.get("WANDB_PROJECT", "sld"),
                name=meta.name,
                group=meta.group,
                tags=list(meta.tags),
                config=train_config_to_dict(meta.config),
                id=meta.run_id,
                resume="allow",
                job_type="train",
                # No stdout capture: W&B's console wrapper would interleave with the progress bar.
                settings=wandb.Settings(console="off"),
            )
        except wandb.errors.Error as exc:
            raise ConfigError(
                f"--log wandb: W&B could not start a run ({exc}); log in with `wandb login`, or set "
                f"WANDB_MODE=offline to keep the run in {meta.run.wandb_dir} (`wandb sync` uploads it later)"
            ) from None
        self._run.define_metric("epoch")
        self._run.define_metric("epoch/*", step_metric="epoch")
        self._run.define_metric("global_step")
        self._run.define_metric("step/*", step_metric="global_step")

    def log_epoch(self, record: dict[str, Any]) -> None:
        scalars = {f"epoch/{key}": value for key, value in _scalars(record).items()}
        self._run.log({"epoch": int(record["epoch"]), **scalars})

    def log_step(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        self._run.log({"global_step": step, **{f"step/{key}": value for key, value in scalars.items()}})

    def finish(self, ok: bool) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if ok else 1)
            self._run = None


_CLASSES: dict[str, type[Tracker]] = {
    "csv": CsvTracker,
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}
assert tuple(_CLASSES) == TRACKERS  # one class per name the config accepts


class Trackers:
    """The trackers of a run, called as one (the loop holds one of these; empty on ranks other than 0
    and when the config names none).

    A tracker that fails to :meth:`start` stops the run before it trains (the error propagates). One
    that fails later (a full disk, a lost connection) is dropped with a warning on ``console`` and the
    run goes on: ``metrics.jsonl`` is the record, and under DDP an error on rank 0 alone must not leave
    the other ranks waiting. :meth:`finish` closes every started tracker, also after an error."""

    def __init__(self, trackers: Sequence[Tracker] = (), console: Any = None) -> None:
        self._trackers = list(trackers)
        self._started: list[Tracker] = []
        self.console = console  # a rich Console for the warnings (None: stderr)

    def __bool__(self) -> bool:
        return bool(self._trackers)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._trackers]

    def start(self, meta: RunMeta) -> None:
        for tracker in self._trackers:
            tracker.start(meta)
            self._started.append(tracker)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for tracker in list(self._started):
            self._guard(tracker, "log_epoch", lambda t=tracker: t.log_epoch(record))

    def log_step(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        for tracker in list(self._started):
            self._guard(tracker, "log_step", lambda t=tracker: t.log_step(step, epoch, scalars))

    def finish(self, ok: bool) -> None:
        started, self._started = self._started, []
        for tracker in started:
            self._guard(tracker, "finish", lambda t=tracker: t.finish(ok), drop=False)

    def _guard(self, tracker: Tracker, what: str, call: Any, *, drop: bool = True) -> None:
        try:
            call()
        except Exception as exc:  # any tracker failure: warn, keep training
            if drop and tracker in self._started:
                self._started.remove(tracker)
            message = (
                f"warning: tracker {tracker.name} failed in {what} ({type(exc).__name__}: {exc}); "
                f"{'it is off for the rest of the run; ' if drop else ''}metrics.jsonl is unaffected"
            )
            if self.console is not None:
                from rich.text import Text

                self.console.print(Text(message, style="bold yellow"))
            else:
                print(message, file=sys.stderr)


def check_installed(names: Iterable[str]) -> None:
    """Each named tracker's package is installed (found, not imported: this stays fast).

    Raises
    ------
    ConfigError
        One line naming the tracker, its package and the extra that installs it.

    Example
    -------
    >>> check_installed(["csv"])  # needs nothing beyond the harness
    """
    for name in names:
        if name in _PACKAGES and not _installed(_PACKAGES[name][0]):
            raise _missing(name)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec (or None)
        return False


def _missing(name: str) -> ConfigError:
    package, extra = _PACKAGES[name]
    return ConfigError(
        f"--log {name} needs the {package} package: pip install '{_PROJECT}[{extra}]' "
        f"(or pip install {package})"
    )


def make_trackers(names: Sequence[str]) -> Trackers:
    """The trackers ``names`` (:data:`harness.config.TRACKERS`) name, their packages imported now, so a
    missing one stops the run before anything is loaded.

    Raises
    ------
    ConfigError
        An unknown name, or a tracker whose package is not installed (one line naming the extra that
        installs it).

    Example
    -------
    >>> make_trackers(["csv"]).names
    ['csv']
    """
    trackers = []
    for name in names:
        cls = _CLASSES.get(name)
        if cls is None:
            raise ConfigError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        try:
            trackers.append(cls())
        except ImportError:
            raise _missing(name) from None
    return Trackers(trackers)


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metric record, ``epoch`` aside (it is the step)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _hparam_value(value: Any) -> int | float | str | bool:
    """A config value as TensorBoard's hparams take it (numbers, strings, bools): lists and null as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)
