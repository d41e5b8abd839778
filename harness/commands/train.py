"""``sld train``: distill a CIFAR-100 student from its teacher with any method name
(:mod:`harness.method_names`: ce, kd, dkd, mlkd, sld and their switches).

The command only builds a :class:`harness.config.TrainConfig` (from a pair's official recipe, a
``--config`` file, or the run being resumed, then the flags on top) and hands it to
:func:`harness.train.loop.train`. torch is imported inside the command, so ``sld --help`` stays fast.

    sld train --pair resnet32x4-resnet8x4                  # SLD, official recipe
    sld train --pair resnet32x4-resnet8x4 --method kd      # the KD baseline (mdistiller recipe)
    sld train --pair wrn40_2-wrn16_2 --method ls-mlkd      # MLKD + logit standardization, as published
    sld train --pair wrn40_2-wrn16_2 --method dkd --teacher-processing swap --pseudo-teacher  # = sld-dkd
    sld train --pair wrn40_2-wrn16_2 --method kd --kd-temperature 2 --ce-weight 0.5   # tuned flags
    sld train --pair wrn40_2-wrn16_2 --set optim.weight_decay=1e-4 --set sld.gamma=120  # any field
    sld train --pair wrn40_2-wrn16_2 --print-config > sld.json     # the resolved config, no training
    sld train --pair wrn40_2-wrn16_2 --log tensorboard,csv --log-every 20   # trackers besides metrics.jsonl
    sld train --student-model my_pkg.models:build_student --method ce   # your own model (= --student)
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

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.commands._common import (
    SHARED_OPTIONS,
    apply_set,
    check_model_names,
    choice,
    common_overrides,
    floats,
    resumed_config,
    run,
    shared_options,
    user_errors,
)
from harness.config import (
    METHOD_CONFIGS,
    PROCESSING_ROWS,
    ROW_CHOICE_PROCESSINGS,
    SWAP_MODES,
    TEACHER_PROCESSINGS,
    ConfigError,
    DataConfig,
    DKDConfig,
    KDConfig,
    OptimConfig,
    SLDConfig,
    TrainConfig,
    load_config,
    with_overrides,
)
from harness.method_names import NAMED_METHODS, canonical_name, method_label, parse_method
from harness.recipes import MLKD_EPOCHS, logit_standardized, method_config, method_views, pair_config
from harness.runs import DEFAULT_RUNS_DIR, RunDir, TeacherNotFoundError, find_teacher

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
    "loss.ce_weight": "--ce-weight",
    "loss.kd_weight": "--kd-weight",
    "loss.temperature": "--kd-temperature",
    "loss.alpha": "--dkd-alpha",
    "loss.beta": "--dkd-beta",
    "loss.warmup_epochs": "--dkd-warmup",
}
# Flags that only mean something for one teacher processing (checked on the resulting config).
_PROCESSING_FLAGS = {
    "loss.swap_threshold": ("--swap-threshold", ("conditional_swap",)),
    "loss.swap_mode": ("--swap-mode", ("conditional_swap",)),
    "loss.processing_rows": ("--processing-rows", tuple(sorted(ROW_CHOICE_PROCESSINGS))),
}
ProcessingChoice = choice("ProcessingChoice", TEACHER_PROCESSINGS)
SwapModeChoice = choice("SwapModeChoice", SWAP_MODES)
RowsChoice = choice("RowsChoice", PROCESSING_ROWS)
_NAMES = ", ".join(NAMED_METHODS)
_KD, _DKD, _SLD = KDConfig(), DKDConfig(), SLDConfig()


@shared_options(*SHARED_OPTIONS)
def train(
    pair: Annotated[
        str | None,
        typer.Option("--pair", help="Teacher-student pair (see `sld pairs`): its official recipe."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            metavar="NAME",
            help=f"Method (default sld): {_NAMES}; or another composed name such as ls-kd@swap+pt "
            "(prefix ls-, suffixes @PROCESSING and +pt: README, the names; `sld pairs --pair P` lists "
            "each one's recipe).",
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
        str | None,
        typer.Option(
            "--student",
            "--student-model",
            metavar="SPEC",
            help="Student model, instead of --pair: a zoo name (`sld models`), an import path "
            "package.module:callable (called with num_classes) or an `sld.models` entry point.",
        ),
    ] = None,
    teacher_model: Annotated[
        str | None, typer.Option("--teacher-model", help="Teacher model, with --student.")
    ] = None,
    teacher_processing: Annotated[
        ProcessingChoice | None,  # type: ignore[valid-type]
        typer.Option(
            "--teacher-processing",
            help="How the teacher's logits are fixed first (default: the method's; swap for sld).",
        ),
    ] = None,
    swap_threshold: Annotated[
        float | None,
        typer.Option(
            "--swap-threshold",
            help="conditional_swap: swap the wrong rows whose teacher gap p_top - p_target is below this "
            "(default: 0.5; inf: every wrong row).",
        ),
    ] = None,
    swap_mode: Annotated[
        SwapModeChoice | None,  # type: ignore[valid-type]
        typer.Option(
            "--swap-mode", help="conditional_swap: below (gap < threshold, default) or at_least (>=)."
        ),
    ] = None,
    processing_rows: Annotated[
        RowsChoice | None,  # type: ignore[valid-type]
        typer.Option("--processing-rows", help="soft/double/halve/label smoothing: wrong (default) or all."),
    ] = None,
    pseudo_teacher: Annotated[
        bool | None,
        typer.Option(
            "--pseudo-teacher/--no-pseudo-teacher",
            help="The student's own swapped logits as a second target after epoch --gamma (default: on for "
            "sld, off otherwise).",
        ),
    ] = None,
    detach_pseudo_teacher: Annotated[
        bool,
        typer.Option(
            "--detach-pseudo-teacher",
            help="No gradient through the swapped student logits (default: off, as the official code).",
        ),
    ] = False,
    gamma: Annotated[
        float | None, typer.Option("--gamma", help="Pseudo-teacher on after this epoch (recipe: 150).")
    ] = None,
    temperatures: Annotated[
        str | None,
        typer.Option("--temperatures", help="sld: the KD temperatures, summed (default: 1,2,3,4,5,6)."),
    ] = None,
    ce_weight: Annotated[
        float | None,
        typer.Option(
            "--ce-weight", min=0.0,
            help=f"Weight of the cross-entropy on the labels (recipe: kd/mlkd/sld {_KD.ce_weight:g}, "
            f"dkd {_DKD.ce_weight:g}; ls- names 1).",
        ),
    ] = None,
    kd_weight: Annotated[
        float | None,
        typer.Option(
            "--kd-weight", min=0.0,
            help=f"Weight of the distillation term: kd, mlkd, sld (recipe: {_SLD.kd_weight:g}); with "
            "logit standardization the LS weight (the pair's, else 9; dkd: alpha and beta times it).",
        ),
    ] = None,
    kd_temperature: Annotated[
        float | None,
        typer.Option(
            "--kd-temperature",
            help=f"The temperature of kd and dkd, mlkd's first one (recipe: {_KD.temperature:g}); "
            "sld: --temperatures.",
        ),
    ] = None,
    dkd_alpha: Annotated[
        float | None,
        typer.Option(
            "--dkd-alpha", min=0.0, help=f"dkd: target-class (TCKD) weight (recipe: {_DKD.alpha:g})."
        ),
    ] = None,
    dkd_beta: Annotated[
        float | None,
        typer.Option(
            "--dkd-beta", min=0.0,
            help=f"dkd: non-target (NCKD) weight (recipe: the pair's, {_DKD.beta:g} without one).",
        ),
    ] = None,
    dkd_warmup: Annotated[
        int | None,
        typer.Option(
            "--dkd-warmup", min=0,
            help=f"dkd: epochs over which the KD term ramps in (recipe: {_DKD.warmup_epochs}).",
        ),
    ] = None,
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
    *,
    options: dict[str, Any],
) -> None:
    """Distill a student (CIFAR-100 unless --dataset says otherwise) and log every epoch to
    OUT/metrics.jsonl (and to the --log trackers)."""
    with user_errors():
        if method is not None:
            parse_method(method)  # a bad name fails here, before anything is loaded
        config_file, resume = options["config"], options["resume"]
        resume_only = config_file is None and resume and not (pair or student or teacher_model)
        if resume_only and (logit_stand or base_temp is not None):
            raise ConfigError(
                "--logit-stand and --base-temp build a new run's loss; a resumed run keeps its own "
                "(drop them, or start a new --out)"
            )
        # With logit standardization --kd-weight is the rewrite's weight (dkd: alpha and beta times it);
        # otherwise it sets loss.kd_weight like any loss flag.
        ls_rewrite = not resume_only and (
            logit_stand or (config_file is None and parse_method(method or "sld").logit_stand)
        )
        if ls_rewrite and kd_temperature is not None and base_temp is not None:
            raise ConfigError("--kd-temperature and --base-temp both set the temperature here; give one")
        base = _base_config(
            pair=pair,
            method=method,
            student=student,
            teacher_model=teacher_model,
            config=config_file,
            out=options["out"],
            resume=resume,
            logit_stand=logit_stand,
            base_temp=base_temp,
            kd_weight=kd_weight if ls_rewrite else None,
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
                "loss.ce_weight": ce_weight,
                "loss.kd_weight": None if ls_rewrite else kd_weight,
                "loss.temperature": kd_temperature,
                "loss.alpha": dkd_alpha,
                "loss.beta": dkd_beta,
                "loss.warmup_epochs": dkd_warmup,
            }
        )
        cfg = apply_set(_apply(base, overrides), options["set_values"], flags=overrides)
        if cfg.method != "ce" and cfg.teacher_checkpoint is None:
            try:
                teacher_path = find_teacher(cfg.teacher, options["runs_dir"])
            except TeacherNotFoundError as exc:
                if not options["print_config"]:
                    raise
                typer.echo(f"note: teacher_checkpoint stays null: {exc}", err=True)
            else:
                cfg = with_overrides(cfg, {"teacher_checkpoint": str(teacher_path)})
        run(cfg, command="train", options=options)


def _check_moved_run(config_file: Path, config: TrainConfig, out: Path | None, resume: bool) -> None:
    """``--config RUN/config.json --resume`` of a run directory that was copied or moved: its config
    still names the directory it was written in, which the run would resume instead; say so."""
    run = RunDir(config_file.parent)
    if not resume or out is not None or not run.last.is_file():
        return
    if config_file.resolve() == run.config.resolve() and Path(config.out_dir).resolve() != run.path.resolve():
        raise ConfigError(
            f"{config_file} records the run directory {config.out_dir}, not {run.path} (a copied or moved "
            f"run?): add --out {run.path} to resume this one, or --out {config.out_dir} for the original"
        )


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
        _check_moved_run(config, base, out, resume)
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
            raise ConfigError("--base-temp is a parameter of --logit-stand")
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
        data=DataConfig(views=method_views(base_method)),  # the published recipe's, as --pair gives them
        out_dir=f"{DEFAULT_RUNS_DIR}/{student}/{canonical_name(name)}",
    )


def _apply(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """:func:`with_overrides`, but a loss flag that the method does not have is named as the flag, and so
    is a teacher-processing parameter given for a processing that has no such parameter."""
    for field_path, flag in _LOSS_FLAGS.items():
        name = field_path.split(".")[1]
        if overrides.get(field_path) is not None and name not in _fields(type(base.loss)):
            users = [m for m, cls in METHOD_CONFIGS.items() if name in _fields(cls)]
            raise ConfigError(f"{flag} applies to method {' / '.join(users)}, not {base.method!r}")
    config = with_overrides(base, overrides)
    for field_path, (flag, processings) in _PROCESSING_FLAGS.items():
        processing = getattr(config.loss, "teacher_processing", None)
        if overrides.get(field_path) is not None and processing not in processings:
            raise ConfigError(
                f"{flag} applies to --teacher-processing {' / '.join(processings)}, not {processing!r}"
            )
    return config


def _fields(cls: type) -> set[str]:
    """The dataclass fields of a loss config (``MLKDConfig.temperatures`` is a property, not a field)."""
    return {f.name for f in dataclasses.fields(cls)}
