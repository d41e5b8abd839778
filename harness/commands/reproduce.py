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
    sld reproduce --pairs all --jobs 4 --devices 0,1,2,3              # 4 runs at once, one per GPU
    sld reproduce --pairs all --launcher slurm --partition gpu --time 4:00:00   # one SLURM job array
    sld reproduce --pairs resnet34-resnet18 --data-dir /data/imagenet --teacher resnet34=r34.pth  # by path

``--jobs N`` trains N runs at once, each in its own ``sld train`` process (``RUN/train.log``), teachers
first; ``--launcher slurm`` submits them as a SLURM job array through submitit (the ``slurm`` extra),
each run requeued on preemption or timeout and resumed from its ``last.pt``; ``--launcher local`` is the
same through submitit's local executor. Without either, the runs train one after the other in this
process. Ctrl-C stops every run at a step boundary (each resumable); a failed run is listed with its log
while the others go on, and the command then exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from harness.commands._common import (
    common_overrides,
    floats,
    print_error,
    resolve_device,
    shared_options,
    user_errors,
)
from harness.config import ConfigError, OptimConfig
from harness.reproduce import DEFAULT_GAMMAS, DEFAULT_THRESHOLDS, MAIN_METHODS, STUDIES, STUDY_PAIR
from harness.runs import DEFAULT_RUNS_DIR

DEFAULT_OUT = Path(DEFAULT_RUNS_DIR) / "reproduce"
LAUNCHERS = ("slurm", "local")
# --launcher options: name -> flag (each is refused without --launcher).
_ARRAY_FLAGS = {
    "partition": "--partition",
    "time": "--time",
    "gpus_per_run": "--gpus-per-run",
    "cpus_per_run": "--cpus-per-run",
    "mem": "--mem",
    "array_parallelism": "--array-parallelism",
}


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
    teacher: Annotated[
        list[str] | None,
        typer.Option(
            "--teacher",
            metavar="MODEL=PATH",
            help="A teacher's checkpoint by path, e.g. resnet34=~/resnet34-333f7ec4.pth (repeatable): "
            "it wins over RUNS/teachers/<model>, the published files and training one.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Runs per pair and method (seeds 0..N-1).")] = 3,
    out: Annotated[Path, typer.Option("--out", help="Root of the grid; REPORT.md goes here.")] = DEFAULT_OUT,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            min=1,
            help="Runs at once on this machine, each in its own process (log: RUN/train.log); teachers "
            "first. Default: one after the other in this process.",
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="With --jobs: the devices its processes take in turn, e.g. 0,1,2,3 (GPU numbers) or cpu "
            "(default: --device; --jobs defaults to one per device).",
        ),
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(
            "--launcher",
            help="slurm: one SLURM job array through submitit (the package's slurm extra), runs requeued "
            "and resumed on preemption or timeout; local: the same on this machine (submitit's local "
            "executor).",
        ),
    ] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="--launcher: SLURM partition.")] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time", help="--launcher: time per job slot, as sbatch: MM, HH:MM:SS, D-HH:MM (4:00:00)."
        ),
    ] = None,
    gpus_per_run: Annotated[
        int | None,
        typer.Option(
            "--gpus-per-run", min=0, help="--launcher: GPUs per run (default 1 on slurm, 0 local; >1: DDP)."
        ),
    ] = None,
    cpus_per_run: Annotated[
        int | None, typer.Option("--cpus-per-run", min=1, help="--launcher: CPUs per run (OMP threads).")
    ] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="--launcher: memory per run, e.g. 32G.")] = None,
    array_parallelism: Annotated[
        int | None,
        typer.Option(
            "--array-parallelism", min=1, help="--launcher: runs of the array at once (default: all)."
        ),
    ] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Train every pair x method x seed (resuming or skipping finished runs), then report vs the paper."""
    with user_errors():
        array_values = {
            "partition": partition,
            "time": time_limit,
            "gpus_per_run": gpus_per_run,
            "cpus_per_run": cpus_per_run,
            "mem": mem,
            "array_parallelism": array_parallelism,
        }
        _check_launch_flags(jobs, devices, launcher, options["device"], array_values)
        from rich.console import Console

        from harness.pairs import PAIRS, get_pair
        from harness.report import write_report
        from harness.reproduce import (
            ensure_teacher,
            grid_configs,
            run_grid,
            run_grid_jobs,
            study_entries,
            teacher_trainer,
        )
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
        teacher_paths = _teacher_paths(teacher or [], configs)
        console = Console(soft_wrap=True)
        runs_dir = options["runs_dir"]
        min_epochs = options["epochs"] or OptimConfig.epochs

        if jobs is None and launcher is None:  # one run after the other, in this process
            torch_device = resolve_device(options["device"])
            # sld train-teacher's recipe with this command's options: same place, same training settings.
            train_teacher = teacher_trainer(runs_dir, torch_device, overrides=overrides, console=console)

            def teacher_for(model: str) -> Path:
                return ensure_teacher(
                    model, runs_dir, train_teacher, min_epochs=min_epochs, given=teacher_paths.get(model)
                )

            run_dirs = run_grid(configs, torch_device, teacher_for=teacher_for, console=console)
            write_report([RunDir(d).load() for d in run_dirs], out, console)
            return

        launch = _launch(jobs, devices, launcher, options["device"], array_values, out, console)
        # Teachers get the same overrides as in this process: same place, same training settings.
        outcomes = run_grid_jobs(
            configs,
            launch,
            runs_dir=runs_dir,
            overrides=overrides,
            min_epochs=min_epochs,
            teacher_paths=teacher_paths,
            console=console,
        )
        failed = [o for o in outcomes if not o.ok]
        _report(configs, failed, out, console)
        if failed:
            print_error(f"{len(failed)} run(s) did not finish; the others did (the report covers them):")
            for outcome in failed:
                print_error(f"  {outcome.describe()}", label="")
            raise typer.Exit(code=1)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _teacher_paths(values: list[str], configs: list[Any]) -> dict[str, Path]:
    """``--teacher MODEL=PATH`` values as model -> absolute path; one clear error for a value that is
    not MODEL=PATH, a model that teaches none of the grid's runs, a model given twice, or no such file."""
    from harness.reproduce import grid_teachers

    teachers = grid_teachers(configs)
    paths: dict[str, Path] = {}
    for value in values:
        model, sep, path = (part.strip() for part in value.partition("="))
        if not sep or not model or not path:
            raise ConfigError(
                f"--teacher takes MODEL=PATH (e.g. --teacher resnet34=resnet34-333f7ec4.pth); got {value!r}"
            )
        if model not in teachers:
            raise ConfigError(
                f"--teacher {value}: {model!r} teaches none of this grid's runs "
                f"(its teachers: {', '.join(teachers) or 'none'})"
            )
        if model in paths:
            raise ConfigError(f"--teacher {model}=... is given twice")
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"--teacher {value}: no such file {file}")
        paths[model] = file.resolve()
    return paths


