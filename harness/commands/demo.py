"""``sld demo``: CE vs KD vs SLD, offline, in well under a minute on a laptop CPU (``harness.demo``).

sld demo                         # digits bundled with scikit-learn, 3 seeds, weak + strong views
sld demo --seeds 5 --json out.json
sld demo --views 1               # the clean images alone: the teacher is right on ~99.7%, the swap idles
sld demo --cifar --epochs 10     # real CIFAR-100 from the local cache, through the trainer (GPU advised)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harness.commands._common import DeviceOpt, resolve_device, user_errors

_CIFAR_EPOCHS = 10  # --cifar without --epochs: minutes per method on one GPU


def demo(
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds 0..N-1 per method.")] = 3,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Student epochs (digits: 40; --cifar: 10).")
    ] = None,
    teacher_epochs: Annotated[
        int | None,
        typer.Option(
            "--teacher-epochs", min=1,
            help="Teacher epochs (digits: 5; --cifar: --epochs); fewer: a weaker teacher, more swaps.",
        ),
    ] = None,
    views: Annotated[
        int,
        typer.Option(
            "--views", min=1, max=2,
            help="Digits: 2 = each image and a strong view (RandAugment + Cutout, where the teacher errs "
            "often), losses summed; 1 = the clean images alone.",
        ),
    ] = 2,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results here as JSON.")
    ] = None,
    cifar: Annotated[
        bool,
        typer.Option("--cifar", help="Real CIFAR-100 from the cache (never downloaded), via the trainer."),
    ] = False,
    pair: Annotated[
        str | None, typer.Option("--pair", help="--cifar: the pair (default resnet56-resnet20).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="--cifar: the CIFAR-100 cache folder.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="--cifar: keep the runs here (default: a temporary folder).")
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Distill a small student with ce, kd and sld over a few seeds and print the test accuracies."""
    with user_errors():
        from rich.console import Console

        from harness.demo import DemoConfig, results_table

        console = Console(soft_wrap=True)
        if not cifar:
            for flag, value in (
                ("--pair", pair),
                ("--data-dir", data_dir),
                ("--out", out),
                ("--device", device),
            ):
                if value is not None:
                    raise ValueError(f"{flag} applies to --cifar only (the digits demo runs on the CPU)")
            from harness.demo import run_digits_demo

            overrides = {"epochs": epochs, "teacher_epochs": teacher_epochs}
            config = DemoConfig(
                seeds=seeds, views=views, **{k: v for k, v in overrides.items() if v is not None}
            )
            result = run_digits_demo(config, console=console)
        else:
            from harness.data.cifar import DatasetError
            from harness.demo import run_cifar_demo

            if views != 2:
                raise ValueError("--views applies to the digits demo (--cifar uses each recipe's views)")
            epochs = _CIFAR_EPOCHS if epochs is None else epochs
            config = DemoConfig(
                seeds=seeds,
                epochs=epochs,
                teacher_epochs=epochs if teacher_epochs is None else teacher_epochs,
                **({} if pair is None else {"cifar_pair": pair}),
            )
            torch_device = resolve_device(device)
            if torch_device.type == "cpu":
                console.print("[yellow]note:[/yellow] CIFAR-100 on the CPU takes hours; a GPU takes minutes")
            try:
                result = run_cifar_demo(config, torch_device, data_dir=data_dir, out_dir=out, console=console)
            except DatasetError as exc:
                raise DatasetError(
                    f"sld demo --cifar reads only the local cache, never the network: {exc}"
                ) from None
        console.print(results_table(result))
        for note in result.notes:
            console.print(f"note: {note}")
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
            console.print(f"results -> {json_path}")
