"""``sld eval CKPT``: test top-1/top-5 of a checkpoint.

Takes this harness's checkpoints (``last.pt``/``best.pt``: the model, the data set, its folder and class
list are recorded in them, and used unless a flag says otherwise) and other code's weight files
(mdistiller's ``{"model": state_dict}``, torchvision's raw state_dicts: name the model with ``--model``
and the data with ``--dataset``/``--data-dir``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from harness.commands._common import (
    AmpOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    LimitTestOpt,
    check_model_names,
    plain,
    resolve_device,
    user_errors,
)
from harness.config import ConfigError, DataConfig


def eval(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint file (best.pt, last.pt, mdistiller .pth, torchvision .pth).")
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Model name; needed for files of other code.")
    ] = None,
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch.")] = 512,
    limit_test: LimitTestOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the result here as JSON ('-': stdout only).")
    ] = None,
) -> None:
    """Print the test top-1 and top-5 accuracy and the test loss of CHECKPOINT (on the data its run
    recorded: data set, folder and class list)."""
    amp, dataset = plain(amp), plain(dataset)
    with user_errors():
        from rich.console import Console

        from harness.models import build_model, load_weights
        from harness.train.checkpoint import checkpoint_config
        from harness.train.data import load_data
        from harness.train.evaluate import evaluate

        recorded = checkpoint_config(checkpoint)
        name = model or (recorded.student if recorded else None)
        if name is None:
            raise ConfigError(
                f"{checkpoint} does not say which model it holds; pass --model NAME (see `sld models`)"
            )
        check_model_names(name)
        same_data = recorded is not None and dataset in (None, recorded.data.dataset)
        data_config = recorded.data if same_data else DataConfig(dataset=dataset or "cifar100")
        changes = {"data_dir": str(data_dir) if data_dir else None, "limit_test": limit_test,
                   "eval_batch_size": batch_size, "limit_train": 2}  # the training images are not needed
        data_config = dataclasses.replace(data_config, **{k: v for k, v in changes.items() if v is not None})
        torch_device = resolve_device(device)
        data = load_data(data_config, torch_device, batch_size=2)
        net = load_weights(build_model(name, num_classes=data.num_classes), checkpoint).to(torch_device)
        top1, top5, loss = evaluate(net, data, "test", amp=amp or "off")
        result = {"checkpoint": str(checkpoint), "model": name, "dataset": data_config.dataset,
                  "data_dir": data_config.data_dir, "images": data.eval_size("test"), "top1": top1,
                  "top5": top5, "loss": loss}
        if json_path is not None and str(json_path) == "-":
            typer.echo(json.dumps(result))
            return
        Console().print(
            f"{checkpoint} ({name}): test top-1 {100 * top1:.2f}%, top-5 {100 * top5:.2f}%, "
            f"loss {loss:.4f} on {data.eval_size('test')} images"
        )
        if json_path is not None:
            json_path.write_text(json.dumps(result, indent=2) + "\n")
