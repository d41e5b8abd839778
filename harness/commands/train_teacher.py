"""``sld train-teacher``: train a CIFAR-100 teacher with cross-entropy, where ``sld train`` finds it.

The recipe is the one behind the community teachers (CRD / mdistiller ``*_vanilla``):
:func:`harness.train.config.teacher_config`. The run goes to ``RUNS/teachers/<model>/``; its
``best.pt`` is what ``sld train`` uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.commands.train import (
    AmpOpt,
    BatchSizeOpt,
    ChannelsLastOpt,
    CompileOpt,
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    EpochsOpt,
    LimitTestOpt,
    LimitTrainOpt,
    LrOpt,
    MilestonesOpt,
    NprocOpt,
    OutOpt,
    ResumeOpt,
    RunsDirOpt,
    SeedOpt,
    StopAfterOpt,
    SyncBnOpt,
    ViewsOpt,
    common_overrides,
    run,
    user_errors,
)
from harness.train.config import ConfigError, load_config, teacher_config, with_overrides
from harness.train.paths import DEFAULT_RUNS_DIR, teacher_run_dir


def train_teacher(
    model: Annotated[str | None, typer.Option("--model", help="Teacher model (see `sld models`).")] = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    lr_milestones: MilestonesOpt = None,
    seed: SeedOpt = None,
    amp: AmpOpt = None,
    channels_last: ChannelsLastOpt = None,
    compile: CompileOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = Path(DEFAULT_RUNS_DIR),
    views: ViewsOpt = None,
    limit_train: LimitTrainOpt = None,
    limit_test: LimitTestOpt = None,
    nproc: NprocOpt = None,
    sync_bn: SyncBnOpt = False,
    stop_after: StopAfterOpt = None,
) -> None:
    """Train a teacher with cross-entropy; `sld train` then finds RUNS/teachers/MODEL/best.pt."""
    with user_errors():
        if config is None and resume:
            if out is None and model is None:
                raise ConfigError("--resume needs --model (or --out DIR) to find the run")
            config = (out or teacher_run_dir(model, runs_dir)) / "config.json"
        if config is not None:
            base = load_config(config)
            if base.method != "ce":
                raise ConfigError(f"{config} is a {base.method!r} run, not a teacher (ce) run")
        elif model is None:
            raise ConfigError("say which teacher to train: --model NAME (see `sld models`)")
        else:
            base = teacher_config(model, runs_dir)
        cfg = with_overrides(
            base,
            common_overrides(
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                lr_milestones=lr_milestones,
                seed=seed,
                amp=amp,
                channels_last=channels_last,
                compile=compile,
                out=out,
                data_dir=data_dir,
                views=views,
                limit_train=limit_train,
                limit_test=limit_test,
                sync_bn=sync_bn,
            ),
        )
        run(
            cfg,
            device,
            resume=resume,
            command="train-teacher",
            nproc=nproc,
            stop_after=stop_after,
        )
