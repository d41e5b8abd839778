"""Reproduction reports: read finished runs, aggregate them over seeds, and write a table and plots.

Runs are read through :mod:`harness.runs` (the run-directory format: ``config.json``, ``metrics.jsonl``
with one record per epoch and accuracies as fractions, ``teacher.json`` with the teacher's accuracy).
No torch here, so ``sld report`` is quick.

Runs are grouped by pair and method, and split further when their configs differ in anything but the
seed and where/how fast they ran (so a 2-epoch smoke test is never averaged with a 240-epoch run).
:func:`summarize` is the one place that aggregates; ``sld reproduce`` and ``sld report`` both use it.

    >>> runs = harness.runs.load_runs(["runs/reproduce"])  # doctest: +SKIP
    >>> for group in summarize(runs):  # doctest: +SKIP
    ...     print(group.label, group.best.mean, group.delta)
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.config import RESUMABLE_FIELDS, ConfigError, OptimConfig, TrainConfig, flat_config
from harness.method_names import NAMED_METHODS, method_label
from harness.recipes import pair_config
from harness.runs import (
    ACCURACY_KEYS,
    BOOKKEEPING_KEYS,
    SWAP_KEYS,
    Run,
    RunDirError,
)

__all__ = [
    "GroupSummary",
    "MeanStd",
    "loss_keys",
    "render_table",
    "summarize",
    "write_markdown",
    "write_plots",
    "write_report",
]

PAPER_EPOCHS = OptimConfig.epochs  # the published CIFAR-100 runs: 240 epochs (MLKD's: 480, its recipe's)
# Config fields that do not change what a run computes (beyond its seed): runs differing only here
# form one group. The same teacher may sit at another path (copied runs, another runs dir).
_SAME_EXPERIMENT = RESUMABLE_FIELDS | {"seed", "teacher_checkpoint"}
# Rows follow the named methods (the main table, then the ablations); other names come last.
_METHOD_ORDER = tuple(NAMED_METHODS)
# The side-by-side table's columns, where runs exist: the seed's main table.
_SIDE_BY_SIDE = ("ce", "kd", "dkd", "mlkd", "ls-mlkd", "sld")
_MISSING = "–"


def loss_keys(runs: Iterable[Run]) -> list[str]:
    """Every loss term recorded by any of ``runs`` (numeric keys that are not accuracies, swap rates
    or bookkeeping), ``loss`` (the total) first."""
    keys: dict[str, None] = {}
    for run in runs:
        for record in run.records:
            for key, value in record.items():
                if key in BOOKKEEPING_KEYS or key in ACCURACY_KEYS or key in SWAP_KEYS:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    keys[key] = None
    return sorted(keys, key=lambda k: (k != "loss", k))


# ------------------------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (n - 1) of n values; ``std`` is None for a single value."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanStd:
        values = [float(v) for v in values]
        return cls(
            statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)
        )

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass(frozen=True)
class GroupSummary:
    """One row of the report: the runs of one pair, method and config, aggregated over seeds.
    Accuracies are percentages, like the published numbers."""

    label: str  # the pair name, or "teacher-student" for runs that were not started from a pair
    pair: str | None
    method: str
    variant: str  # config fields that set this group apart from others of the same pair/method; "" if none
    runs: tuple[Run, ...]
    best: MeanStd  # best-epoch test top-1 (%)
    last: MeanStd  # last-epoch test top-1 (%)
    published: float | None  # harness.paper_results: this pair's number for this method
    teacher: MeanStd | None  # the teacher's test top-1 (%) as the runs measured it
    published_teacher: float | None
    epochs_done: tuple[int, ...]  # per run
    epochs_configured: int
    paper_epochs: int

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.config.seed for r in self.runs)

    @property
    def delta(self) -> float | None:
        """Best-epoch mean minus the published number, in points."""
        return None if self.published is None else self.best.mean - self.published

    @property
    def short(self) -> bool:
        """Trained for fewer epochs than the paper: not comparable with the published number."""
        return max(self.epochs_done) < self.paper_epochs

    @property
    def unfinished(self) -> bool:
        return any(not r.finished for r in self.runs)

    @property
    def limited_data(self) -> bool:
        data = self.runs[0].config.data
        return data.limit_train is not None or data.limit_test is not None

    def flags(self) -> list[str]:
        """Why this row cannot be read as a reproduction of the paper's number, if it cannot."""
        flags = []
        if self.short:
            flags.append(f"short: {_epochs_text(self.epochs_done)}/{self.paper_epochs} epochs")
        if self.unfinished:
            flags.append(f"unfinished: configured for {self.epochs_configured} epochs")
        if self.limited_data:
            data = self.runs[0].config.data
            flags.append(
                f"subset: {data.limit_train or 'all'} train / {data.limit_test or 'all'} test images"
            )
        return flags


