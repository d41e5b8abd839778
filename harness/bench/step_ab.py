"""Interleaved A/B timings behind the training step's choices (benchmarks/RESULTS.md, "Training step:
ATen ops per step"): the teacher's forward over both views at once vs one per view (with the minor page
faults of each), torch's multi-tensor SGD vs its per-parameter loop, the step as it was before the
multi-tensor update vs now, and a control (the same step twice) that shows the machine's noise.

    python -m harness.bench.step_ab --threads 1                  # CPU
    python -m harness.bench.step_ab --device cuda --repeats 30

Every pair is timed round-robin (``harness.bench.timing.time_interleaved``), medians reported, and on
CUDA synchronized around each clock reading.
"""

from __future__ import annotations

import argparse
import resource
import statistics
from collections.abc import Callable

import torch

from harness.bench.step import training_step
from harness.bench.timing import time_interleaved
from harness.models import build_model
from harness.train.step import teacher_forward


def _pair(
    name: str, a: tuple[str, Callable[[], object]], b: tuple[str, Callable[[], object]], sync, repeats: int
) -> None:
    ta, tb = time_interleaved([(a[1], sync), (b[1], sync)], repeats=repeats, warmup=1)
    ma, mb = statistics.median(ta), statistics.median(tb)
    per_repeat = statistics.median(y / x for x, y in zip(ta, tb))
    print(
        f"{name}: {a[0]} {1000 * ma:.2f} ms, {b[0]} {1000 * mb:.2f} ms, {b[0]}/{a[0]} {mb / ma:.3f} "
        f"(per-repeat median {per_repeat:.3f})"
    )


def _faults(fn: Callable[[], object]) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    for name in ("resnet32x4", "resnet8x4"):
        net = build_model(name).to(device).eval().requires_grad_(False)
        views = [torch.randn(64, 3, 32, 32, device=device) for _ in range(2)]

        def per_view(net=net, views=views) -> None:
            with torch.no_grad():
                teacher_forward(net, views, at_once=False)

        def at_once(net=net, views=views) -> None:
            with torch.no_grad():
                teacher_forward(net, views, at_once=True)

        _pair(
            f"teacher {name}, 2 x 64 images", ("per view", per_view), ("at once", at_once), sync, args.repeats
        )
        if device.type == "cpu":
            print(f"  minor page faults per call: per view {_faults(per_view)}, at once {_faults(at_once)}")

    student = build_model("resnet8x4").to(device)
    params = list(student.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    loop = torch.optim.SGD(params, lr=1e-12, momentum=0.9, weight_decay=5e-4, foreach=False)
    multi = torch.optim.SGD(params, lr=1e-12, momentum=0.9, weight_decay=5e-4, foreach=True)
    loop.step()
    multi.step()
    _pair(
        f"SGD, {len(params)} tensors",
        ("per parameter", loop.step),
        ("multi-tensor", multi.step),
        sync,
        25 * args.repeats,
    )

    teacher = build_model("resnet32x4").to(device).eval().requires_grad_(False)
    before, now, twin = (
        training_step("sld", teacher, teacher="resnet32x4", student="resnet8x4", device=device)
        for _ in range(3)
    )
    for group in before.parts.optimizer.param_groups:
        group["foreach"] = False  # the per-parameter loop (the CPU's default before); the teacher as now
    _pair("SLD step", ("per-parameter SGD", before), ("now", now), sync, args.repeats)
    _pair("control, the same SLD step twice", ("first", now), ("second", twin), sync, args.repeats)


if __name__ == "__main__":
    main()
