"""ATen ops per call of the augmentation views (what a GPU pays in launches), and their time.

    python -m harness.bench.augment_ops                      # CPU, batch 64
    python -m harness.bench.augment_ops --device cuda --batch 64

Ops are counted with :class:`harness.bench.ops.OpCounter`: every ATen op the call dispatches ("total")
and those that launch work ("kernels": not views, bare allocations or profiler markers,
:func:`harness.bench.ops.launches`). Every pass runs on the whole batch on every device, so the counts do
not depend on the draws. Times are medians
of interleaved repeats (each repeat runs every case once), synchronized on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from harness.bench.ops import OpCounter
from harness.data.augment import (
    cutout,
    eval_view,
    rand_augment,
    random_crop_flip,
    strong_view,
    weak_and_strong_views,
    weak_view,
)


def cases(x: torch.Tensor) -> dict[str, Callable[[torch.Generator], torch.Tensor]]:
    """name -> call on ``x`` with a generator."""
    return {
        "eval view": lambda g: eval_view(x),
        "weak view": lambda g: weak_view(x, g),
        "strong view": lambda g: strong_view(x, g),
        "random_crop_flip": lambda g: random_crop_flip(x, g),
        "weak and strong views": lambda g: weak_and_strong_views(x, g),
        "rand_augment": lambda g: rand_augment(x, g),
        "cutout": lambda g: cutout(x, g),
    }


def count_ops(fn: Callable[[torch.Generator], torch.Tensor], device: torch.device, seeds: int = 5) -> set:
    """The distinct (total, kernels) counts over ``seeds`` seeds (one pair when the count is fixed)."""
    counts = set()
    for seed in range(seeds):
        fn(torch.Generator(device=device).manual_seed(seed))  # first calls fill the constant caches
        with OpCounter() as counter:
            fn(torch.Generator(device=device).manual_seed(seed))
        counts.add((sum(counter.counts.all.values()), sum(counter.counts.launching.values())))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    calls = cases(x)
    counts = {name: count_ops(fn, device) for name, fn in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    g = torch.Generator(device=device).manual_seed(0)
    for _ in range(args.repeats):
        for name, fn in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(g)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    print(f"| call ({device}, batch {args.batch}) | ATen ops | kernels (launching) | median ms |")
    print("|---|---:|---:|---:|")
    for name in calls:
        (total, kernels), *more = sorted(counts[name])
        spread = f" (varies: {sorted(counts[name])})" if more else ""
        print(f"| {name} | {total}{spread} | {kernels} | {1e3 * statistics.median(times[name]):.3f} |")


if __name__ == "__main__":
    main()
