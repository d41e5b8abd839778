"""pytest-benchmark: one training step (resnet32x4 -> resnet8x4, batch 64, two views, CPU) with KD and
with SLD, the trainer's own step (``harness.bench.step.training_step``). The SLD/KD ratio of record
comes from ``python -m harness.bench.step`` (interleaved repeats in one process); this suite keeps the two
visible to ``--benchmark-compare`` so a regression in either shows up.

    python -m pytest benchmarks/test_bench_train_step.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from harness.bench.step import training_step
from harness.models import build_model

BATCH = 64


@pytest.mark.parametrize("method", ["kd", "sld"])
def test_train_step(benchmark, method):
    torch.manual_seed(0)
    teacher = build_model("resnet32x4").eval().requires_grad_(False)
    step = training_step(method, teacher, teacher="resnet32x4", student="resnet8x4", batch_size=BATCH)
    benchmark.group = "train step resnet32x4->resnet8x4 b64 cpu"
    benchmark.extra_info.update(images=BATCH)
    benchmark.pedantic(step, warmup_rounds=2, rounds=10)
