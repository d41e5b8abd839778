"""``sld pairs``: the 12 CIFAR-100 pairs with their official learning rate and published top-1."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from harness.pairs import PAIRS
from harness.paper_results import Top1

_MISSING = "–"  # no published number found; see harness/paper_results.py


def _fmt(top1: Top1 | None) -> str:
    return _MISSING if top1 is None else f"{top1.value:.2f}"


def pairs() -> None:
    """List the CIFAR-100 teacher -> student pairs: models, official recipe and published top-1 (%)."""
    # No vertical rules, so the table fits an 80-column terminal without cutting a number.
    table = Table(
        title="CIFAR-100 pairs (official SLD recipe; published top-1 %)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in ("pair", "teacher", "student"):
        table.add_column(header, no_wrap=True)
    for header in ("lr", "epochs", "KD", "SLD"):
        table.add_column(header, justify="right", no_wrap=True)
    for pair in PAIRS.values():
        pub = pair.published
        table.add_row(
            pair.name,
            pair.teacher,
            pair.student,
            f"{pair.recipe.lr:g}",
            str(pair.recipe.epochs),
            _fmt(pub.kd),
            _fmt(pub.sld),
        )
    console = Console()
    console.print(table)
    console.print(f"{_MISSING} = not found in the sources listed in harness/paper_results.py")
