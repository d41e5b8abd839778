"""``sld reproduce``: the paper's CIFAR-100 tables in one command.

Trains (or resumes, or skips when finished) every pair x method x seed run in ``OUT/<pair>/<entry>/
seed<k>/``, training missing teachers first with ``sld train-teacher``'s recipe, then writes
``OUT/REPORT.md`` with plots and prints the table: best- and last-epoch test top-1 (mean ± std over
seeds) next to the published number. Run it again after an interruption: it continues where it stopped.

    sld reproduce --pairs all --seeds 3            # the main table: kd, dkd, mlkd, ls-mlkd, sld
    sld reproduce --pairs resnet32x4-resnet8x4 --methods kd,sld-dkd,sld
    sld reproduce --study ablations --pairs wrn40_2-wrn16_2   # processing, cswap, pseudo-teacher, gamma
    sld reproduce --study conditional-swap --thresholds 0.1,0.5,0.9
    sld reproduce --pairs all --epochs 2 --out runs/smoke            # a quick look (flagged in the report)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from harness.commands._common import common_overrides, floats, resolve_device, shared_options, user_errors
from harness.config import ConfigError, OptimConfig
from harness.reproduce import DEFAULT_GAMMAS, DEFAULT_THRESHOLDS, MAIN_METHODS, STUDIES, STUDY_PAIR
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
    "image_size",
    "workers",
)
def reproduce(
    pairs: Annotated[
        str | None,
        typer.Option(
            "--pairs",
            help=f"Comma-separated pairs (`sld pairs`) or 'all' (default: all; {STUDY_PAIR} with --study).",
        ),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help=f"Comma-separated method names (default without --study: {','.join(MAIN_METHODS)}).",
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            "--study",
            help="Comma-separated studies: " + "; ".join(f"{k}: {v[0]}" for k, v in STUDIES.items()) + ".",
        ),
    ] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(
            "--thresholds",
            help="conditional-swap study: the probability gaps "
            f"(default {','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)}).",
        ),
    ] = None,
    gammas: Annotated[
        str | None,
        typer.Option(
            "--gammas",
            help=f"gamma study: the epochs (default {','.join(f'{g:g}' for g in DEFAULT_GAMMAS)}).",
        ),
    ] = None,
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
        from harness.reproduce import ensure_teacher, grid_configs, run_grid, study_entries, teacher_trainer
        from harness.runs import RunDir

        studies = _split(study) if study else []
        if pairs is None:
            pairs = STUDY_PAIR if studies else "all"
        pair_names = (
            list(PAIRS) if pairs.strip().lower() == "all" else [get_pair(p).name for p in _split(pairs)]
        )
        datasets = {get_pair(p).dataset for p in pair_names}
        if len(datasets) > 1:
            raise ConfigError(
                f"these pairs train on different data sets ({', '.join(sorted(datasets))}), each with its "
                "own --data-dir: run one sld reproduce per data set"
            )
        method_names = _split(methods) if methods is not None else ([] if studies else list(MAIN_METHODS))
        entries = study_entries(
            studies,
            method_names,
            thresholds=floats(thresholds, "--thresholds") if thresholds else DEFAULT_THRESHOLDS,
            gammas=floats(gammas, "--gammas") if gammas else DEFAULT_GAMMAS,
        )
        overrides = common_overrides(options)  # every grid run and teacher: where and how it trains
        configs = grid_configs(pair_names, entries, seeds, out, overrides)
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
