"""pytest-benchmark: one training step (resnet32x4 -> resnet8x4, batch 64, two views, CPU) with KD and
with SLD, the trainer's own ``train_step``. The SLD/KD ratio of record comes from
``python -m harness.train.step_bench`` (interleaved repeats in one process); this suite keeps the two
visible to ``--benchmark-compare`` so a regression in either shows up.

    python -m pytest benchmarks/test_bench_train_step.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from harness.models import build_model
from harness.train.config import DataConfig, KDConfig, OptimConfig, SLDConfig, TrainConfig
from harness.train.loop import train_step
from harness.train.methods import METHODS

BATCH = 64


@pytest.mark.parametrize("method", ["kd", "sld"])
def test_train_step(benchmark, method):
    torch.manual_seed(0)
    teacher = build_model("resnet32x4").eval().requires_grad_(False)
    student = build_model("resnet8x4").train()
    config = TrainConfig(student="resnet8x4", teacher="resnet32x4", method=method,
                         loss=KDConfig() if method == "kd" else SLDConfig(),
                         optim=OptimConfig(batch_size=BATCH), data=DataConfig(views=2))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    images = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 100, (BATCH,))
    generator = torch.Generator().manual_seed(0)
    benchmark.group = "train step resnet32x4->resnet8x4 b64 cpu"
    benchmark.extra_info.update(images=BATCH)
    benchmark.pedantic(
        lambda: train_step(student, teacher, METHODS[method], optimizer, scaler, images, labels,
                           config=config, epoch=151, generator=generator),
        warmup_rounds=2, rounds=10,
    )
