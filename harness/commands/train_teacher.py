"""``sld train-teacher``: train a CIFAR-100 teacher with cross-entropy, where ``sld train`` finds it.

The recipe is the one behind the community teachers (CRD / mdistiller ``*_vanilla``):
:func:`harness.recipes.teacher_config`. The run goes to ``RUNS/teachers/<model>/``; its
``best.pt`` is what ``sld train`` uses.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from harness.commands._common import (
    SHARED_OPTIONS,
    apply_set,
    common_overrides,
    resumed_config,
    run,
    shared_options,
    user_errors,
)
from harness.config import ConfigError, load_config, with_overrides
from harness.recipes import teacher_config
from harness.runs import teacher_run_dir


@shared_options(*SHARED_OPTIONS)
def train_teacher(
    model: Annotated[str | None, typer.Option("--model", help="Teacher model (see `sld models`).")] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Train a teacher with cross-entropy; `sld train` then finds RUNS/teachers/MODEL/best.pt."""
    with user_errors():
        config, out = options["config"], options["out"]
        if config is None and options["resume"]:
            if out is None and model is None:
                raise ConfigError("--resume needs --model (or --out DIR) to find the run")
            directory = out or teacher_run_dir(model, options["runs_dir"])
            base = resumed_config(directory)
            if base.method != "ce":
                raise ConfigError(f"{directory} holds a {base.method!r} run, not a teacher (ce) run")
        elif config is not None:
            base = load_config(config)
            if base.method != "ce":
                raise ConfigError(f"{config} is a {base.method!r} run, not a teacher (ce) run")
        elif model is None:
            raise ConfigError("say which teacher to train: --model NAME (see `sld models`)")
        else:
            base = teacher_config(model, options["runs_dir"])
        overrides = common_overrides(options)
        config = apply_set(with_overrides(base, overrides), options["set_values"], flags=overrides)
        run(config, command="train-teacher", options=options)
