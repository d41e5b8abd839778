"""``sld eval CKPT``: test top-1/top-5 of a checkpoint on CIFAR-100.

Takes both this harness's checkpoints (``last.pt``/``best.pt``: the model name is in them) and the
community teacher files (``{"model": state_dict}``: name the model with ``--model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.commands._common import AmpOpt, DataDirOpt, DeviceOpt, LimitTestOpt, resolve_device, user_errors
from harness.config import ConfigError, DataConfig


def eval(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint file (best.pt, last.pt, mdistiller .pth).")
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Model name; needed for files of other code.")
    ] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch.")] = 512,
    limit_test: LimitTestOpt = None,
) -> None:
    """Print the CIFAR-100 test top-1 and top-5 accuracy of CHECKPOINT."""
    with user_errors():
        from rich.console import Console

        from harness.models import MODELS, build_model, load_weights
        from harness.train.checkpoint import checkpoint_model_name
        from harness.train.data import load_data
        from harness.train.evaluate import evaluate

        name = model or checkpoint_model_name(checkpoint)
        if name is None:
            raise ConfigError(
                f"{checkpoint} does not say which model it holds; pass --model NAME "
                f"(one of: {', '.join(MODELS)})"
            )
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
        torch_device = resolve_device(device)
        data = load_data(
            DataConfig(data_dir=str(data_dir) if data_dir else None, limit_train=2, limit_test=limit_test),
            torch_device,
        )
        net = load_weights(build_model(name, num_classes=data.num_classes), checkpoint).to(torch_device)
        top1, top5 = evaluate(net, data, "test", batch_size=batch_size, amp=amp or "off")
        Console().print(
            f"{checkpoint} ({name}): test top-1 {100 * top1:.2f}%, top-5 {100 * top5:.2f}% "
            f"on {data.num_images('test')} images"
        )
