"""``sld train``: distill a CIFAR-100 student from its teacher (ce, kd, dkd or sld).

The command only builds a :class:`harness.config.TrainConfig` (from a pair's official recipe, a
``--config`` file, or the run being resumed, then the flags on top) and hands it to
:func:`harness.train.loop.train`. torch is imported inside the command, so ``sld --help`` stays fast.

    sld train --pair resnet32x4-resnet8x4                  # SLD, official recipe
    sld train --pair resnet32x4-resnet8x4 --method kd      # the KD baseline (mdistiller recipe)
    sld train --config runs/resnet32x4-resnet8x4/sld/config.json   # repeat a run exactly
    sld train --out runs/resnet32x4-resnet8x4/sld --resume         # continue an interrupted run
    sld train --pair resnet32x4-resnet8x4 --resume                 # the same: the first command + --resume
    sld train --pair resnet32x4-resnet8x4 --nproc 4                # 4 GPUs (DDP); --batch-size is global
    torchrun --standalone --nproc_per_node 4 -m harness train --pair ...   # the same, by hand

Ctrl-C (SIGINT) or SIGTERM stops a run between steps; ``--resume`` continues from the last complete
epoch, with the config its ``last.pt`` was saved with (or the one the repeated command builds, which
must agree with it). One process at a time trains in an ``--out`` directory (a second one is refused
with the first one's PID). Exit codes: 1 for an error, 130/143 for SIGINT/SIGTERM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from harness.commands._common import (
    SHARED_OPTIONS,
    check_model_names,
    common_overrides,
    floats,
    resumed_config,
    run,
    shared_options,
    user_errors,
)
from harness.config import METHOD_CONFIGS, ConfigError, TrainConfig, load_config, with_overrides
from harness.recipes import pair_config
from harness.runs import DEFAULT_RUNS_DIR, find_teacher

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
                "loss.temperatures": floats(temperatures, "--temperatures")
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
    """The config the flags apply to: ``--config``, else the pair's recipe or ``--student``/
    ``--teacher-model`` with the default recipe, else (``--resume`` alone) the resumed run's. So both
    ``sld train --out DIR --resume`` and the command that started a run plus ``--resume`` continue it;
    the trainer checks that the config agrees with the run's."""
    if config is None and resume and not (pair or student or teacher_model):
        if out is None:
            raise ConfigError(
                "--resume needs --out DIR (the run to continue), or the --pair/--student options the run "
                "was started with"
            )
        base = resumed_config(out)
        if method is not None and method != base.method:
            raise ConfigError(f"--method {method} conflicts with the run in {out} (method {base.method!r})")
        return base
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
    check_model_names(student, teacher_model)
    return TrainConfig(
        student=student,
        teacher=teacher_model,
        method=method,
        loss=METHOD_CONFIGS[method](),
        out_dir=f"{DEFAULT_RUNS_DIR}/{student}/{method}",
    )


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


