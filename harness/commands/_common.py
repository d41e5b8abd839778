"""What the command modules share: the options ``sld train``, ``sld train-teacher`` and ``sld
reproduce`` have in common (declared once), the translation of options into config fields (the flags,
and ``--set KEY=VALUE`` for any field: :func:`apply_set`), the one device resolver, the error boundary
(:func:`user_errors`: one red line instead of a traceback), and :func:`run`, which prints the resolved
config (``--print-config``), trains it here, or re-runs the command under ``torch.distributed.run``.
Command modules import this, never each other. torch is imported inside functions only, so ``sld
--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from harness.config import (
    AMP_MODES,
    DATASETS,
    METHOD_CONFIGS,
    TRACKERS,
    ConfigError,
    TrainConfig,
    train_config_to_dict,
    with_overrides,
)
from harness.runs import DEFAULT_RUNS_DIR, RunDir
from harness.train.errors import NonFiniteLossError
from harness.train.interrupt import DistributedAbort, TrainingInterrupted

if TYPE_CHECKING:
    import torch

__all__ = [
    "SHARED_OPTIONS",
    "apply_set",
    "choice",
    "check_model_names",
    "common_overrides",
    "floats",
    "LAUNCH_FLAGS",
    "Nodes",
    "ints",
    "launch_command",
    "plain",
    "print_error",
    "resolve_device",
    "resumed_config",
    "run",
    "shared_options",
    "strip_option",
    "trackers",
    "user_errors",
]


def choice(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A str Enum of ``values``, for an option whose ``--help`` lists its valid values (Typer renders an
    Enum as ``<a|b|c>`` and refuses anything else); :func:`shared_options` hands commands the plain
    strings."""
    return enum.Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """An option's value with a :func:`choice` member as its string."""
    return value.value if isinstance(value, enum.Enum) else value


