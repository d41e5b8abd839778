"""Reproduction reports: read finished runs, aggregate them over seeds, and write a table and plots.

Runs are read through :mod:`harness.runs` (the run-directory format: ``config.json``, ``metrics.jsonl``
with one record per epoch and accuracies as fractions, ``teacher.json`` with the teacher's accuracy).
No torch here, so ``sld report`` is quick.

Runs are grouped by pair and method, and split further when their configs differ in anything but the
seed and where/how fast they ran (so a 2-epoch smoke test is never averaged with a 240-epoch run).
:func:`summarize` is the one place that aggregates; ``sld reproduce`` and ``sld report`` both use it.
:func:`figures` draws the curves and the method comparison (:func:`term_panel` names each loss term).

    >>> runs = harness.runs.load_runs(["runs/reproduce"])  # doctest: +SKIP
    >>> for group in summarize(runs):  # doctest: +SKIP
    ...     print(group.label, group.best.mean, group.delta)
"""

from __future__ import annotations

import math
import os
import statistics
import textwrap
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
    "Panel",
    "figures",
    "loss_keys",
    "loss_terms",
    "render_table",
    "summarize",
    "term_panel",
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
    "views",
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
        str(_views(s)),
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
    parts = [
        "mean ± sample std over seeds; best = best epoch (the published protocol); views: of each image, "
        "loss summed (1 weak, 2 weak + strong)"
    ]
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
        "measured at the start of each student run. *Views*: how many views of each training image the "
        "loss is summed over (1: the weak view; 2: weak + strong, as the official SLD and MLKD recipes "
        "train), so a comparison says what it compares.",
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
        "Best-epoch test top-1 (%), mean over seeds, with the published number in brackets; * as above. "
        "Views per image: "
        + ", ".join(
            f"{m} {'/'.join(map(str, sorted({_views(s) for s in main if s.method == m})))}" for m in columns
        )
        + ".",
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


# ------------------------------------------------------------------------------------------------- plots

# Readable names of the metrics.jsonl keys: (panel title, what the number is). Loss terms are per-image
# means over the epoch, summed over the run's views (the legend says how many); "T²-weighted" terms sum
# T² · KL over the method's temperatures. Keys not listed keep their own name.
_TERMS: dict[str, tuple[str, str]] = {
    "loss": ("total loss", "the loss_* terms summed, weights included (what backward sees)"),
    "test_loss": ("test loss (on the test set)", "per test image"),
    "loss_ce": ("cross-entropy term", "ce_weight × CE"),
    "loss_kd": ("MLKD: instance-level KD term", "kd_weight × Σ_T T²·KL, the weak view's row-masked"),
    "loss_dkd": ("DKD term", "warm-up × (α·TCKD + β·NCKD)"),
    "loss_cc": ("MLKD: class-correlation term", "kd_weight × Σ_T cc, class-masked; weak view only"),
    "loss_bc": ("MLKD: batch-correlation term", "kd_weight × Σ_T bc, row-masked; weak view only"),
    "loss_pseudo": ("pseudo-teacher term", "kd_weight × Σ_T T²·KL(swap(s) ‖ s); 0 until γ"),
    "ce": ("cross-entropy with the labels", "CE, before ce_weight"),
    "kl_teacher": (
        "KL to the teacher",
        "Σ_T T²·KL(teacher ‖ student), before kd_weight; the teacher as processed (sld: swapped)",
    ),
    "kl_pseudo": (
        "KL to the pseudo-teacher",
        "Σ_T T²·KL(swap(student) ‖ student), before kd_weight; 0 until γ",
    ),
    "tckd": ("DKD: target-class KL (TCKD)", "T²·KL, before α and the warm-up"),
    "nckd": ("DKD: non-target KL (NCKD)", "T²·KL, before β and the warm-up"),
    "pseudo_tckd": ("DKD: TCKD to the pseudo-teacher", "T²·KL, before α and the warm-up; 0 until γ"),
    "pseudo_nckd": ("DKD: NCKD to the pseudo-teacher", "T²·KL, before β and the warm-up; 0 until γ"),
    "test_top1": ("test top-1", "% of the test images"),
    "test_top5": ("test top-5", "% of the test images"),
    "train_top1": ("train top-1 (weak view)", "% of the training images"),
    "teacher_swap_rate": (
        "teacher wrong: rows the swap corrects",
        "fraction of the training rows, every view",
    ),
    "teacher_processed_rate": (
        "rows the conditional swap swaps",
        "fraction of the training rows, every view",
    ),
    "student_swap_rate": (
        "student wrong: rows the pseudo-teacher swaps",
        "fraction of the training rows, every view",
    ),
}
_PER_VIEW_SUM = "per image, summed over the views"
_NOT_SUMMED = frozenset({"loss_cc", "loss_bc", "test_loss"})  # batch-level, or on the test set
_TERM_ORDER = tuple(_TERMS)
_WRAP = 48  # characters per line of an axis label


