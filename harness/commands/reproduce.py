"""``sld reproduce``: the paper's CIFAR-100 table in one command.

Trains (or resumes, or skips when finished) every pair x method x seed run in ``OUT/<pair>/<method>/
seed<k>/``, training missing teachers first with ``sld train-teacher``'s recipe, then writes
``OUT/REPORT.md`` with plots and prints the table: best- and last-epoch test top-1 (mean ± std over
seeds) next to the published number. Run it again after an interruption: it continues where it stopped.

    sld reproduce --pairs resnet32x4-resnet8x4,wrn40_2-wrn16_2 --methods kd,sld --seeds 3
    sld reproduce --pairs all --epochs 2 --out runs/smoke        # a quick look (flagged in the report)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from harness.commands._common import common_overrides, resolve_device, shared_options, user_errors
from harness.config import METHOD_CONFIGS, ConfigError, OptimConfig
from harness.runs import DEFAULT_RUNS_DIR

DEFAULT_OUT = Path(DEFAULT_RUNS_DIR) / "reproduce"


@shared_options(
    "epochs",
    "data_dir",
    "device",
    "runs_dir",
    "batch_size",
    "lr_milestones",
    "amp",
    "channels_last",
    "compile",
    "cuda_graphs",
    "limit_train",
    "limit_test",
)
def reproduce(
    pairs: Annotated[str, typer.Option("--pairs", help="Comma-separated pairs (see `sld pairs`), or 'all'.")],
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: ce, kd, dkd, sld.")] = "kd,sld",
    seeds: Annotated[int, typer.Option("--seeds", help="Runs per pair and method (seeds 0..N-1).")] = 3,
    out: Annotated[Path, typer.Option("--out", help="Root of the grid; REPORT.md goes here.")] = DEFAULT_OUT,
    *,
    options: dict[str, Any],
) -> None:
    """Train every pair x method x seed (resuming or skipping finished runs), then report vs the paper."""
    with user_errors():
        from rich.console import Console

        from harness.pairs import PAIRS, get_pair
        from harness.report import write_report
        from harness.reproduce import ensure_teacher, grid_configs, run_grid, teacher_trainer
        from harness.runs import RunDir

        pair_names = (
            list(PAIRS) if pairs.strip().lower() == "all" else [get_pair(p).name for p in _split(pairs)]
        )
        method_names = _split(methods)
        for method in method_names:
            if method not in METHOD_CONFIGS:
                raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHOD_CONFIGS)}")
        overrides = common_overrides(options)  # every grid run and teacher: where and how it trains
        configs = grid_configs(pair_names, method_names, seeds, out, overrides)
        torch_device = resolve_device(options["device"])
        console = Console(soft_wrap=True)

        # sld train-teacher's recipe with this command's options: same place, same training settings.
        runs_dir = options["runs_dir"]
        train_teacher = teacher_trainer(runs_dir, torch_device, overrides=overrides, console=console)
        min_epochs = options["epochs"] or OptimConfig.epochs

        def teacher_for(model: str) -> Path:
            return ensure_teacher(model, runs_dir, train_teacher, min_epochs=min_epochs)

        run_dirs = run_grid(configs, torch_device, teacher_for=teacher_for, console=console)
        write_report([RunDir(d).load() for d in run_dirs], out, console)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
