"""``sld train``: distill a CIFAR-100 student from its teacher (ce, kd, dkd or sld).

The command only builds a :class:`harness.train.config.TrainConfig` (from a pair's official recipe, a
``--config`` file, or the run being resumed, then the flags on top) and hands it to
:func:`harness.train.loop.train`. torch is imported inside the command, so ``sld --help`` stays fast.

    sld train --pair resnet32x4-resnet8x4                  # SLD, official recipe
    sld train --pair resnet32x4-resnet8x4 --method kd      # the KD baseline (mdistiller recipe)
    sld train --config runs/resnet32x4-resnet8x4/sld/config.json   # repeat a run exactly
    sld train --out runs/resnet32x4-resnet8x4/sld --resume         # continue an interrupted run
    sld train --pair resnet32x4-resnet8x4 --nproc 4                # 4 GPUs (DDP); --batch-size is global
    torchrun --nproc_per_node 4 -m harness.train.distributed train --pair ...   # the same, by hand

Ctrl-C (SIGINT) or SIGTERM stops a run between steps; ``--resume`` continues from the last complete
epoch. Exit codes: 1 for an error, 130/143 for SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.train.config import (
    AMP_MODES,
    METHOD_CONFIGS,
    ConfigError,
    TrainConfig,
    load_config,
    pair_config,
    with_overrides,
)
from harness.train.errors import NonFiniteLossError
from harness.train.interrupt import DistributedAbort, TrainingInterrupted
from harness.train.paths import DEFAULT_RUNS_DIR, find_teacher

# Options shared with ``sld train-teacher`` (harness/commands/train_teacher.py).
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Epochs (recipe: 240).")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Training batch (recipe: 64).")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Initial learning rate (default: the recipe's).")]
MilestonesOpt = Annotated[
    str | None,
    typer.Option(
        "--lr-milestones",
        help="Comma-separated epochs after which lr is multiplied by 0.1 (recipe: 150,180,210).",
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for init, shuffling and augmentation.")]
AmpOpt = Annotated[str | None, typer.Option("--amp", help="Mixed precision: bf16, fp16 or off.")]
ChannelsLastOpt = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last", help="NHWC activations (faster convolutions on tensor cores)."
    ),
]
CompileOpt = Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the student.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="torch device (default: cuda if available).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run directory (config, metrics, checkpoints).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Start from this config.json; flags override it.")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="CIFAR-100 cache folder.")]
RunsDirOpt = Annotated[
    Path, typer.Option("--runs-dir", help="Root of the runs tree (teachers live in RUNS/teachers).")
]
ViewsOpt = Annotated[
    int | None, typer.Option("--views", help="1: weak view; 2: weak + strong, losses summed.")
]
LimitTrainOpt = Annotated[
    int | None, typer.Option("--limit-train", hidden=True, help="Use the first N train images.")
]
LimitTestOpt = Annotated[
    int | None, typer.Option("--limit-test", hidden=True, help="Use the first N test images.")
]
NprocOpt = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        min=1,
        help="Data-parallel processes on this machine (one per GPU; gloo on the CPU): re-runs the command "
        "under torch.distributed.run. --batch-size stays the global batch.",
    ),
]
SyncBnOpt = Annotated[
    bool,
    typer.Option(
        "--sync-bn", help="With several processes (CUDA): BatchNorm statistics over the global batch."
    ),
]
StopAfterOpt = Annotated[
    int | None,
    typer.Option(
        "--stop-after", min=1, help="Stop cleanly after this epoch (time-limited jobs); --resume continues."
    ),
]

# The options `sld train` shares with `sld train-teacher` (all) and `sld reproduce` (some), declared once:
# name -> (annotation, default). `shared_options` adds them to a command.
SHARED_OPTIONS: dict[str, tuple[Any, Any]] = {
    "epochs": (EpochsOpt, None),
    "batch_size": (BatchSizeOpt, None),
    "lr": (LrOpt, None),
    "lr_milestones": (MilestonesOpt, None),
    "seed": (SeedOpt, None),
    "amp": (AmpOpt, None),
    "channels_last": (ChannelsLastOpt, None),
    "compile": (CompileOpt, None),
    "device": (DeviceOpt, None),
    "out": (OutOpt, None),
    "resume": (ResumeOpt, False),
    "config": (ConfigOpt, None),
    "data_dir": (DataDirOpt, None),
    "runs_dir": (RunsDirOpt, Path(DEFAULT_RUNS_DIR)),
    "views": (ViewsOpt, None),
    "limit_train": (LimitTrainOpt, None),
    "limit_test": (LimitTestOpt, None),
    "nproc": (NprocOpt, None),
    "sync_bn": (SyncBnOpt, False),
    "stop_after": (StopAfterOpt, None),
}


def shared_options(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a Typer command the :data:`SHARED_OPTIONS` ``names`` after its own options; the command
    takes their values as one keyword argument, ``options`` (a dict by name), e.g. for
    :func:`common_overrides`.

    Typer reads a command's parameters from its signature, so the wrapper's signature is the
    command's own (minus ``options``) plus these."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.name != "options"]
        params += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for name, (annotation, default) in ((n, SHARED_OPTIONS[n]) for n in names)
        ]

        @functools.wraps(command)
        def with_options(**kwargs: Any) -> None:
            options = {name: kwargs.pop(name, SHARED_OPTIONS[name][1]) for name in names}
            command(**kwargs, options=options)

        with_options.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return with_options

    return decorate


# CLI flag -> the config field it sets, for the message when a flag does not fit the method.
_LOSS_FLAGS = {
    "loss.teacher_swap": "--no-teacher-swap",
    "loss.pseudo_teacher": "--no-pseudo-teacher",
    "loss.detach_pseudo_teacher": "--detach-pseudo-teacher",
    "loss.gamma": "--gamma",
    "loss.temperatures": "--temperatures",
    "loss.swap_teacher": "--swap-teacher",
}


@shared_options(*SHARED_OPTIONS)
def train(
    pair: Annotated[
        str | None, typer.Option("--pair", help="Teacher-student pair (see `sld pairs`).")
    ] = None,
    method: Annotated[str | None, typer.Option("--method", help="ce, kd, dkd or sld (default sld).")] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            help="Teacher checkpoint (default: RUNS/teachers/<model>/best.pt or download_ckpts/).",
        ),
    ] = None,
    student: Annotated[
        str | None, typer.Option("--student", help="Student model, instead of --pair.")
    ] = None,
    teacher_model: Annotated[
        str | None, typer.Option("--teacher-model", help="Teacher model, with --student.")
    ] = None,
    no_teacher_swap: Annotated[
        bool, typer.Option("--no-teacher-swap", help="SLD ablation: teacher logits unswapped.")
    ] = False,
    no_pseudo_teacher: Annotated[
        bool, typer.Option("--no-pseudo-teacher", help="SLD ablation: no pseudo-teacher term.")
    ] = False,
    detach_pseudo_teacher: Annotated[
        bool,
        typer.Option(
            "--detach-pseudo-teacher", help="SLD ablation: no gradient through the swapped student logits."
        ),
    ] = False,
    gamma: Annotated[
        float | None, typer.Option("--gamma", help="SLD: pseudo-teacher on after this epoch (150).")
    ] = None,
    temperatures: Annotated[str | None, typer.Option("--temperatures", help="SLD: e.g. 1,2,3,4,5,6.")] = None,
    swap_teacher: Annotated[
        bool, typer.Option("--swap-teacher", help="kd/dkd: swap the teacher's logits first.")
    ] = False,
    *,
    options: dict[str, Any],
) -> None:
    """Distill a student on CIFAR-100 and log every epoch to OUT/metrics.jsonl."""
    with user_errors():
        if method is not None and method not in METHOD_CONFIGS:
            raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHOD_CONFIGS)}")
        base = _base_config(
            pair=pair,
            method=method,
            student=student,
            teacher_model=teacher_model,
            config=options["config"],
            out=options["out"],
            resume=options["resume"],
        )
        overrides = common_overrides(options)
        overrides.update(
            {
                "teacher_checkpoint": str(teacher) if teacher is not None else None,
                "loss.teacher_swap": False if no_teacher_swap else None,
                "loss.pseudo_teacher": False if no_pseudo_teacher else None,
                "loss.detach_pseudo_teacher": True if detach_pseudo_teacher else None,
                "loss.gamma": gamma,
                "loss.temperatures": _floats(temperatures, "--temperatures")
                if temperatures is not None
                else None,
                "loss.swap_teacher": True if swap_teacher else None,
            }
        )
        cfg = _apply(base, overrides)
        if cfg.method != "ce" and cfg.teacher_checkpoint is None:
            teacher_path = find_teacher(cfg.teacher, options["runs_dir"])
            cfg = with_overrides(cfg, {"teacher_checkpoint": str(teacher_path)})
        run(cfg, command="train", options=options)


def _base_config(
    *,
    pair: str | None,
    method: str | None,
    student: str | None,
    teacher_model: str | None,
    config: Path | None,
    out: Path | None,
    resume: bool,
) -> TrainConfig:
    """The config the flags apply to: ``--config``, else the resumed run's, else the pair's recipe or
    ``--student``/``--teacher-model`` with the default recipe."""
    if config is None and resume:
        if out is None:
            raise ConfigError("--resume needs --out DIR (the run to continue)")
        config = out / "config.json"
        if not config.is_file():
            raise ConfigError(f"cannot resume: {config} does not exist (is {out} a run directory?)")
    if config is not None:
        if pair or student or teacher_model:
            raise ConfigError("--config already names the models; drop --pair/--student/--teacher-model")
        base = load_config(config)
        if method is not None and method != base.method:
            raise ConfigError(
                f"--method {method} conflicts with {config} (method {base.method!r}); "
                "edit the file or start from --pair"
            )
        return base
    method = method or "sld"
    if pair is not None:
        if student or teacher_model:
            raise ConfigError("give either --pair or --student/--teacher-model, not both")
        return pair_config(pair, method)
    if student is None:
        raise ConfigError(
            "say what to train: --pair P (see `sld pairs`), --student S [--teacher-model T], or --config FILE"
        )
    if method != "ce" and teacher_model is None:
        raise ConfigError(f"method {method!r} needs --teacher-model with --student (or use --pair)")
    _check_model_names(student, teacher_model)
    return TrainConfig(
        student=student,
        teacher=teacher_model,
        method=method,
        loss=METHOD_CONFIGS[method](),
        out_dir=f"{DEFAULT_RUNS_DIR}/{student}/{method}",
    )


def common_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The config fields (dotted, for :func:`with_overrides`) that the :data:`SHARED_OPTIONS` among
    ``options`` set; options left out (``None``, or a flag not given) set nothing."""
    amp = options.get("amp")
    if amp is not None and amp not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}; got {amp!r}")
    milestones = options.get("lr_milestones")
    as_str = {"out": "out_dir", "data_dir": "data.data_dir"}
    as_is = {
        "epochs": "optim.epochs",
        "batch_size": "optim.batch_size",
        "lr": "optim.lr",
        "seed": "seed",
        "amp": "amp",
        "channels_last": "channels_last",
        "compile": "compile",
        "views": "data.views",
        "limit_train": "data.limit_train",
        "limit_test": "data.limit_test",
    }
    overrides: dict[str, Any] = {field: options.get(name) for name, field in as_is.items()}
    overrides.update(
        {field: str(options[name]) for name, field in as_str.items() if options.get(name) is not None}
    )
    if milestones:
        overrides["optim.lr_milestones"] = tuple(int(e) for e in _floats(milestones, "--lr-milestones"))
    if options.get("sync_bn"):  # a flag left out keeps the config's (e.g. a resumed run's)
        overrides["sync_bn"] = True
    return overrides


