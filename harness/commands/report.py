"""``sld report RUN_DIR...``: the reproduction table and plots from finished run directories.

Reads each run's ``config.json`` and ``metrics.jsonl`` (a folder is searched for runs), groups the runs
by pair and method, and writes ``REPORT.md`` plus ``accuracy.png``, ``losses.png`` (one
``losses_<pair>.png`` per pair when there are several), ``swap_rates.png`` and ``methods.png``
(:func:`harness.report.figures` says what each shows); the table is the one ``sld reproduce`` prints.
A run that cannot be read does not stop the others: the report covers the readable ones, lists each
broken run with its reason (on stderr and in ``REPORT.md``), and the command exits 1.

    sld report runs/reproduce
    sld report runs/resnet32x4-resnet8x4/sld runs/resnet32x4-resnet8x4/kd --out reports/r32x4
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from harness.commands._common import print_error, user_errors


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
        from harness.runs import RunDirError, scan_runs

        runs, broken = scan_runs(run_dirs)
        if not runs:
            reasons = "; ".join(reason for _, reason in broken)
            raise RunDirError(f"no readable run to report ({reasons})")
        target = out or Path(os.path.commonpath([p.resolve() for p in run_dirs]))
        write_report(runs, target, broken=broken)
        if broken:
            print_error(f"{len(broken)} run(s) could not be read and are not in the report:")
            for path, reason in broken:
                print_error(f"  {path}: {reason}", label="")
            raise typer.Exit(code=1)