AmpChoice = choice("AmpChoice", AMP_MODES)
DatasetChoice = choice("DatasetChoice", DATASETS)
AugmentChoice = choice("AugmentChoice", ("imagenet", "cifar"))

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
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Seed for init, shuffling and augmentation (default: 0).")
]
AmpOpt = Annotated[
    AmpChoice | None,  # type: ignore[valid-type]
    typer.Option("--amp", help="Mixed precision (default: off, exact float32)."),
]
WeightDecayOpt = Annotated[
    float | None,
    typer.Option("--weight-decay", min=0.0, help="SGD weight decay (recipe: 5e-4 CIFAR-100, 1e-4 ImageNet)."),
]
ChannelsLastOpt = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last",
        help="NHWC activations (faster convolutions on tensor cores; default: off).",
    ),
]
CompileOpt = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile the student (default: off).")
]
CudaGraphsOpt = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        help="CUDA: replay every full-batch training step as one CUDA graph (not with fp16, DDP, --compile).",
    ),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="torch device (default: cuda if available).")]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Run directory (config, metrics, checkpoints; default: runs/<pair>/<method>)."
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Start from this config.json; flags override it.")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="CIFAR-100 cache folder; the image folder of --dataset imagenet/folder."),
]
DatasetOpt = Annotated[
    DatasetChoice | None,  # type: ignore[valid-type]
    typer.Option(
        "--dataset",
        help="cifar100 (default), imagenet (train/ + val/ class folders) or folder (any class folders).",
    ),
]
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", min=8, help="Crop side (default 32 CIFAR-style, 224 ImageNet).")
]
AugmentOpt = Annotated[
    AugmentChoice | None,  # type: ignore[valid-type]
    typer.Option("--augment", help="--dataset folder: imagenet (streamed, the official views) or cifar."),
]
ValFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--val-fraction", help="--dataset folder without val/: held-out fraction per class (required there)."
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=0, help="Streamed data: decode processes per rank (4).")
]
RunsDirOpt = Annotated[
    Path, typer.Option("--runs-dir", help="Root of the runs tree (teachers live in RUNS/teachers).")
]
ViewsOpt = Annotated[
    int | None,
    typer.Option(
        "--views", min=1, max=2,
        help="1: weak view; 2: weak + strong, losses summed (recipe: 2 for sld and mlkd, 1 for kd/dkd/ce).",
    ),
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
NnodesOpt = Annotated[
    int | None,
    typer.Option(
        "--nnodes",
        min=1,
        help="Machines in a multi-node run: start the same command on each with its --node-rank; all "
        "meet at --rdzv-endpoint. World size = nnodes x nproc.",
    ),
]
NodeRankOpt = Annotated[
    int | None, typer.Option("--node-rank", min=0, help="This machine's rank, 0..nnodes-1.")
]
RdzvEndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--rdzv-endpoint", help="HOST:PORT of node 0, where the nodes meet (torchrun's rendezvous)."
    ),
]
SyncBnOpt = Annotated[
    bool,
    typer.Option(
        "--sync-bn", help="With several processes (CUDA): BatchNorm statistics over the global batch."
    ),
]
OfficialWrnBnOpt = Annotated[
    bool | None,
    typer.Option(
        "--official-wrn-bn/--clean-wrn-bn",
        help="WRN: update three BatchNorm layers' running statistics twice per step, as the official "
        "forward does (students' default), or once (teachers' default).",
    ),
]
LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        metavar="TRACKERS",
        help="Also log every epoch (and the step loss and lr) to these, comma-separated: "
        f"{', '.join(TRACKERS)} (tensorboard, wandb: optional extras); none: only metrics.jsonl.",
    ),
]
LogEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--log-every", min=1,
        help="Steps between progress updates and tracker step scalars, each a host sync (default: 50).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Set any config field, repeatable: --set optim.weight_decay=1e-4 --set sld.gamma=120 (the "
        "method's section by its name or as loss.; VALUE as JSON, else a string). Checked like --config.",
    ),
]
PrintConfigOpt = Annotated[
    bool, typer.Option("--print-config", help="Print the resolved config as JSON and exit (loads no data).")
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
    "cuda_graphs": (CudaGraphsOpt, None),
    "device": (DeviceOpt, None),
    "out": (OutOpt, None),
    "resume": (ResumeOpt, False),
    "config": (ConfigOpt, None),
    "data_dir": (DataDirOpt, None),
    "dataset": (DatasetOpt, None),
    "image_size": (ImageSizeOpt, None),
    "augment": (AugmentOpt, None),
    "val_fraction": (ValFractionOpt, None),
    "workers": (WorkersOpt, None),
    "runs_dir": (RunsDirOpt, Path(DEFAULT_RUNS_DIR)),
    "views": (ViewsOpt, None),
    "limit_train": (LimitTrainOpt, None),
    "limit_test": (LimitTestOpt, None),
    "nproc": (NprocOpt, None),
    "nnodes": (NnodesOpt, None),
    "node_rank": (NodeRankOpt, None),
    "rdzv_endpoint": (RdzvEndpointOpt, None),
    "sync_bn": (SyncBnOpt, False),
    "official_wrn_bn": (OfficialWrnBnOpt, None),
    "stop_after": (StopAfterOpt, None),
    "weight_decay": (WeightDecayOpt, None),
    "log": (LogOpt, None),
    "log_every": (LogEveryOpt, None),
    "set_values": (SetOpt, None),
    "print_config": (PrintConfigOpt, False),
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
            options = {name: plain(kwargs.pop(name, SHARED_OPTIONS[name][1])) for name in names}
            command(**{key: plain(value) for key, value in kwargs.items()}, options=options)

        with_options.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return with_options

    return decorate


def common_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The config fields (dotted, for :func:`with_overrides`) that the :data:`SHARED_OPTIONS` among
    ``options`` set; options left out (``None``, or a flag not given) set nothing."""
    amp = plain(options.get("amp"))
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
        "cuda_graphs": "cuda_graphs",
        "official_wrn_bn": "official_wrn_bn",
        "views": "data.views",
        "limit_train": "data.limit_train",
        "limit_test": "data.limit_test",
        "dataset": "data.dataset",
        "image_size": "data.image_size",
        "augment": "data.augment",
        "val_fraction": "data.val_fraction",
        "workers": "data.workers",
        "weight_decay": "optim.weight_decay",
        "log_every": "log_every",
    }
    overrides: dict[str, Any] = {field: plain(options.get(name)) for name, field in as_is.items()}
    overrides.update(
        {field: str(options[name]) for name, field in as_str.items() if options.get(name) is not None}
    )
    if milestones is not None:
        overrides["optim.lr_milestones"] = ints(milestones, "--lr-milestones")
    if options.get("sync_bn"):  # a flag left out keeps the config's (e.g. a resumed run's)
        overrides["sync_bn"] = True
    if options.get("log") is not None:
        overrides["trackers"] = trackers(options["log"])
    return overrides


def trackers(text: str) -> tuple[str, ...]:
    """``--log`` as tracker names: ``"csv,tensorboard"`` -> ``("csv", "tensorboard")``; ``none`` (or
    an empty value) -> ``()``. An unknown or repeated name is an error listing the valid ones.

    >>> trackers("tensorboard, csv")
    ('tensorboard', 'csv')
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names in ([], ["none"]):
        return ()
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or len(set(names)) != len(names):
        problem = f"unknown {', '.join(map(repr, unknown))}" if unknown else "a name given twice"
        raise ConfigError(
            f"--log takes comma-separated {', '.join(TRACKERS)} (or none); {problem} in {text!r}"
        )
    return tuple(names)


def apply_set(
    config: TrainConfig, values: Sequence[str] | None, *, flags: Mapping[str, Any] | None = None
) -> TrainConfig:
    """``config`` with each ``--set KEY=VALUE`` applied through :func:`harness.config.with_overrides`
    (so with the type and range checks a ``--config`` file gets).

    ``KEY`` is a dotted field (``optim.weight_decay``, ``data.views``, ``seed``); the method's section
    is ``loss.`` or the base method's name (``sld.gamma``, ``kd.temperature`` on a kd run), and another
    method's name is refused. ``VALUE`` is read as JSON when it parses (``1e-4``, ``true``, ``null``,
    ``[1, 2]``, ``"text"``), ``inf`` / ``-inf`` as infinities, anything else as a plain string.
    ``flags`` are the fields the command's flags set (non-``None``): a field set by both is an error.

    Raises
    ------
    ConfigError
        A malformed item, an unknown field or section, a value of the wrong type or range (the
        message quotes the item), or a field set twice.

    Example
    -------
    >>> from harness.recipes import pair_config
    >>> cfg = apply_set(pair_config("wrn40_2-wrn16_2"), ["sld.gamma=120", "optim.weight_decay=1e-4"])
    >>> cfg.loss.gamma, cfg.optim.weight_decay
    (120, 0.0001)
    """
    seen: dict[str, str] = {}
    for item in values or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                "--set takes KEY=VALUE, e.g. --set optim.weight_decay=1e-4 or --set sld.gamma=120; "
                f"got {item!r}"
            )
        field = _set_field(key, config)
        if field in seen:
            raise ConfigError(f"--set {seen[field]!r} and --set {item!r} both set {field}; give it once")
        if (flags or {}).get(field) is not None:
            raise ConfigError(f"--set {item!r} sets {field}, which a flag of this command sets too; give one")
        seen[field] = item
        try:
            config = with_overrides(config, {field: _set_value(text.strip())}, skip_none=False)
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    return config