def summarize(runs: Iterable[Run]) -> list[GroupSummary]:
    """Group ``runs`` by pair, method and config (seeds and output paths aside) and aggregate each
    group over its seeds: mean and sample std of best-epoch and last-epoch test top-1, the published
    number and the delta. The one aggregation used by ``sld reproduce`` and ``sld report``.

    Returns
    -------
    list[GroupSummary]
        In the order of ``harness.pairs.PAIRS``, then ce, kd, dkd, sld; other runs last.
    """
    from harness.pairs import ALL_PAIRS as PAIRS

    groups: dict[tuple[str, str, tuple[Any, ...]], list[Run]] = {}
    for run in runs:
        fingerprint = tuple(
            sorted((k, v) for k, v in flat_config(run.config).items() if k not in _SAME_EXPERIMENT)
        )
        groups.setdefault((_label(run.config), method_label(run.config), fingerprint), []).append(run)

    summaries = []
    for (label, method, fingerprint), members in groups.items():
        members.sort(key=lambda r: (r.config.seed, str(r.run_dir)))
        siblings = [fp for (lb, m, fp) in groups if (lb, m) == (label, method)]
        config = members[0].config
        pair = PAIRS.get(config.pair) if config.pair else None
        published = _published(pair, method)
        teacher_values = [100 * r.teacher_top1 for r in members if r.teacher_top1 is not None]
        summaries.append(
            GroupSummary(
                label=label,
                pair=config.pair,
                method=method,
                variant=_variant(fingerprint, siblings),
                runs=tuple(members),
                best=MeanStd.of([100 * r.best_top1 for r in members]),
                last=MeanStd.of([100 * r.last_top1 for r in members]),
                published=published.value if published else None,
                teacher=MeanStd.of(teacher_values) if teacher_values else None,
                published_teacher=pair.published.teacher_top1.value
                if pair and pair.published.teacher_top1
                else None,
                epochs_done=tuple(r.epochs_done for r in members),
                epochs_configured=config.optim.epochs,
                paper_epochs=_paper_epochs(pair, method),
            )
        )
    pair_order = {name: i for i, name in enumerate(PAIRS)}
    method_order = {name: i for i, name in enumerate(_METHOD_ORDER)}
    return sorted(
        summaries,
        key=lambda s: (
            pair_order.get(s.pair or "", len(pair_order)),
            s.label,
            method_order.get(s.method, len(method_order)),
            s.variant,
        ),
    )


def _published(pair: Any, method: str) -> Any:
    """The published number of method name ``method`` for ``pair`` (a ``harness.pairs.Pair``), if any."""
    named = NAMED_METHODS.get(method)
    if pair is None or named is None or named.published is None:
        return None
    return getattr(pair.published, named.published)


def _paper_epochs(pair: Any, method: str) -> int:
    """How long the published recipe of ``method`` trains on ``pair`` (480 for MLKD, else 240)."""
    if pair is None:
        return PAPER_EPOCHS
    try:
        return pair_config(pair.name, method).optim.epochs
    except ConfigError:
        return pair.recipe.epochs


def _label(config: TrainConfig) -> str:
    if config.pair:
        return config.pair
    return config.student if config.teacher is None else f"{config.teacher}-{config.student}"


