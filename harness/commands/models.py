"""``sld models``: the model zoo with parameter counts, the data set each model is built for, and the
pairs each model appears in."""

from __future__ import annotations


def models() -> None:
    """List the models (names as `--student`/`--teacher-model` take them): data set, input size,
    parameters, pairs. Plug-ins: any `package.module:callable`, or an `sld.models` entry point."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from harness.models import MODELS, build_model, count_parameters, model_info
    from harness.models.registry import plugin_models
    from harness.pairs import ALL_PAIRS as PAIRS

    table = Table(title="Models", box=box.SIMPLE_HEAD)
    for header, justify in (("model", "left"), ("data set", "left"), ("input", "right"),
                            ("parameters", "right"), ("teacher in", "right"), ("student in", "right")):
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for name in MODELS:
        info = model_info(name)
        as_teacher = sum(p.teacher == name for p in PAIRS.values())
        as_student = sum(p.student == name for p in PAIRS.values())
        table.add_row(
            name,
            info.dataset,
            f"{info.input_size} px",
            f"{count_parameters(build_model(name)) / 1e6:.2f} M",
            f"{as_teacher} pairs" if as_teacher else "",
            f"{as_student} pairs" if as_student else "",
        )
    console = Console()
    console.print(table)
    plugins = plugin_models()
    if plugins:
        found = ", ".join(f"{name} = {target}" for name, target in plugins.items())
        console.print(f"plug-ins (sld.models entry points): {found}")
    console.print("any model of your own: --student package.module:callable (a callable taking num_classes)")