def _set_field(key: str, config: TrainConfig) -> str:
    """``key`` with the method's section name (``sld.``, ``kd.``, ...) as ``loss.``."""
    section, dot, rest = key.partition(".")
    if not dot or section not in METHOD_CONFIGS:
        return key
    if section != config.method:
        raise ConfigError(
            f"--set {key}: this run's method is {config.method!r}, so its loss settings are "
            f"{config.method}.* (or loss.*), not {section}.*"
        )
    return f"loss.{rest}"


def _set_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    infinities = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf}
    return infinities.get(text.lower(), text)


def run(cfg: TrainConfig, *, command: str, options: Mapping[str, Any]) -> None:
    """Check the model names, then train ``cfg`` on ``options["device"]`` (resuming, stopping early as
    the options say): here, or (``--nproc`` > 1) by re-running ``sld COMMAND ...`` under
    ``torch.distributed.run``; under torchrun each process joins the group first. With
    ``options["print_config"]`` it prints ``cfg`` as JSON (what ``config.json`` would hold, and what
    ``--config`` takes) and returns without loading anything."""
    check_model_names(cfg.student, cfg.teacher)
    if options.get("print_config"):
        typer.echo(json.dumps(train_config_to_dict(cfg), indent=2))
        return
    check_tracker_packages(cfg.trackers)
    from harness.train import distributed

    nproc, nodes = options.get("nproc") or 1, Nodes.of(options)
    if nproc > 1 or nodes.count > 1:
        if distributed.torchrun_env() is not None:
            raise ConfigError("--nproc/--nnodes are for the sld command line; under torchrun leave them out")
        # Fail here once, not in N processes (each behind torchrun's own failure report).
        distributed.check_global_batch(cfg.optim.batch_size, nproc * nodes.count)
        resolve_device(options.get("device"))
        RunDir(cfg.out_dir).check_unlocked()  # rank 0 takes the lock itself; this only fails early
        args = sys.argv[1:]
        if not args or args[0] != command:  # e.g. called from Python, not from `sld COMMAND ...`
            raise ConfigError(f"--nproc works from the command line (sld {command} ... --nproc N) only")
        for flag in LAUNCH_FLAGS:
            args = strip_option(args, flag)
        relaunch(args, nproc, nodes)

    from harness.train.loop import train as train_loop

    torch_device, joined = distributed.setup(resolve_device(options.get("device")))
    try:
        train_loop(cfg, torch_device, resume=options["resume"], stop_after=options.get("stop_after"))
    finally:
        if joined:
            distributed.teardown()