@dataclass(frozen=True)
class Panel:
    """One panel of a figure: the curve ``key`` (a metrics.jsonl key, or ``loss`` for the total),
    its title and what its numbers are; ``zoom``: only the epochs from the first lr decay on."""

    key: str
    title: str
    unit: str
    zoom: bool = False


def term_panel(key: str) -> Panel:
    """The panel of metrics key ``key``: a readable title and a unit line (loss terms: per image,
    summed over the views, with the weights or T² factors they carry).

    >>> term_panel("kl_pseudo").title
    'KL to the pseudo-teacher'
    >>> term_panel("my_term").title  # a key the report does not know keeps its name
    'my_term'
    """
    title, unit = _TERMS.get(key, (key, "as recorded"))
    if key not in _NOT_SUMMED and key not in ACCURACY_KEYS and key not in SWAP_KEYS:
        unit = f"{unit}; {_PER_VIEW_SUM}"
    return Panel(key, title, unit)


def loss_terms(runs: Sequence[Run]) -> dict[str, str]:
    """The loss panels of one group of runs: panel key -> the metrics key its curve reads. ``loss`` (the
    total) stands for a method's only ``loss_*`` term, which is the same curve (kd's ``loss_kd``, sld's
    ``loss_sld``, ce's ``loss_ce``); runs that did not record ``loss`` get it from that term.

    >>> from harness.runs import Run  # doctest: +SKIP
    >>> loss_terms(sld_runs)  # doctest: +SKIP
    {'loss': 'loss', 'ce': 'ce', 'kl_teacher': 'kl_teacher', 'kl_pseudo': 'kl_pseudo'}
    """
    keys = loss_keys(runs)
    weighted = [k for k in keys if k.startswith("loss_")]
    terms: dict[str, str] = {}
    if "loss" in keys:
        terms["loss"] = "loss"
    elif len(weighted) == 1:
        terms["loss"] = weighted[0]
    for key in keys:
        if key == "loss" or (len(weighted) == 1 and key == weighted[0]):
            continue
        terms[key] = key
    return terms


def _term_order(key: str) -> tuple[int, str]:
    return (_TERM_ORDER.index(key) if key in _TERM_ORDER else len(_TERM_ORDER), key)


def figures(summaries: Sequence[GroupSummary]) -> dict[str, Any]:
    """The report's figures (matplotlib ``Figure`` objects, not yet written) by file name, one row (or
    file) per pair, one colour per method, each line the mean over seeds with a ±std band where a group
    has several:

    - ``accuracy.png``: test top-1 (with the teacher's accuracy and each method's published number as
      horizontal lines, the best epoch starred), the same from the first lr decay on (zoomed), test
      top-5, train top-1;
    - ``losses.png`` (``losses_<pair>.png`` for several pairs): one panel per loss term, with a readable
      title and what it measures (:func:`term_panel`); the total once (:func:`loss_terms`);
    - ``swap_rates.png``: the teacher's and the student's swap rates, as fractions on a 0-1 axis;
    - ``methods.png``: per pair, best-epoch test top-1 per method (mean ± std over seeds) beside the
      published number and the teacher.

    Legends give each method's views. The lr milestones and γ (the epoch after which the pseudo-teacher
    joins) are vertical marks on the curves of the runs they belong to.

    Example
    -------
    >>> figs = figures(summarize(load_runs(["runs/reproduce"])))  # doctest: +SKIP
    >>> [ax.get_title() for ax in figs["methods.png"].axes]  # doctest: +SKIP
    """
    rows = _by_label(summaries)
    runs = [r for s in summaries for r in s.runs]
    colors = _colors(summaries)
    out: dict[str, Any] = {}
    accuracy = [term_panel(k) for k in ACCURACY_KEYS if _recorded(runs, k)]
    if accuracy and accuracy[0].key == "test_top1":
        zoom = Panel("test_top1", "test top-1, from the first lr decay on", accuracy[0].unit, zoom=True)
        accuracy.insert(1, zoom)
    if accuracy:
        out["accuracy.png"] = _plot_rows(rows, accuracy, colors, kind="accuracy")
    for label, groups in rows.items():
        panels = sorted({k for g in groups for k in loss_terms(g.runs)}, key=_term_order)
        if panels:
            name = "losses.png" if len(rows) == 1 else f"losses_{_file_name(label)}.png"
            out[name] = _plot_rows({label: groups}, [term_panel(k) for k in panels], colors, kind="loss")
    swaps = [term_panel(k) for k in SWAP_KEYS if _recorded(runs, k)]
    if swaps:
        out["swap_rates.png"] = _plot_rows(rows, swaps, colors, kind="swap")
    out["methods.png"] = _plot_methods(rows, colors)
    return out