def _variant(fingerprint: tuple[Any, ...], siblings: list[tuple[Any, ...]]) -> str:
    """The fields where this group's config differs from another group of the same pair/method."""
    if len(siblings) < 2:
        return ""
    shared = set.intersection(*(set(fp) for fp in siblings))
    return ", ".join(f"{k}={_short_value(v)}" for k, v in fingerprint if (k, v) not in shared)


def _short_value(value: Any) -> str:
    return (
        ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, tuple)
        else (f"{value:g}" if isinstance(value, float) else str(value))
    )


def _epochs_text(epochs: Sequence[int]) -> str:
    low, high = min(epochs), max(epochs)
    return str(low) if low == high else f"{low}-{high}"


# ------------------------------------------------------------------------------------------------ output

_HEADERS = (
    "pair",
    "method",
    "seeds",
    "epochs",
    "best top-1",
    "last top-1",
    "published",
    "Δ best−pub",
    "teacher",
    "teacher pub",
)


def _row(s: GroupSummary) -> list[str]:
    def num(value: float | None, fmt: str = ".2f") -> str:
        return _MISSING if value is None else format(value, fmt)

    method = s.method if not s.variant else f"{s.method} [{s.variant}]"
    epochs = _epochs_text(s.epochs_done) + ("*" if s.short or s.unfinished else "")
    return [
        s.label,
        method,
        str(len(s.runs)),
        epochs,
        str(s.best),
        str(s.last),
        num(s.published),
        num(s.delta, "+.2f"),
        num(None if s.teacher is None else s.teacher.mean),
        num(s.published_teacher),
    ]


