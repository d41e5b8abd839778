"""``sld models``: the model registry with parameter counts and the pairs each model appears in."""

from __future__ import annotations


def models() -> None:
    """List the CIFAR-100 models (names as `--model`/`--student` take them) with parameter counts."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from harness.models import MODELS, build_model, count_parameters
    from harness.pairs import PAIRS

    table = Table(title="CIFAR-100 models", box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    table.add_column("parameters", justify="right")
    table.add_column("teacher in", justify="right")
    table.add_column("student in", justify="right")
    for name in MODELS:
        as_teacher = sum(p.teacher == name for p in PAIRS.values())
        as_student = sum(p.student == name for p in PAIRS.values())
        table.add_row(
            name,
            f"{count_parameters(build_model(name)) / 1e6:.2f} M",
            f"{as_teacher} pairs" if as_teacher else "",
            f"{as_student} pairs" if as_student else "",
        )
    Console().print(table)
