"""The ``sld`` command line. Each command lives in ``harness/commands/<name>.py`` (they share
``harness/commands/_common.py`` and never import each other) and imports torch lazily, inside the
command, so ``sld --help`` stays fast. ``python -m harness`` runs the same (``harness/__main__.py``)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

import sld_core


class Command(TyperCommand):
    """A command whose ``--help`` shows no type for flags that take no value (Typer would print
    ``<bool>`` beside ``--resume`` or ``--pseudo-teacher/--no-pseudo-teacher``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
                param.metavar = ""
        return params


app = typer.Typer(
    name="sld",
    help="Swapped Logit Distillation: train, benchmark and reproduce on CIFAR-100.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"show_default": True},  # every option with a default shows it in --help
)


@app.command(cls=Command)
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

app.command("bench", cls=Command)(bench_cmd.bench)
app.command("demo", cls=Command)(demo_cmd.demo)
app.command("eval", cls=Command)(eval_cmd.eval)
app.command("models", cls=Command)(models_cmd.models)
app.command("pairs", cls=Command)(pairs_cmd.pairs)
app.command("report", cls=Command)(report_cmd.report)
app.command("reproduce", cls=Command)(reproduce_cmd.reproduce)
app.command("train", cls=Command)(train_cmd.train)
app.command("train-teacher", cls=Command)(train_teacher_cmd.train_teacher)


def main() -> None:
    app()