def render_table(summaries: Sequence[GroupSummary], title: str = "test top-1 (%)") -> Any:
    """A Rich table of ``summaries`` (the same rows as REPORT.md)."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=title, box=box.SIMPLE_HEAD, caption=_caption(summaries), pad_edge=False, collapse_padding=True
    )
    for i, header in enumerate(_HEADERS):
        # fold, never "…": a cut-off number is worse than a wrapped one
        table.add_column(header, justify="left" if i < 2 else "right", overflow="fold")
    for s in summaries:
        table.add_row(*_row(s), style="yellow" if s.flags() else None)
    return table


def _caption(summaries: Sequence[GroupSummary]) -> str:
    parts = ["mean ± sample std over seeds; best = best epoch (the published protocol)"]
    if any(s.flags() for s in summaries):
        parts.append("* / yellow: not comparable with the published 240-epoch numbers (see REPORT.md)")
    return "; ".join(parts)


def write_markdown(
    summaries: Sequence[GroupSummary],
    path: str | os.PathLike[str],
    *,
    plots: Sequence[Path] = (),
    broken: Sequence[tuple[Path, str]] = (),
) -> Path:
    """Write REPORT.md: the table, how many epochs were run (flagging rows that cannot be compared
    with the 240-epoch published numbers), one line per run, links to ``plots``, and the ``broken``
    runs (path, reason) that are not in it."""
    path = Path(path)
    lines = [
        "# SLD reproduction report",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from "
        f"{sum(len(s.runs) for s in summaries)} run(s). "
        "Test top-1 in % (CIFAR-100 test set; ImageNet validation set): mean ± sample standard "
        "deviation (n − 1) over seeds. "
        "*Best* is the best epoch's test accuracy (the protocol of the published numbers), *last* the "
        "final epoch's. *Δ* = best-epoch mean − published. *Teacher* is the teacher's test top-1 as "
        "measured at the start of each student run.",
        "",
    ]
    epochs = sorted({e for s in summaries for e in s.epochs_done})
    paper = sorted({s.paper_epochs for s in summaries})
    lines.append(
        f"**Epochs run:** {', '.join(map(str, epochs))} (the published runs train "
        f"{' / '.join(map(str, paper))}: {_paper_epochs_text(summaries)})."
    )
    flagged = [s for s in summaries if s.flags()]
    if flagged:
        lines += [
            "",
            "> **Warning:** the rows marked * were not trained like the published runs "
            "(their recipe's epochs on the full data set); their Δ says nothing about whether the paper "
            "reproduces:",
            ">",
        ]
        lines += [
            f"> - {s.label} {s.method}{' [' + s.variant + ']' if s.variant else ''}: {'; '.join(s.flags())}"
            for s in flagged
        ]
    lines += ["", "| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    lines += ["| " + " | ".join(_row(s)) + " |" for s in summaries]
    lines += [
        "",
        "## Runs",
        "",
        "| run | seed | epochs | best top-1 (epoch) | last top-1 |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        for r in s.runs:
            best_epoch = max(r.records, key=lambda rec: rec["test_top1"])["epoch"]
            lines.append(
                f"| {r.run_dir} | {r.config.seed} | {r.epochs_done}/{r.config.optim.epochs} | "
                f"{100 * r.best_top1:.2f} ({best_epoch}) | {100 * r.last_top1:.2f} |"
            )
    if broken:
        lines += ["", "## Runs that could not be read (not in the table)", ""]
        lines += [f"- `{run_dir}`: {reason}" for run_dir, reason in broken]
    lines += _side_by_side(summaries)
    lines += _sources(summaries)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots]
    lines += [
        "",
        "Published numbers and their sources: `harness/paper_results.py`; "
        f"{_MISSING} = no published number found.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _paper_epochs_text(summaries: Sequence[GroupSummary]) -> str:
    by_epochs: dict[int, list[str]] = {}
    for s in summaries:
        if s.method not in by_epochs.setdefault(s.paper_epochs, []):
            by_epochs[s.paper_epochs].append(s.method)
    return "; ".join(f"{e} for {', '.join(methods)}" for e, methods in sorted(by_epochs.items()))


def _side_by_side(summaries: Sequence[GroupSummary]) -> list[str]:
    """The main methods as columns, one row per pair: our best-epoch mean (published in brackets)."""
    main = [s for s in summaries if s.method in _SIDE_BY_SIDE and not s.variant]
    columns = [m for m in _SIDE_BY_SIDE if any(s.method == m for s in main)]
    if not columns:
        return []
    cells: dict[str, dict[str, str]] = {}
    for s in main:
        published = _MISSING if s.published is None else f"{s.published:.2f}"
        mark = "*" if s.flags() else ""
        cells.setdefault(s.label, {})[s.method] = f"{s.best.mean:.2f}{mark} ({published})"
    lines = [
        "",
        "## Side by side",
        "",
        "Best-epoch test top-1 (%), mean over seeds, with the published number in brackets; * as above.",
        "",
        "| pair | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    lines += [
        "| " + " | ".join([label] + [row.get(m, _MISSING) for m in columns]) + " |"
        for label, row in cells.items()
    ]
    return lines


def _sources(summaries: Sequence[GroupSummary]) -> list[str]:
    """Which published number each method is compared with, and where it was read."""
    from harness.pairs import ALL_PAIRS as PAIRS

    lines = ["", "## Published numbers compared with", ""]
    seen: set[str] = set()
    for s in summaries:
        if s.method in seen:
            continue
        seen.add(s.method)
        named = NAMED_METHODS.get(s.method)
        if named is None or named.published is None:
            lines.append(f"- {s.method} ({_describe(s.method)}): none published")
            continue
        sources = {
            top1.source
            for g in summaries
            if g.method == s.method and g.pair in PAIRS
            for top1 in [getattr(PAIRS[g.pair].published, named.published)]
            if top1 is not None
        }
        where = "; ".join(sorted(sources)) if sources else "no number for these pairs"
        lines.append(f"- {s.method} ({named.description}): {where}")
    return lines


def _describe(method: str) -> str:
    named = NAMED_METHODS.get(method)
    return named.description if named else "a combination of switches outside the named methods"


def write_plots(summaries: Sequence[GroupSummary], out_dir: str | os.PathLike[str]) -> list[Path]:
    """One PNG per metric group (accuracy, loss terms, swap rates), one panel per metric, one line per
    group of runs: the mean with a ±std band where the group has several seeds. Returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [r for s in summaries for r in s.runs]
    figures = {
        "accuracy": [k for k in ACCURACY_KEYS if _recorded(runs, k)],
        "losses": loss_keys(runs),
        "swap_rates": [k for k in SWAP_KEYS if _recorded(runs, k)],
    }
    written = []
    for name, keys in figures.items():
        if keys:
            path = out_dir / f"{name}.png"
            _plot_panels(summaries, keys, path, percent=name == "accuracy")
            written.append(path)
    return written


