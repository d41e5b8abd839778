"""Where a fused CPU call's time goes, beside ``sld bench``'s totals (numbers in ``RESULTS.md``).

    python -m harness.bench.kernel_calls                    # 64x100: call overheads, round robin
    python -m harness.bench.kernel_calls --shape 4096x1000 --repeats 10
    python -m harness.bench.kernel_calls --against d5922f4  # this kernel vs a revision's, same process

The default times, interleaved like ``sld bench`` (repeat r of every case before repeat r + 1 of any,
so each case runs after the others have evicted the caches): the naive reference; a bare
``torch.autograd.Function`` with the fused path's four outputs whose backward hands over an allocated,
uncomputed gradient (the least any autograd path pays, forward and ``total.backward()``); the torch
fused path, twice in a row (the second call finds its code and data in the caches that the others
evict); the NumPy fused path; the kernel alone (``cpu_kernel.fused_sums`` on ready arrays), twice in a
row.

``--against REV`` copies ``backends/`` of git revision ``REV`` into a temporary package and times both
kernels (``cpu_kernel.fused_sums``) side by side: thread CPU time, one thread, float32, the official
recipe at epoch 200 (every term on). With ``--whole-call`` it times both trees' whole torch fused call
instead (forward and ``total.backward()``, wall clock), each after the NumPy fused call and before the
reference, the places they have in ``sld bench``'s round robin.

``--accuracy`` prints the kernel's largest float32 errors against the float64 core over a grid of
shapes (up to 4x21841), logit scales 1, 3, 10 and both detach settings: loss terms relative to
``max(|term|, 1e-3)``, the gradient relative to its largest element (the measures of
``tests/test_kernels.py``, whose bound is 1e-5).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CASE_EPOCH = 200


def _inputs(batch: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from .grid import Case, _numpy_inputs

    return _numpy_inputs(Case("numpy", "fused", "cpu", "float32", batch, classes))  # sld bench's inputs


def _round_robin(cases: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]) -> dict:
    """Seconds of each named case, two warm-up calls each, then round-robin like ``sld bench``."""
    from .timing import time_interleaved

    calls = [(fn, lambda: None) for fn in cases.values()]
    return dict(zip(cases, time_interleaved(calls, repeats=repeats, warmup=2, clock=clock)))


class _LossCalls:
    """``sld bench``'s inputs (NumPy arrays and the tensors sharing their memory), the official recipe
    at ``CASE_EPOCH``, and the calls timed beside each other; torch's and the kernel's thread counts
    are pinned to ``threads``."""

    def __init__(self, batch: int, classes: int, threads: int) -> None:
        import torch

        import backends
        import sld_core

        torch.set_num_threads(threads)
        backends.set_num_threads(threads)
        self.s_np, self.t_np, self.y_np = _inputs(batch, classes)
        self.s, self.t, self.y = (torch.from_numpy(a) for a in (self.s_np, self.t_np, self.y_np))
        self.config = sld_core.SLDConfig()

    def reference(self) -> None:
        from harness.bench.reference import reference_sld_loss_and_grad

        reference_sld_loss_and_grad(self.s, self.t, self.y, epoch=CASE_EPOCH, config=self.config)

    def numpy_fused(self) -> None:
        from backends import numpy_sld

        numpy_sld.sld_loss_and_grad_numpy(
            self.s_np, self.t_np, self.y_np, epoch=CASE_EPOCH, config=self.config, check_targets=False
        )

    def torch_fused(self, module: Any) -> Callable[[], None]:
        """The fused call of ``module`` (this tree's ``backends.torch_sld`` or a revision's) as a
        training step makes it: a fresh leaf, the forward, then ``total.backward()``."""

        def call() -> None:
            leaf = self.s.detach().requires_grad_(True)
            terms = module.sld_loss_fused(leaf, self.t, self.y, epoch=CASE_EPOCH, config=self.config,
                                          check_targets=False)
            terms.total.backward()

        return call


def call_costs(batch: int, classes: int, repeats: int, threads: int) -> None:
    import torch

    from backends import torch_sld
    from backends._select import cpu_kernel_module

    calls = _LossCalls(batch, classes, threads)
    s_np, t_np, y_np, config = calls.s_np, calls.t_np, calls.y_np, calls.config

    class Bare(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # noqa: ANN205
            ctx.set_materialize_grads(False)
            ctx.grad = torch.empty_like(x)  # allocated, never computed: handed over as the fused path does
            return torch.empty(4).unbind()

        @staticmethod
        def backward(ctx, d_total, d_ce, d_teacher, d_pseudo):  # noqa: ANN205
            grad, ctx.grad = ctx.grad, None
            return grad

    def bare() -> None:
        leaf = calls.s.detach().requires_grad_(True)
        Bare.apply(leaf)[0].backward()

    fused = calls.torch_fused(torch_sld)
    grad = np.empty_like(s_np)
    weights = (config.ce_weight, config.kd_weight, config.kd_weight)
    kernel = cpu_kernel_module()
    cases = {
        "reference (autograd)": calls.reference,
        "bare autograd.Function": bare,
        "torch fused": fused,
        "torch fused, again": fused,  # the same call right after itself: its code and data still in cache
        "numpy fused": calls.numpy_fused,
    }
    if kernel is not None:

        def alone() -> None:
            kernel.fused_sums(s_np, t_np, y_np, config, True, weights, grad, threads)

        cases["kernel alone"] = alone
        cases["kernel alone, again"] = alone
    times = _round_robin(cases, repeats, time.perf_counter)
    print(f"{batch}x{classes}, {threads} thread(s), {repeats} interleaved repeats, wall clock")
    for name, values in times.items():
        print(f"  {name:24s} median {np.median(values) * 1e3:9.3f} ms   min {np.min(values) * 1e3:9.3f} ms")


def against(revision: str, batch: int, classes: int, repeats: int) -> None:
    import sld_core
    from backends import cpu_kernel

    from .revision import revision_package

    s, t, y = _inputs(batch, classes)
    config = sld_core.SLDConfig()
    with tempfile.TemporaryDirectory() as root:
        sys.path.insert(0, root)
        old = importlib.import_module(revision_package(revision, "backends", Path(root)) + ".cpu_kernel")
        grads = {"this tree": np.empty_like(s), revision: np.empty_like(s)}
        weights = (config.ce_weight, config.kd_weight, config.kd_weight)
        cases = {
            "this tree": lambda: cpu_kernel.fused_sums(s, t, y, config, True, weights, grads["this tree"], 1),
            revision: lambda: old.fused_sums(s, t, y, config, True, weights, grads[revision], 1),
        }
        times = _round_robin(cases, repeats, time.thread_time)
    print(
        f"cpu_kernel.fused_sums, {batch}x{classes} float32, 1 thread, {repeats} interleaved repeats, "
        "thread CPU time"
    )
    for name, values in times.items():
        print(f"  {name:12s} median {np.median(values) * 1e3:9.3f} ms   min {np.min(values) * 1e3:9.3f} ms")
    ratio = np.median(times[revision]) / np.median(times["this tree"])
    print(
        f"  {revision} / this tree: {ratio:.2f}x; largest gradient difference "
        f"{np.abs(grads[revision] - grads['this tree']).max():.2e}"
    )


def against_calls(revision: str, batch: int, classes: int, repeats: int, threads: int) -> None:
    """The whole torch fused call (forward, then ``total.backward()``) of this tree and of ``revision``
    in one round robin, each in the place it has in ``sld bench``: after the NumPy fused call, before
    the reference."""
    from backends import torch_sld

    from .revision import revision_package

    calls = _LossCalls(batch, classes, threads)
    with tempfile.TemporaryDirectory() as root:
        sys.path.insert(0, root)
        package = revision_package(revision, "backends", Path(root))
        old = importlib.import_module(package + ".torch_sld")
        importlib.import_module(package + "._select").set_num_threads(threads)
        cases = {}
        for name, module in (("this tree", torch_sld), (revision, old)):
            cases[f"numpy fused before {name}"] = calls.numpy_fused
            cases[name] = calls.torch_fused(module)
            cases[f"reference after {name}"] = calls.reference
        times = _round_robin(cases, repeats, time.perf_counter)
    print(f"torch fused call (forward + total.backward()), {batch}x{classes}, {threads} thread(s), "
          f"{repeats} interleaved repeats, wall clock")
    for name in ("this tree", revision, f"reference after {revision}"):
        print(f"  {name:28s} median {np.median(times[name]) * 1e3:9.3f} ms")
    ratio = np.median(times[revision]) / np.median(times["this tree"])
    print(f"  {revision} / this tree: {ratio:.3f}x")


def accuracy(seeds: int = 40) -> None:
    import sld_core
    from backends import cpu_kernel

    worst_terms = worst_grad = 0.0
    shapes = [(64, 100), (16, 1000), (4, 21841), (128, 10), (256, 100)]
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        batch, classes = shapes[seed % len(shapes)]
        scale = (1.0, 3.0, 10.0)[seed % 3]
        s = (rng.standard_normal((batch, classes)) * scale).astype(np.float32)
        t = (rng.standard_normal((batch, classes)) * scale).astype(np.float32)
        y = rng.integers(0, classes, batch)
        for detach in (False, True):
            config = sld_core.SLDConfig(detach_pseudo_teacher=detach)
            grad = np.empty_like(s)
            sums = cpu_kernel.fused_sums(
                s, t, y, config, True, (config.ce_weight, config.kd_weight, config.kd_weight), grad, 1
            )
            terms, want = sld_core.sld_loss_and_grad(
                s.astype(np.float64), t.astype(np.float64), y, epoch=CASE_EPOCH, config=config
            )
            want_terms = np.array([float(getattr(terms, k)) for k in ("total", "ce", "teacher", "pseudo")])
            worst_terms = max(
                worst_terms,
                float((np.abs(sums[:4] - want_terms) / np.maximum(np.abs(want_terms), 1e-3)).max()),
            )
            worst_grad = max(worst_grad, float(np.abs(grad - want).max() / np.abs(want).max()))
    print(
        f"float32 kernel vs float64 core, {seeds} batches x 2 detach settings: "
        f"loss terms {worst_terms:.2e}, gradient {worst_grad:.2e} (bound 1e-5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64x100", help="BxC")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--against", metavar="REV", help="time this kernel against git revision REV's")
    parser.add_argument("--whole-call", action="store_true",
                        help="with --against: the whole torch fused call (forward, backward), not the kernel")
    parser.add_argument("--accuracy", action="store_true", help="largest float32 errors against float64")
    args = parser.parse_args()
    batch, classes = (int(v) for v in args.shape.lower().split("x"))
    if args.accuracy:
        accuracy()
    elif args.against and args.whole_call:
        against_calls(args.against, batch, classes, args.repeats, args.threads)
    elif args.against:
        against(args.against, batch, classes, args.repeats)
    else:
        call_costs(batch, classes, args.repeats, args.threads)


if __name__ == "__main__":
    main()