def _check_launch_flags(
    jobs: int | None,
    devices: str | None,
    launcher: str | None,
    device: str | None,
    array_values: dict[str, Any],
) -> None:
    """One clear error for launch flags that do not go together."""
    if launcher is not None and launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    if launcher is not None and (jobs is not None or devices is not None):
        raise ConfigError(
            "--jobs/--devices run the grid on this machine, --launcher through submitit: give one of them "
            "(--array-parallelism limits the runs at once of an array)"
        )
    given = [_ARRAY_FLAGS[name] for name, value in array_values.items() if value is not None]
    if launcher is None and given:
        raise ConfigError(f"{', '.join(given)} belong to --launcher slurm/local")
    if launcher == "local" and array_values["partition"] is not None:
        raise ConfigError("--partition is a SLURM option; --launcher local runs on this machine")
    if devices is not None and device is not None:
        raise ConfigError("give --devices (a list for --jobs) or --device, not both")


def _launch(
    jobs: int | None,
    devices: str | None,
    launcher: str | None,
    device: str | None,
    array_values: dict[str, Any],
    out: Path,
    console: Any,
) -> Any:
    """The ``launch(jobs) -> outcomes`` of the options: a process pool or a submitit array."""
    import functools

    from harness.jobs import ArrayOptions, parse_memory, parse_time, run_array, run_pool, submitit_executor

    if launcher is None:
        names = _device_names(devices) if devices is not None else [device]
        checked = [str(resolve_device(name)) for name in names]  # each one exists, before anything starts
        slots = jobs if jobs is not None else len(checked)
        if slots < len(checked):
            raise ConfigError(f"--jobs {slots} leaves some of the {len(checked)} --devices idle")
        return functools.partial(run_pool, slots=slots, devices=checked, console=console)
    gpus, time_text = array_values["gpus_per_run"], array_values["time"]
    options = ArrayOptions(
        partition=array_values["partition"],
        time_min=parse_time(time_text) if time_text is not None else ArrayOptions.time_min,
        gpus_per_run=gpus if gpus is not None else (1 if launcher == "slurm" else 0),
        cpus_per_run=array_values["cpus_per_run"],
        mem_gb=parse_memory(array_values["mem"]) if array_values["mem"] is not None else None,
        array_parallelism=array_values["array_parallelism"],
    )
    if device is not None and launcher == "local":
        resolve_device(device)  # here it can be checked; a SLURM node's devices cannot be, from here
    executor = submitit_executor(out / "submitit", launcher, options)
    return functools.partial(run_array, executor=executor, options=options, device=device, console=console)


def _device_names(text: str) -> list[str]:
    """``--devices``: GPU numbers (``0,1``) or torch device strings (``cuda:0,cpu``)."""
    names = _split(text)
    if not names:
        raise ConfigError(f"--devices takes comma-separated devices, e.g. 0,1 or cpu; got {text!r}")
    return [f"cuda:{name}" if name.isdigit() else name for name in names]


def _report(configs: list[Any], failed: list[Any], out: Path, console: Any) -> None:
    """REPORT.md over the grid's runs that recorded an epoch; the failed ones without any are listed."""
    from harness.report import write_report
    from harness.runs import RunDir, RunDirError

    reasons = {str(o.job.run_dir): o.describe() for o in failed}
    runs, broken = [], []
    for config in configs:
        try:
            runs.append(RunDir(config.out_dir).load())
        except (RunDirError, ConfigError, OSError) as exc:
            broken.append((Path(config.out_dir), reasons.get(config.out_dir, str(exc))))
    if runs:
        write_report(runs, out, console, broken=broken)