def _recorded(runs: Sequence[Run], key: str) -> bool:
    return any(key in rec for r in runs for rec in r.records)


def _plot_panels(
    summaries: Sequence[GroupSummary], keys: Sequence[str], path: Path, *, percent: bool
) -> None:
    # Figure without pyplot: no global state and no GUI backend, whatever MPLBACKEND says.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig = Figure(figsize=(5 * columns, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    scale = 100.0 if percent else 1.0
    for ax, key in zip(axes, keys):
        # A group keeps its colour in every panel, also in panels where other groups have no line.
        for color, s in enumerate(summaries):
            epochs, mean, std = _curve(s.runs, key)
            if not epochs:
                continue
            mean = [scale * m for m in mean]
            label = f"{s.label} {s.method}{' [' + s.variant + ']' if s.variant else ''} (n={len(s.runs)})"
            marker = "o" if len(epochs) <= 30 else None
            ax.plot(epochs, mean, color=f"C{color}", marker=marker, markersize=3, label=label)
            if any(v is not None for v in std):
                lo = [m - scale * (v or 0.0) for m, v in zip(mean, std)]
                hi = [m + scale * (v or 0.0) for m, v in zip(mean, std)]
                ax.fill_between(epochs, lo, hi, color=f"C{color}", alpha=0.2, linewidth=0)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("%" if percent else "per image")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, max(r.epochs_done for s in summaries for r in s.runs) + 0.5)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(3, len(handles)))
    fig.suptitle("mean over seeds; band: ± sample std" if any(len(s.runs) > 1 for s in summaries) else "")
    fig.savefig(path, dpi=100)


def _curve(runs: Sequence[Run], key: str) -> tuple[list[int], list[float], list[float | None]]:
    """Per epoch, the mean and sample std of ``key`` over the runs that recorded it that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for rec in run.records:
            if isinstance(rec.get(key), (int, float)):
                by_epoch.setdefault(int(rec["epoch"]), []).append(float(rec[key]))
    epochs = sorted(by_epoch)
    stats = [MeanStd.of(by_epoch[e]) for e in epochs]
    return epochs, [m.mean for m in stats], [m.std for m in stats]


def write_report(
    runs: Sequence[Run],
    out_dir: str | os.PathLike[str],
    console: Any = None,
    *,
    broken: Sequence[tuple[Path, str]] = (),
) -> list[GroupSummary]:
    """Summarize ``runs``, write ``out_dir/REPORT.md`` and the plots, and print the table on
    ``console`` (a Rich console; a new one on stdout by default). ``broken`` (path, reason) are runs
    that could not be read (:func:`harness.runs.scan_runs`): REPORT.md lists them. Returns the
    summaries."""
    from rich.console import Console

    if not runs:
        raise RunDirError("no runs to report")
    out_dir = Path(out_dir)
    summaries = summarize(runs)
    plots = write_plots(summaries, out_dir)
    report = write_markdown(summaries, out_dir / "REPORT.md", plots=plots, broken=broken)
    console = console or Console()
    table = render_table(summaries)
    width = console.width
    if not console.is_terminal:  # a log or pipe has no width limit, but Rich assumes 80 columns
        from rich.measure import Measurement

        console.width = max(
            width, Measurement.get(console, console.options.update_width(1000), table).maximum
        )
    try:
        console.print(table)
    finally:
        console.width = width
    console.print(f"report: {report}; plots: {', '.join(p.name for p in plots)}")
    return summaries