def write_plots(summaries: Sequence[GroupSummary], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write :func:`figures` into ``out_dir`` as PNGs; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures(summaries).items():
        fig.savefig(out_dir / name, dpi=100)
        written.append(out_dir / name)
    return written


def _by_label(summaries: Sequence[GroupSummary]) -> dict[str, list[GroupSummary]]:
    rows: dict[str, list[GroupSummary]] = {}
    for s in summaries:
        rows.setdefault(s.label, []).append(s)
    return rows


def _colors(summaries: Sequence[GroupSummary]) -> dict[tuple[str, str], str]:
    """One colour per method (and variant), the same in every figure and row."""
    colors: dict[tuple[str, str], str] = {}
    for s in summaries:
        colors.setdefault((s.method, s.variant), f"C{len(colors) % 10}")
    return colors


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _views(s: GroupSummary) -> int:
    return s.runs[0].config.data.views


def _group_label(s: GroupSummary) -> str:
    views = _views(s)
    variant = f" [{s.variant}]" if s.variant else ""
    return f"{s.method}{variant} · {views} view{'s' if views > 1 else ''} (n={len(s.runs)})"


def _recorded(runs: Sequence[Run], key: str) -> bool:
    return any(key in rec for r in runs for rec in r.records)


def _gamma(s: GroupSummary) -> float | None:
    """γ of a group whose method has a pseudo-teacher, else None."""
    loss = s.runs[0].config.loss
    return float(loss.gamma) if getattr(loss, "pseudo_teacher", False) else None


def _schedule_marks(
    ax: Any, groups: Sequence[GroupSummary], colors: dict[tuple[str, str], str], last: int, first: float
) -> tuple[bool, bool]:
    """Vertical marks between epoch m and m + 1 for ``groups`` (those drawn in ``ax``): the lr decays
    after each milestone m, the pseudo-teacher joins after epoch γ; only marks between ``first`` and
    ``last`` (the plotted x range).
    Returns whether an lr mark and a γ mark were drawn."""
    from matplotlib.transforms import blended_transform_factory

    on_axes = blended_transform_factory(ax.transData, ax.transAxes)
    milestones = {
        m for s in groups for r in s.runs for m in r.config.optim.lr_milestones if first < m + 0.5 < last
    }
    gammas: dict[float, list[GroupSummary]] = {}
    for s in groups:
        gamma = _gamma(s)
        if gamma is not None and first < gamma + 0.5 < last:
            gammas.setdefault(gamma, []).append(s)
    labels: dict[float, list[tuple[str, str]]] = {}
    for m in sorted(milestones):
        ax.axvline(m + 0.5, color="0.55", linestyle=":", linewidth=1, zorder=1)
        labels.setdefault(m + 0.5, []).append(("lr↓", "0.4"))
    several = len({_gamma(s) for s in groups} - {None}) > 1  # then each in its method's colour
    for gamma, users in gammas.items():
        color = colors[(users[0].method, users[0].variant)] if several else "black"
        ax.axvline(gamma + 0.5, color=color, linestyle="-.", linewidth=1.2, zorder=1)
        labels.setdefault(gamma + 0.5, []).append((f"γ={gamma:g}", color))
    for x, parts in labels.items():  # one label per position, "lr↓ γ=150" where they coincide
        for k, (text, color) in enumerate(parts):
            ax.text(
                x,
                0.995 - 0.06 * k,
                f" {text}",
                transform=on_axes,
                fontsize=7,
                color=color,
                va="top",
                ha="left",
                bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "alpha": 0.7, "linewidth": 0},
            )
    return bool(milestones), bool(gammas)