def check_tracker_packages(names: Iterable[str]) -> None:
    """Each tracker's package is installed (one line naming the extra otherwise), checked before
    anything is loaded or relaunched; the trainer imports them when it starts."""
    from harness.train.trackers import check_installed

    check_installed(names)


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
    """Each model spec resolves: a built-in name, ``package.module:callable`` or an ``sld.models``
    entry point (the message lists the valid names)."""
    from harness.models import ModelSpecError, resolve_model

    for name in names:
        if name is not None:
            try:
                resolve_model(name)
            except ModelSpecError as exc:
                raise ConfigError(str(exc)) from None


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


LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint")  # consumed by the relaunch


@dataclass(frozen=True)
class Nodes:
    """The machines of a multi-node run: ``count`` of them, this one ``rank``, meeting at ``endpoint``."""

    count: int = 1
    rank: int = 0
    endpoint: str | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Nodes:
        """From ``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint``; one clear error if they do not fit."""
        count, rank = options.get("nnodes") or 1, options.get("node_rank")
        endpoint = options.get("rdzv_endpoint")
        if count == 1:
            if rank not in (None, 0) or endpoint is not None:
                raise ConfigError(
                    "--node-rank and --rdzv-endpoint belong to a multi-node run (--nnodes > 1)"
                )
            return cls()
        if rank is None or endpoint is None:
            raise ConfigError(
                f"--nnodes {count} needs --node-rank (0..{count - 1}) and --rdzv-endpoint HOST:PORT "
                "(node 0's address, the same on every node)"
            )
        if rank >= count:
            raise ConfigError(f"--node-rank {rank} must be below --nnodes {count}")
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--rdzv-endpoint must be HOST:PORT; got {endpoint!r}")
        return cls(count, rank, endpoint)


def launch_command(
    args: list[str], nproc: int, nodes: Nodes = Nodes(), *, executable: str = sys.executable
) -> list[str]:
    """The ``torch.distributed.run`` command line that runs ``sld ARGS`` in ``nproc`` processes on this
    machine: on one machine ``--standalone`` (a local rendezvous on a free port); on several, torchrun's
    static rendezvous at ``nodes.endpoint`` with this machine's ``--node-rank`` (so global ranks are
    ``node_rank * nproc + local_rank``, the same at every start)."""
    if nodes.count == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [
            "--nnodes",
            str(nodes.count),
            "--node-rank",
            str(nodes.rank),
            "--rdzv-backend",
            "static",
            "--rdzv-endpoint",
            str(nodes.endpoint),
        ]
    return [
        executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        "--nproc_per_node",
        str(nproc),
        "-m",
        "harness",  # harness/__main__.py: the sld command line
        *args,
    ]


def relaunch(args: list[str], nproc: int, nodes: Nodes = Nodes()) -> None:
    """Replace this process by ``torch.distributed.run`` running ``sld ARGS`` in ``nproc`` processes.

    ``os.execv`` rather than a child: Ctrl-C and ``kill`` then reach torchrun directly, which passes
    them on to every worker. Each worker gets ``cpu_count // nproc`` threads unless OMP_NUM_THREADS
    says otherwise (torchrun's own default is 1, with a warning).
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = launch_command(args, nproc, nodes)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def strip_option(args: list[str], name: str) -> list[str]:
    """``args`` without ``NAME VALUE`` / ``NAME=VALUE`` (how :data:`LAUNCH_FLAGS` are dropped before
    relaunching)."""
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
