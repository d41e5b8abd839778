"""ATen ops per call of the augmentation views (what a GPU pays in launches), and their time.

    python -m harness.bench.augment_ops                      # CPU, batch 64
    python -m harness.bench.augment_ops --device cuda --batch 64
    python -m harness.bench.augment_ops --against 283a3e7   # also that revision's weak + strong views

Ops are counted with :class:`harness.bench.ops.OpCounter`: every ATen op the call dispatches ("total")
and those that launch work ("kernels": not views, bare allocations or profiler markers,
:func:`harness.bench.ops.launches`). Every pass runs on the whole batch on every device, so the counts do
not depend on the draws. Times are medians
of interleaved repeats (each repeat runs every case once), synchronized on CUDA.

``--against REV`` loads ``harness/data/augment.py`` of git revision ``REV`` as a module of its own and adds
its ``weak_view`` then ``strong_view`` (one generator, as the trainer calls them) to the same round robin,
after checking that they give this tree's images bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from harness.bench.ops import OpCounter
from harness.bench.revision import revision_package
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


def revision_module(revision: str, root: Path) -> ModuleType:
    """``harness/data/augment.py`` of git revision ``revision`` as a module (it imports torch only)."""
    import importlib

    package = revision_package(revision, "harness/data", root, files=("augment.py",))
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{package}.augment")


def against_cases(
    x: torch.Tensor, revision: str, old: ModuleType
) -> dict[str, Callable[[torch.Generator], object]]:
    """``revision``'s two view calls, after checking them against :func:`weak_and_strong_views`."""

    def both(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return old.weak_view(x, g), old.strong_view(x, g)

    for seed in range(3):
        mine = weak_and_strong_views(x, torch.Generator(device=x.device).manual_seed(seed))
        theirs = both(torch.Generator(device=x.device).manual_seed(seed))
        if not all(torch.equal(a, b) for a, b in zip(mine, theirs)):
            raise SystemExit(f"error: {revision}'s views differ from this tree's (seed {seed})")
    return {f"{revision}: weak_view then strong_view": both}


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
    parser.add_argument("--against", metavar="REV", help="also time git revision REV's weak + strong views")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    calls = cases(x)
    with tempfile.TemporaryDirectory() as root:
        if args.against:
            calls.update(against_cases(x, args.against, revision_module(args.against, Path(root))))
        _report(calls, device, args)


def _report(
    calls: dict[str, Callable[[torch.Generator], object]], device: torch.device, args: argparse.Namespace
) -> None:
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
