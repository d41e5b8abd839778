"""``sld report RUN_DIR...``: the reproduction table and plots from finished run directories.

Reads each run's ``config.json`` and ``metrics.jsonl`` (a folder is searched for runs), groups the runs
by pair and method, and writes ``REPORT.md`` plus ``accuracy.png``, ``losses.png`` and
``swap_rates.png``; the table is the one ``sld reproduce`` prints.

    sld report runs/reproduce
    sld report runs/resnet32x4-resnet8x4/sld runs/resnet32x4-resnet8x4/kd --out reports/r32x4
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from harness.commands._common import user_errors


def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...", help="Run directories, or folders to search for them.", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where REPORT.md and the plots go (default: the RUN_DIRs' common folder)."
        ),
    ] = None,
) -> None:
    """Tabulate finished runs against the published numbers and plot their training curves."""
    with user_errors():
        from harness.report import write_report
        from harness.runs import load_runs

        runs = load_runs(run_dirs)
        target = out or Path(os.path.commonpath([p.resolve() for p in run_dirs]))
        write_report(runs, target)
