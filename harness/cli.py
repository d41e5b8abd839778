"""The ``sld`` command line. Each command lives in ``harness/commands/<name>.py`` and imports torch
lazily, inside the command, so ``sld --help`` stays fast."""

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
from harness.commands import pairs as pairs_cmd  # noqa: E402

app.command("pairs")(pairs_cmd.pairs)


def main() -> None:
    app()
