"""``sld train``: distill a CIFAR-100 student from its teacher with any method name
(:mod:`harness.method_names`: ce, kd, dkd, mlkd, sld and their switches).

The command only builds a :class:`harness.config.TrainConfig` (from a pair's official recipe, a
``--config`` file, or the run being resumed, then the flags on top) and hands it to
:func:`harness.train.loop.train`. torch is imported inside the command, so ``sld --help`` stays fast.

    sld train --pair resnet32x4-resnet8x4                  # SLD, official recipe
    sld train --pair resnet32x4-resnet8x4 --method kd      # the KD baseline (mdistiller recipe)
    sld train --pair wrn40_2-wrn16_2 --method ls-mlkd      # MLKD + logit standardization, as published
    sld train --pair wrn40_2-wrn16_2 --method dkd --teacher-processing swap --pseudo-teacher  # = sld-dkd
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
from harness.config import (
    METHOD_CONFIGS,
    ROW_CHOICE_PROCESSINGS,
    TEACHER_PROCESSINGS,
    ConfigError,
    OptimConfig,
    TrainConfig,
    load_config,
    with_overrides,
)
from harness.method_names import canonical_name, method_label, parse_method
from harness.recipes import MLKD_EPOCHS, logit_standardized, method_config, pair_config
from harness.runs import DEFAULT_RUNS_DIR, find_teacher

# CLI flag -> the config field it sets, for the message when a flag does not fit the method.
_LOSS_FLAGS = {
    "loss.teacher_processing": "--teacher-processing",
    "loss.swap_threshold": "--swap-threshold",
    "loss.swap_mode": "--swap-mode",
    "loss.processing_rows": "--processing-rows",
    "loss.pseudo_teacher": "--pseudo-teacher/--no-pseudo-teacher",
    "loss.detach_pseudo_teacher": "--detach-pseudo-teacher",
    "loss.gamma": "--gamma",
    "loss.temperatures": "--temperatures",
}
# Flags that only mean something for one teacher processing (checked on the resulting config).
_PROCESSING_FLAGS = {
    "loss.swap_threshold": ("--swap-threshold", ("conditional_swap",)),
    "loss.swap_mode": ("--swap-mode", ("conditional_swap",)),
    "loss.processing_rows": ("--processing-rows", tuple(sorted(ROW_CHOICE_PROCESSINGS))),
}


@shared_options(*SHARED_OPTIONS)
def train(
    pair: Annotated[
        str | None, typer.Option("--pair", help="Teacher-student pair (see `sld pairs`).")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="A method name (default sld): ce, kd, dkd, mlkd, sld, ls-mlkd, sld-dkd, kd+pt, sld@max-add, "
            "... (`sld pairs --pair P` lists them; README: the names).",
        ),
    ] = None,
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
    teacher_processing: Annotated[
        str | None,
        typer.Option(
            "--teacher-processing",
            help=f"How the teacher's logits are fixed first: {', '.join(TEACHER_PROCESSINGS)}.",
        ),
    ] = None,
    swap_threshold: Annotated[
        float | None,
        typer.Option(
            "--swap-threshold",
            help="conditional_swap: swap the wrong rows whose teacher gap p_top - p_target is below this.",
        ),
    ] = None,
    swap_mode: Annotated[
        str | None,
        typer.Option("--swap-mode", help="conditional_swap: below (gap < threshold) or at_least (>=)."),
    ] = None,
    processing_rows: Annotated[
        str | None,
        typer.Option("--processing-rows", help="soft/double/halve/label smoothing: wrong (default) or all."),
    ] = None,
    pseudo_teacher: Annotated[
        bool | None,
        typer.Option(
            "--pseudo-teacher/--no-pseudo-teacher",
            help="The student's own swapped logits as a second target after epoch --gamma.",
        ),
    ] = None,
    detach_pseudo_teacher: Annotated[
        bool,
        typer.Option("--detach-pseudo-teacher", help="No gradient through the swapped student logits."),
    ] = False,
    gamma: Annotated[
        float | None, typer.Option("--gamma", help="Pseudo-teacher on after this epoch (150).")
    ] = None,
    temperatures: Annotated[str | None, typer.Option("--temperatures", help="sld: e.g. 1,2,3,4,5,6.")] = None,
    logit_stand: Annotated[
        bool,
        typer.Option(
            "--logit-stand",
            help="Logit standardization with its published rewrite of the method's temperature and weights "
            "(= the ls- name of the method).",
        ),
    ] = False,
    base_temp: Annotated[
        float | None,
        typer.Option("--base-temp", help="Logit standardization: base temperature (the pair's, else 2)."),
    ] = None,
    kd_weight: Annotated[
        float | None,
        typer.Option("--kd-weight", help="Logit standardization: KD weight (the pair's, else 9)."),
    ] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Distill a student on CIFAR-100 and log every epoch to OUT/metrics.jsonl."""
    with user_errors():
        if method is not None:
            parse_method(method)  # a bad name fails here, before anything is loaded
        base = _base_config(
            pair=pair,
            method=method,
            student=student,
            teacher_model=teacher_model,
            config=options["config"],
            out=options["out"],
            resume=options["resume"],
            logit_stand=logit_stand,
            base_temp=base_temp,
            kd_weight=kd_weight,
        )
        overrides = common_overrides(options)
        # Processing first: its parameters are checked against the processing they end up with.
        overrides.update(
            {
                "teacher_checkpoint": str(teacher) if teacher is not None else None,
                "loss.teacher_processing": teacher_processing,
                "loss.swap_threshold": swap_threshold,
                "loss.swap_mode": swap_mode,
                "loss.processing_rows": processing_rows,
                "loss.pseudo_teacher": pseudo_teacher,
                "loss.detach_pseudo_teacher": True if detach_pseudo_teacher else None,
                "loss.gamma": gamma,
                "loss.temperatures": floats(temperatures, "--temperatures")
                if temperatures is not None
                else None,
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
    logit_stand: bool = False,
    base_temp: float | None = None,
    kd_weight: float | None = None,
) -> TrainConfig:
    """The config the flags apply to: ``--config``, else the pair's recipe for the method name
    (``harness.recipes.pair_config``) or ``--student``/``--teacher-model`` with the method's default
    settings, else (``--resume`` alone) the resumed run's. So both ``sld train --out DIR --resume`` and
    the command that started a run plus ``--resume`` continue it; the trainer checks that the config
    agrees with the run's. ``--logit-stand`` is the ``ls-`` name of the method (on a ``--config``, the
    LS rewrite of its loss)."""
    if config is None and resume and not (pair or student or teacher_model):
        if out is None:
            raise ConfigError(
                "--resume needs --out DIR (the run to continue), or the --pair/--student options the run "
                "was started with"
            )
        base = resumed_config(out)
        if method is not None and canonical_name(method) not in (method_label(base), base.method):
            raise ConfigError(
                f"--method {method} conflicts with the run in {out} (method {method_label(base)!r})"
            )
        return base
    if config is not None:
        if pair or student or teacher_model:
            raise ConfigError("--config already names the models; drop --pair/--student/--teacher-model")
        base = load_config(config)
        if method is not None and canonical_name(method) not in (method_label(base), base.method):
            raise ConfigError(
                f"--method {method} conflicts with {config} (method {method_label(base)!r}); "
                "edit the file or start from --pair"
            )
        if logit_stand:
            loss = logit_standardized(
                base.loss, pair=base.pair, base_temperature=base_temp, kd_weight=kd_weight
            )
            base = with_overrides(base, {"loss": loss})
        elif base_temp is not None or kd_weight is not None:
            raise ConfigError("--base-temp and --kd-weight are parameters of --logit-stand")
        return base
    name = method or "sld"
    if logit_stand and not name.strip().lower().startswith("ls-"):
        name = f"ls-{name.strip()}"
    if pair is not None:
        if student or teacher_model:
            raise ConfigError("give either --pair or --student/--teacher-model, not both")
        return pair_config(pair, name, base_temperature=base_temp, kd_weight=kd_weight)
    if student is None:
        raise ConfigError(
            "say what to train: --pair P (see `sld pairs`), --student S [--teacher-model T], or --config FILE"
        )
    base_method, loss = method_config(name, base_temperature=base_temp, kd_weight=kd_weight)
    if base_method != "ce" and teacher_model is None:
        raise ConfigError(f"method {name!r} needs --teacher-model with --student (or use --pair)")
    check_model_names(student, teacher_model)
    return TrainConfig(
        student=student,
        teacher=teacher_model,
        method=base_method,
        loss=loss,
        optim=OptimConfig(epochs=MLKD_EPOCHS) if base_method == "mlkd" else OptimConfig(),
        out_dir=f"{DEFAULT_RUNS_DIR}/{student}/{canonical_name(name)}",
    )


def _apply(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """:func:`with_overrides`, but a loss flag that the method does not have is named as the flag, and so
    is a teacher-processing parameter given for a processing that has no such parameter."""
    for field_path, flag in _LOSS_FLAGS.items():
        name = field_path.split(".")[1]
        if overrides.get(field_path) is not None and not hasattr(base.loss, name):
            users = [
                m for m, cls in METHOD_CONFIGS.items() if name in getattr(cls, "__dataclass_fields__", {})
            ]
            raise ConfigError(f"{flag} applies to method {' / '.join(users)}, not {base.method!r}")
    config = with_overrides(base, overrides)
    for field_path, (flag, processings) in _PROCESSING_FLAGS.items():
        processing = getattr(config.loss, "teacher_processing", None)
        if overrides.get(field_path) is not None and processing not in processings:
            raise ConfigError(
                f"{flag} applies to --teacher-processing {' / '.join(processings)}, not {processing!r}"
            )
    return config
