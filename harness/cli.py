"""The ``sld`` command line. Each command lives in ``harness/commands/<name>.py`` (they share
``harness/commands/_common.py`` and never import each other) and imports torch lazily, inside the
command, so ``sld --help`` stays fast. ``python -m harness`` runs the same (``harness/__main__.py``)."""

from __future__ import annotations

import typer

import sld_core

app = typer.Typer(
    name="sld",
    help="Swapped Logit Distillation: train, benchmark and reproduce on CIFAR-100.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(sld_core.__version__)


# Command registrations (one line each; keep alphabetical).
from harness.commands import bench as bench_cmd  # noqa: E402
from harness.commands import demo as demo_cmd  # noqa: E402
from harness.commands import eval as eval_cmd  # noqa: E402
from harness.commands import models as models_cmd  # noqa: E402
from harness.commands import pairs as pairs_cmd  # noqa: E402
from harness.commands import report as report_cmd  # noqa: E402
from harness.commands import reproduce as reproduce_cmd  # noqa: E402
from harness.commands import train as train_cmd  # noqa: E402
from harness.commands import train_teacher as train_teacher_cmd  # noqa: E402

app.command("bench")(bench_cmd.bench)
app.command("demo")(demo_cmd.demo)
app.command("eval")(eval_cmd.eval)
app.command("models")(models_cmd.models)
app.command("pairs")(pairs_cmd.pairs)
app.command("report")(report_cmd.report)
app.command("reproduce")(reproduce_cmd.reproduce)
app.command("train")(train_cmd.train)
app.command("train-teacher")(train_teacher_cmd.train_teacher)


def main() -> None:
    app()