def _apply(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """:func:`with_overrides`, but a loss flag that the method does not have is named as the flag."""
    for field_path, flag in _LOSS_FLAGS.items():
        name = field_path.split(".")[1]
        if overrides.get(field_path) is not None and not hasattr(base.loss, name):
            users = [
                m for m, cls in METHOD_CONFIGS.items() if name in getattr(cls, "__dataclass_fields__", {})
            ]
            raise ConfigError(f"{flag} applies to method {' / '.join(users)}, not {base.method!r}")
    return with_overrides(base, overrides)


def run(cfg: TrainConfig, *, command: str, options: Mapping[str, Any]) -> None:
    """Check the model names, then train ``cfg`` on ``options["device"]`` (resuming, stopping early as
    the options say): here, or (``--nproc`` > 1) by re-running ``sld COMMAND ...`` under
    ``torch.distributed.run``; under torchrun each process joins the group first."""
    _check_model_names(cfg.student, cfg.teacher)
    from harness.train import distributed

    nproc = options.get("nproc")
    if nproc is not None and nproc > 1:
        if distributed.torchrun_env() is not None:
            raise ConfigError("--nproc is for the sld command line; under torchrun leave it out")
        distributed.check_global_batch(cfg.optim.batch_size, nproc)  # fail here once, not in N processes
        args = sys.argv[1:]
        if not args or args[0] != command:  # e.g. called from Python, not from `sld COMMAND ...`
            raise ConfigError(f"--nproc works from the command line (sld {command} ... --nproc N) only")
        distributed.relaunch(distributed.strip_option(args, "--nproc"), nproc)

    from harness.train.loop import train as train_loop

    torch_device, joined = distributed.setup(options.get("device"))
    try:
        train_loop(cfg, torch_device, resume=options["resume"], stop_after=options.get("stop_after"))
    finally:
        if joined:
            distributed.teardown()


def _check_model_names(*names: str | None) -> None:
    from harness.models import MODELS

    for name in names:
        if name is not None and name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, e.g. 1,2,3; got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one number; got {text!r}")
    return values


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad names or values, missing or unwritable files, bad checkpoints
    or data, a diverged run) into one red line on stderr and exit code 1, without a traceback; a run
    stopped by SIGINT/SIGTERM exits 130/143 with the line that says how to resume it.

    Under torchrun only rank 0 reports an interruption or a failure it caused the others; errors of
    other ranks carry a ``[rank N]`` prefix."""
    from harness.data.cifar import DatasetError

    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    try:
        yield
    except TrainingInterrupted as exc:
        if rank == "0":
            _print_error(str(exc), "stopped: ")
        raise typer.Exit(code=exc.exit_code) from None
    except DistributedAbort:
        raise typer.Exit(code=1) from None  # rank 0 prints the cause
    except (ValueError, OSError, DatasetError, NonFiniteLossError) as exc:
        # OSError: a full disk or a permission problem, which the message names (FileNotFoundError too).
        _print_error(str(exc), "error: " if rank == "0" else f"[rank {rank}] error: ")
        raise typer.Exit(code=1) from None


def _print_error(message: str, label: str) -> None:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text.assemble((label, "bold red"), message))
