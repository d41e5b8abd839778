"""Does ``torch.compile`` pay for the SLD loss + gradient? Times, side by side on one device:
the eager fused path (``backends.torch_sld``), the generic core compiled by inductor (``default`` and,
on CUDA, ``reduce-overhead``, i.e. CUDA graphs), and the naive reference; with each compile's time.

    python -m harness.bench.compile_check --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sld_core
from backends.torch_sld import sld_loss_and_grad_fused
from harness.bench.reference import reference_sld_loss_and_grad
from harness.bench.timing import time_interleaved

EPOCH = 200  # pseudo-teacher on: every term


def _generic(s, t, y):
    terms, grad = sld_core.sld_loss_and_grad(s, t, y, epoch=EPOCH, check_targets=False)
    return terms.total, grad


def _time_shape(shape: str, device: torch.device, modes: list[str], repeats: int) -> None:
    batch, classes = (int(v) for v in shape.split("x"))
    gen = torch.Generator(device="cpu").manual_seed(0)
    s = (3 * torch.randn(batch, classes, generator=gen)).to(device)
    t = (3 * torch.randn(batch, classes, generator=gen)).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    cases = {
        "reference (eager, autograd)": (0.0, lambda: reference_sld_loss_and_grad(s, t, y, epoch=EPOCH)),
        "fused (eager)": (0.0, lambda: sld_loss_and_grad_fused(s, t, y, epoch=EPOCH, check_targets=False)),
    }
    expected = sld_loss_and_grad_fused(s, t, y, epoch=EPOCH, check_targets=False)[1]
    for mode in modes:
        compiled = torch.compile(_generic, mode=mode)
        start = time.perf_counter()
        for _ in range(3):  # reduce-overhead records its graph on a later call
            _, grad = compiled(s, t, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)  # same gradient, else no timing
        cases[f"generic core, torch.compile {mode}"] = (seconds, lambda c=compiled: c(s, t, y))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # round-robin: a change in machine load hits every implementation alike
    times = time_interleaved([(fn, sync) for _, fn in cases.values()], repeats=repeats, warmup=1)
    timings = {name: (sec, 1000 * statistics.median(t)) for (name, (sec, _)), t in zip(cases.items(), times)}
    reference_ms = timings["reference (eager, autograd)"][1]
    for name, (sec, ms) in timings.items():
        print(f"| {shape} | {name} | {sec:.1f} | {ms:.3f} | {reference_ms / ms:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default="64x100,4096x1000")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = ["default"] + (["reduce-overhead"] if device.type == "cuda" else [])
    print("| B x C | impl | compile s | median ms | vs reference |\n|---|---|---:|---:|---:|")
    for shape in args.shapes.split(","):
        _time_shape(shape, device, modes, args.repeats)


if __name__ == "__main__":
    main()