def _best_epoch(epochs: Sequence[int], mean: Sequence[float]) -> tuple[int, float]:
    best = max(range(len(mean)), key=lambda i: (mean[i], -i))  # the first epoch with the highest mean
    return epochs[best], mean[best]


def _teacher_reference(groups: Sequence[GroupSummary]) -> tuple[float, str] | None:
    """The teacher's test top-1 (%) for a row and where it comes from: as the runs measured it, else
    the published number."""
    measured = [100 * r.teacher_top1 for s in groups for r in s.runs if r.teacher_top1 is not None]
    if measured:
        return statistics.fmean(measured), "measured"
    published = [s.published_teacher for s in groups if s.published_teacher is not None]
    return (published[0], "published") if published else None


def _zoom_start(groups: Sequence[GroupSummary], last: int) -> float:
    """Where a zoomed panel starts: just before the first lr decay, else at the last third."""
    milestones = [m for s in groups for r in s.runs for m in r.config.optim.lr_milestones if m < last]
    return (min(milestones) if milestones else math.floor(2 * last / 3)) + 0.5 - 0.02 * last


def _plot_rows(
    rows: dict[str, list[GroupSummary]],
    panels: Sequence[Panel],
    colors: dict[tuple[str, str], str],
    *,
    kind: str,
) -> Any:
    """A figure of curves: one row per pair (a subfigure titled with it), one column per panel."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    columns = min(4 if kind == "accuracy" else 3, len(panels))
    lines_per_row = math.ceil(len(panels) / columns)
    width = 4.6 if columns == 4 else 5.2
    fig = Figure(
        figsize=(width * columns, (3.9 * lines_per_row + 0.5) * len(rows) + 1.1), layout="constrained"
    )
    subfigs = fig.subfigures(len(rows), 1, squeeze=False).ravel()
    drawn: set[str] = set()
    marks = {"best": False, "published": False, "teacher": False, "gamma": False, "lr": False}
    for subfig, (label, groups) in zip(subfigs, rows.items()):
        axes = subfig.subplots(lines_per_row, columns, squeeze=False).ravel()
        last = max(r.epochs_done for s in groups for r in s.runs)
        for ax, panel in zip(axes, panels):
            percent = panel.key in ACCURACY_KEYS
            scale = 100.0 if percent else 1.0
            first = _zoom_start(groups, last) if panel.zoom else 0.5
            zoom_pad = 0.02 * last if panel.zoom else 0.0  # the x margin before the first decay
            shown: list[GroupSummary] = []
            in_view: list[float] = []  # the y values inside the panel's epochs (a zoom sets its own limits)
            for s in groups:
                key = loss_terms(s.runs).get(panel.key) if kind == "loss" else panel.key
                epochs, mean, std = _curve(s.runs, key) if key else ([], [], [])
                if not epochs:
                    continue
                shown.append(s)
                drawn.add(_group_label(s))
                color = colors[(s.method, s.variant)]
                mean = [scale * m for m in mean]
                visible = sum(first < e for e in epochs)
                marker = "o" if visible <= 30 else None
                ax.plot(epochs, mean, color=color, marker=marker, markersize=3, zorder=3)
                lo, hi = mean, mean
                if any(v is not None for v in std):
                    lo = [m - scale * (v or 0.0) for m, v in zip(mean, std)]
                    hi = [m + scale * (v or 0.0) for m, v in zip(mean, std)]
                    ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
                in_view += [v for e, a, b in zip(epochs, lo, hi) if e > first + zoom_pad for v in (a, b)]
                if panel.key == "test_top1":
                    best_epoch, best = _best_epoch(epochs, mean)
                    ax.plot(
                        [best_epoch],
                        [best],
                        marker="*",
                        markersize=13,
                        color=color,
                        markeredgecolor="black",
                        markeredgewidth=0.6,
                        linestyle="none",
                        zorder=4,
                    )
                    marks["best"] = True
                    if s.published is not None:
                        ax.axhline(s.published, color=color, linestyle=(0, (1, 1.5)), linewidth=1.4, zorder=2)
                        in_view.append(s.published)
                        marks["published"] = True
            if not shown:  # e.g. the teacher's swap rate in a row of runs without a teacher
                ax.text(0.5, 0.5, "not recorded by these runs", transform=ax.transAxes, ha="center",
                        va="center", color="0.45")
            if panel.key == "test_top1" and shown:
                teacher = _teacher_reference(shown)
                if teacher is not None:  # its value is in the row's title
                    ax.axhline(teacher[0], color="0.3", linestyle="--", linewidth=1.2, zorder=2)
                    in_view.append(teacher[0])
                    marks["teacher"] = True
            if kind == "swap":
                ax.set_ylim(0.0, 1.0)
            elif panel.zoom and in_view:
                low, high = min(in_view), max(in_view)
                pad = max(0.2, 0.08 * (high - low))
                ax.set_ylim(low - pad, high + pad)
            lr, gamma = _schedule_marks(ax, shown, colors, last, first)
            marks["lr"] = marks["lr"] or lr
            marks["gamma"] = marks["gamma"] or gamma
            ax.set_title(panel.title, fontsize=11, pad=4 + 10 * _unit_lines(panel.unit))
            ax.text(
                0.5,
                1.01,
                textwrap.fill(panel.unit, _WRAP),
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                fontsize=7.5,
                color="0.35",
            )
            ax.set_ylabel(_ylabel(panel.key, kind))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlim(first, last + 0.5)
            ax.grid(alpha=0.3)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        subfig.suptitle(_row_title(label, groups), fontsize=12, fontweight="bold")
    legend: dict[str, Any] = {}
    for groups in rows.values():  # the report's order (pairs, then the named methods)
        for s in groups:
            name = _group_label(s)
            if name in drawn:
                legend.setdefault(
                    name, Line2D([], [], color=colors[(s.method, s.variant)], marker="o", markersize=3)
                )
    if marks["best"]:
        legend["★ best epoch (of the mean over seeds)"] = Line2D(
            [], [], marker="*", markersize=11, color="0.5", markeredgecolor="black", linestyle="none"
        )
    if marks["published"]:
        legend["published top-1 (in the method's colour)"] = Line2D(
            [], [], color="0.3", linestyle=(0, (1, 1.5)), linewidth=1.4
        )
    if marks["teacher"]:
        legend["teacher's test top-1"] = Line2D([], [], color="0.3", linestyle="--", linewidth=1.2)
    if marks["lr"]:
        legend["lr ×0.1 after this epoch"] = Line2D([], [], color="0.55", linestyle=":", linewidth=1)
    if marks["gamma"]:
        legend["γ: the pseudo-teacher joins after this epoch (several: in each method's colour)"] = Line2D(
            [], [], color="black", linestyle="-."
        )
    fig.legend(
        legend.values(), legend.keys(), loc="outside lower center", ncols=min(3, len(legend)), fontsize=9
    )
    spread = any(len(s.runs) > 1 for groups in rows.values() for s in groups)
    fig.suptitle(
        f"{_FIGURE_TITLES[kind]}: mean over seeds" + ("; band: ± sample std" if spread else ""), fontsize=13
    )
    return fig


def _number(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2f}"


def _tick_label(s: GroupSummary) -> str:
    views = _views(s)
    method = textwrap.fill(s.method + (f" [{s.variant}]" if s.variant else ""), 18)
    return f"{method}\n{views} view{'s' if views > 1 else ''}, n={len(s.runs)}"


def _ylabel(key: str, kind: str) -> str:
    if key in ACCURACY_KEYS:
        return "%"
    if kind == "swap":
        return "fraction of rows"
    return {"loss_cc": "per step", "loss_bc": "per step", "test_loss": "per test image"}.get(key, "per image")


def _unit_lines(unit: str) -> int:
    return len(textwrap.wrap(unit, _WRAP))


_FIGURE_TITLES = {
    "accuracy": "Accuracy",
    "loss": "Loss terms per epoch (training set, except the test loss)",
    "swap": "Swap rates (training set, per epoch)",
}


def _row_title(label: str, groups: Sequence[GroupSummary]) -> str:
    teacher = _teacher_reference(groups)
    return label if teacher is None else f"{label}: teacher {teacher[0]:.2f}% ({teacher[1]})"


def _plot_methods(rows: dict[str, list[GroupSummary]], colors: dict[tuple[str, str], str]) -> Any:
    """Per pair, one bar per method: best-epoch test top-1, mean ± sample std over seeds (the
    published protocol), the published number as a black mark on the bar, the teacher as a line.
    Bars of runs that cannot be compared with the paper (short, unfinished, a data subset) are hatched."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    columns = min(2, len(rows))
    lines = math.ceil(len(rows) / columns)
    widest = max(len(groups) for groups in rows.values())
    fig = Figure(figsize=(max(6.5, 1.3 * widest + 2) * columns, 4.8 * lines + 1.0), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    flagged = published_any = False
    for ax, (label, groups) in zip(axes, rows.items()):
        xs = range(len(groups))
        values = []
        for x, s in zip(xs, groups):
            hatch = "//" if s.flags() else None
            flagged = flagged or bool(hatch)
            ax.bar(
                x,
                s.best.mean,
                width=0.65,
                color=colors[(s.method, s.variant)],
                alpha=0.85,
                hatch=hatch,
                edgecolor="black",
                linewidth=0.6,
                zorder=2,
            )
            if s.best.std is not None:
                ax.errorbar(
                    x, s.best.mean, yerr=s.best.std, color="black", capsize=5, linewidth=1.2, zorder=3
                )
            top = s.best.mean + (s.best.std or 0.0)
            ax.annotate(
                str(s.best),
                (x, top),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
            values += [s.best.mean - (s.best.std or 0.0), top]
            if s.published is not None:
                ax.plot([x - 0.38, x + 0.38], [s.published] * 2, color="black", linewidth=2.6, zorder=4)
                ax.annotate(
                    f"{s.published:.2f}",
                    (x + 0.38, s.published),
                    xytext=(2, 0),
                    textcoords="offset points",
                    ha="left",
                    va="center",
                    fontsize=7,
                )
                values.append(s.published)
                published_any = True
        teacher = _teacher_reference(groups)
        if teacher is not None:
            ax.axhline(teacher[0], color="0.3", linestyle="--", linewidth=1.2, zorder=1)
            values.append(teacher[0])
        low, high = min(values), max(values)
        margin = max(1.0, 0.15 * (high - low))
        # Not from 0: the methods differ by a point or two at ~70%; the axis label says where it starts.
        bottom = float(max(0, math.floor(low - 3 * margin)))
        ax.set_ylim(bottom, min(100.0, high + 1.5 * margin))
        ax.set_xticks(list(xs))
        ax.set_xticklabels(
            [_tick_label(s) + f"\npublished {_number(s.published)}" for s in groups], fontsize=8
        )
        ax.set_xlim(-0.75, len(groups) - 0.25)  # a lone bar stays a bar, not the whole panel
        ax.set_ylabel(f"best-epoch test top-1 (%); the axis starts at {bottom:.0f}")
        ax.set_title(_row_title(label, groups), fontsize=11, fontweight="bold")
        ax.grid(axis="y", alpha=0.3, zorder=0)
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    legend: dict[str, Any] = {"mean ± sample std over seeds": Line2D([], [], color="black", marker="_")}
    if published_any:
        legend["published number"] = Line2D([], [], color="black", linewidth=2.6)
    legend["teacher's test top-1"] = Line2D([], [], color="0.3", linestyle="--")
    if flagged:
        legend["hatched: not comparable with the paper (short run, unfinished, subset)"] = Patch(
            facecolor="white", edgecolor="black", hatch="//"
        )
    # Two legend columns only where the figure is wide enough for them (a few bars of one pair is not).
    width = fig.get_figwidth()
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=2 if width >= 9 else 1,
               fontsize=9)
    fig.suptitle("Methods compared: best-epoch test top-1 (the published protocol)", fontsize=13)
    return fig


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
