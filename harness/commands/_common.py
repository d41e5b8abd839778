"""What the command modules share: the options ``sld train``, ``sld train-teacher`` and ``sld
reproduce`` have in common (declared once), the translation of options into config fields, the one
device resolver, the error boundary (:func:`user_errors`: one red line instead of a traceback), and
:func:`run`, which trains a config here or re-runs the command under ``torch.distributed.run``. Command
modules import this, never each other. torch is imported inside functions only, so ``sld --help``
stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from harness.config import AMP_MODES, ConfigError, TrainConfig
from harness.runs import DEFAULT_RUNS_DIR, RunDir
from harness.train.errors import NonFiniteLossError
from harness.train.interrupt import DistributedAbort, TrainingInterrupted

if TYPE_CHECKING:
    import torch

__all__ = [
    "SHARED_OPTIONS",
    "check_model_names",
    "common_overrides",
    "floats",
    "ints",
    "launch_command",
    "print_error",
    "resolve_device",
    "resumed_config",
    "run",
    "shared_options",
    "strip_option",
    "user_errors",
]

# Options of several commands (train, train-teacher, reproduce, eval, demo).
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
    if milestones is not None:
        overrides["optim.lr_milestones"] = ints(milestones, "--lr-milestones")
    if options.get("sync_bn"):  # a flag left out keeps the config's (e.g. a resumed run's)
        overrides["sync_bn"] = True
    return overrides


def run(cfg: TrainConfig, *, command: str, options: Mapping[str, Any]) -> None:
    """Check the model names, then train ``cfg`` on ``options["device"]`` (resuming, stopping early as
    the options say): here, or (``--nproc`` > 1) by re-running ``sld COMMAND ...`` under
    ``torch.distributed.run``; under torchrun each process joins the group first."""
    check_model_names(cfg.student, cfg.teacher)
    from harness.train import distributed

    nproc = options.get("nproc")
    if nproc is not None and nproc > 1:
        if distributed.torchrun_env() is not None:
            raise ConfigError("--nproc is for the sld command line; under torchrun leave it out")
        # Fail here once, not in N processes (each behind torchrun's own failure report).
        distributed.check_global_batch(cfg.optim.batch_size, nproc)
        resolve_device(options.get("device"))
        RunDir(cfg.out_dir).check_unlocked()  # rank 0 takes the lock itself; this only fails early
        args = sys.argv[1:]
        if not args or args[0] != command:  # e.g. called from Python, not from `sld COMMAND ...`
            raise ConfigError(f"--nproc works from the command line (sld {command} ... --nproc N) only")
        relaunch(strip_option(args, "--nproc"), nproc)

    from harness.train.loop import train as train_loop

    torch_device, joined = distributed.setup(resolve_device(options.get("device")))
    try:
        train_loop(cfg, torch_device, resume=options["resume"], stop_after=options.get("stop_after"))
    finally:
        if joined:
            distributed.teardown()


def resolve_device(device: str | None) -> torch.device:
    """``--device`` as a ``torch.device``: the one given, else CUDA when available, else the CPU;
    :class:`ConfigError` (one line) for a device that is no device or is not here
    (:func:`harness.train.device.as_device`)."""
    from harness.train.device import as_device

    return as_device(device, label="--device")


def resumed_config(out: Path) -> TrainConfig:
    """:func:`harness.train.checkpoint.resume_config` of the run in ``out`` (torch is imported here,
    not when the CLI starts)."""
    from harness.train.checkpoint import resume_config

    return resume_config(RunDir(out))


def check_model_names(*names: str | None) -> None:
    from harness.models import MODELS

    for name in names:
        if name is not None and name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")


def floats(text: str, flag: str) -> tuple[float, ...]:
    """``"1,2,3"`` as ``(1.0, 2.0, 3.0)``; an empty item (``1,,2``, a trailing comma) or a word is an
    error naming ``flag``, never skipped."""
    return tuple(float(v) for v in _items(text, flag, float, "numbers, e.g. 1,2,3"))


def ints(text: str, flag: str) -> tuple[int, ...]:
    """``"150,180"`` as ``(150, 180)``; ``1.5`` or an empty item is an error naming ``flag``."""
    return tuple(int(v) for v in _items(text, flag, int, "integers, e.g. 150,180,210"))


def _items(text: str, flag: str, kind: type, example: str) -> list[Any]:
    parts = [part.strip() for part in text.split(",")]
    if any(part == "" for part in parts):
        raise ConfigError(f"{flag} takes comma-separated {example}, with no empty item; got {text!r}")
    try:
        return [kind(part) for part in parts]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated {example}; got {text!r}") from None


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
            print_error(str(exc), "stopped: ")
        raise typer.Exit(code=exc.exit_code) from None
    except DistributedAbort:
        raise typer.Exit(code=1) from None  # rank 0 prints the cause
    except (ValueError, OSError, DatasetError, NonFiniteLossError) as exc:
        # OSError: a full disk or a permission problem, which the message names (FileNotFoundError too).
        print_error(str(exc), "error: " if rank == "0" else f"[rank {rank}] error: ")
        raise typer.Exit(code=1) from None


def print_error(message: str, label: str = "error: ") -> None:
    """One line on stderr, ``label`` in bold red (how every command reports a problem)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text.assemble((label, "bold red"), message))


def launch_command(args: list[str], nproc: int, *, executable: str = sys.executable) -> list[str]:
    """The ``torch.distributed.run`` command line that runs ``sld ARGS`` in ``nproc`` processes on
    this machine (``--standalone``: a local rendezvous on a free port)."""
    return [
        executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "harness",  # harness/__main__.py: the sld command line
        *args,
    ]


def relaunch(args: list[str], nproc: int) -> None:
    """Replace this process by ``torch.distributed.run`` running ``sld ARGS`` in ``nproc`` processes.

    ``os.execv`` rather than a child: Ctrl-C and ``kill`` then reach torchrun directly, which passes
    them on to every worker. Each worker gets ``cpu_count // nproc`` threads unless OMP_NUM_THREADS
    says otherwise (torchrun's own default is 1, with a warning).
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = launch_command(args, nproc)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def strip_option(args: list[str], name: str) -> list[str]:
    """``args`` without ``NAME VALUE`` / ``NAME=VALUE`` (how ``--nproc`` is dropped before relaunching)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out
