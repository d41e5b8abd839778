"""``sld bench``: time SLD loss + gradient over a grid of backends, implementations, batch sizes,
class counts and dtypes, against the naive reference in the same run.

The timing core (:func:`build_case`, :func:`time_call`, :func:`copy_bandwidth`, :func:`summarize`) is
plain Python with no Rich or Typer in it, so ``benchmarks/test_bench_*.py`` (pytest-benchmark) reuses
it. Frameworks are imported only for the backends asked for.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

BACKENDS = ("numpy", "torch", "cupy", "jax")
IMPLS = ("fused", "generic", "reference")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
BENCH_EPOCH = 200  # after gamma=150: the pseudo-teacher is on, so every term is timed


class Skip(Exception):
    """A grid point that cannot run here; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Case:
    """One grid point."""

    backend: str
    impl: str
    device: str
    dtype: str
    batch: int
    classes: int

    @property
    def bytes_moved(self) -> int:
        """Bytes that must move at the least: both logits read once, the gradient written once (the
        labels are int64)."""
        itemsize = 4 if self.dtype == "float32" else 2
        return 3 * self.batch * self.classes * itemsize + 8 * self.batch


def _numpy_inputs(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # logit scale ~3: a realistic mix of right and wrong rows, so the swaps do happen
    student = rng.standard_normal((case.batch, case.classes), dtype=np.float32) * 3
    teacher = rng.standard_normal((case.batch, case.classes), dtype=np.float32) * 3
    targets = rng.integers(0, case.classes, case.batch)
    return student, teacher, targets


def _torch_case(case: Case, config: Any) -> tuple[Callable[[], Any], Callable[[], None]]:
    import torch

    if case.device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch.cuda.is_available() is False")
    s_np, t_np, y_np = _numpy_inputs(case)
    dtype = getattr(torch, case.dtype)
    s = torch.as_tensor(s_np, device=case.device).to(dtype)
    t = torch.as_tensor(t_np, device=case.device).to(dtype)
    y = torch.as_tensor(y_np, device=case.device)
    if case.impl == "fused":
        from backends.torch_sld import sld_loss_fused

        def fn() -> Any:  # what a training step runs: forward, then backward of the total
            leaf = s.detach().requires_grad_(True)
            sld_loss_fused(leaf, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False).total.backward()
            return leaf.grad
    elif case.impl == "generic":
        import sld_core

        def fn() -> Any:
            return sld_core.sld_loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False)
    else:
        try:
            from benchmarks.reference import reference_sld_loss_and_grad
        except ImportError as exc:  # an installed package without the source checkout
            raise Skip(f"benchmarks.reference is not importable ({exc})") from exc

        def fn() -> Any:
            return reference_sld_loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config)
    sync = torch.cuda.synchronize if case.device == "cuda" else (lambda: None)
    return fn, sync


def _numpy_case(case: Case, config: Any) -> tuple[Callable[[], Any], Callable[[], None]]:
    if case.device != "cpu":
        raise Skip("NumPy runs on the CPU only")
    if case.dtype == "bfloat16":
        raise Skip("NumPy has no bfloat16")
    s, t, y = (a.astype(case.dtype) if a.dtype.kind == "f" else a for a in _numpy_inputs(case))
    if case.impl == "fused":
        from backends.numpy_sld import sld_loss_and_grad_numpy as loss_and_grad
    else:
        from sld_core import sld_loss_and_grad as loss_and_grad

    def fn() -> Any:
        return loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False)

    return fn, lambda: None


def _cupy_case(case: Case, config: Any) -> tuple[Callable[[], Any], Callable[[], None]]:
    if case.device != "cuda":
        raise Skip("CuPy runs on CUDA only")
    try:
        import cupy
    except ImportError as exc:
        raise Skip(f"cupy is not installed ({exc})") from exc
    if not cupy.cuda.is_available():
        raise Skip("cupy.cuda.is_available() is False (no CUDA device)")
    if case.impl == "fused":
        from backends.cupy_sld import kernel_available

        ok, reason = kernel_available()
        if not ok:
            raise Skip(reason)
    if case.dtype == "bfloat16":
        raise Skip("CuPy has no bfloat16")
    s, t, y = (cupy.asarray(a.astype(case.dtype) if a.dtype.kind == "f" else a) for a in _numpy_inputs(case))
    if case.impl == "fused":
        from backends.cupy_sld import sld_loss_and_grad_cupy as loss_and_grad
    else:
        from sld_core import sld_loss_and_grad as loss_and_grad

    def fn() -> Any:
        return loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False)

    return fn, cupy.cuda.get_current_stream().synchronize


def _jax_case(case: Case, config: Any) -> tuple[Callable[[], Any], Callable[[], None]]:
    if case.impl == "fused":
        raise Skip("no fused JAX path (the generic core runs on JAX arrays)")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        raise Skip(f"jax is not installed ({exc})") from exc
    try:
        device = jax.devices("gpu" if case.device == "cuda" else "cpu")[0]
    except RuntimeError as exc:
        raise Skip(f"jax has no {case.device} device") from exc
    s, t, y = (jax.device_put(jnp.asarray(a, dtype=case.dtype) if a.dtype.kind == "f" else jnp.asarray(a),
                              device) for a in _numpy_inputs(case))
    import sld_core

    def fn() -> Any:
        out = sld_core.sld_loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False)
        return jax.block_until_ready(out)  # JAX dispatches asynchronously: wait inside the clock

    return fn, lambda: None


def build_case(case: Case, config: Any = None) -> tuple[Callable[[], Any], Callable[[], None]]:
    """``(fn, sync)`` for one grid point: ``fn()`` computes the loss terms and the gradient w.r.t. the
    student logits; ``sync()`` waits for the device. Raises :class:`Skip` with the reason when the
    point cannot run here (library missing, no GPU, unsupported dtype or combination)."""
    if case.impl == "reference" and case.backend != "torch":
        raise Skip("the reference formulation is PyTorch only")
    if case.backend == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise Skip(f"torch is not installed ({exc})") from exc
    builders = {"torch": _torch_case, "numpy": _numpy_case, "cupy": _cupy_case, "jax": _jax_case}
    return builders[case.backend](case, config)


def time_call(fn: Callable[[], Any], sync: Callable[[], None], *, repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; the device is
    synchronised before each clock starts and before it stops."""
    return time_interleaved([(fn, sync)], repeats=repeats, warmup=warmup)[0]


def time_interleaved(calls: list[tuple[Callable[[], Any], Callable[[], None]]], *, repeats: int,
                     warmup: int) -> list[list[float]]:
    """:func:`time_call` for several ``(fn, sync)`` pairs at once, round-robin: repeat ``r`` of every
    pair runs before repeat ``r + 1`` of any, so a change in machine load (a shared CPU) hits all of
    them alike and their ratios stay fair."""
    for fn, sync in calls:
        for _ in range(warmup):
            fn()
        sync()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for (fn, sync), out in zip(calls, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
    return times


def copy_bandwidth(device: str, *, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Achieved bandwidth in GB/s (read + write) of copying one large float32 array on ``device``
    (torch: all its threads on CPU; a device-to-device copy on CUDA) — the ceiling a memory-bound
    loss could reach."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch.cuda.is_available() is False")
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = time_call(lambda: dst.copy_(src), sync, repeats=repeats, warmup=2)
    return 2 * nbytes / float(np.median(times)) / 1e9


def summarize(case: Case, times: list[float], copy_gbs: float | None) -> dict[str, Any]:
    """One result row: median and IQR (ms), rows/s, effective GB/s and its fraction of ``copy_gbs``."""
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    gbs = case.bytes_moved / median / 1e9
    return {
        **asdict(case),
        "median_ms": median * 1e3,
        "iqr_ms": (q75 - q25) * 1e3,
        "repeats": len(times),
        "rows_per_s": case.batch / median,
        "gb_per_s": gbs,
        "fraction_of_copy": gbs / copy_gbs if copy_gbs else None,
        "speedup_vs_reference": None,
    }


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Fill ``speedup_vs_reference`` from the torch reference row of the same device, dtype and shape
    (the reference must be in the same run)."""
    reference = {
        (r["device"], r["dtype"], r["batch"], r["classes"]): r["median_ms"]
        for r in rows if r["impl"] == "reference"
    }
    for r in rows:
        ref = reference.get((r["device"], r["dtype"], r["batch"], r["classes"]))
        r["speedup_vs_reference"] = ref / r["median_ms"] if ref else None


def _split(value: str, allowed: tuple[str, ...] | None, name: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if allowed is not None:
        if "all" in items:
            return list(allowed)
        bad = [v for v in items if v not in allowed]
        if bad:
            raise typer.BadParameter(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
    if not items:
        raise typer.BadParameter(f"{name} is empty")
    return items


def _ints(value: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in _split(value, None, name)]
    except ValueError as exc:
        raise typer.BadParameter(f"{name} must be comma-separated integers; got {value!r}") from exc
    if any(v < 1 for v in values):
        raise typer.BadParameter(f"{name} must be positive; got {value!r}")
    return values


def _environment(threads: int | None) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("numpy", "torch", "cupy-cuda12x", "jax"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    torch_threads = None
    if "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch_threads,
            "threads_option": threads, "platform": platform.platform(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    classes = sorted({r["classes"] for r in rows})
    fig, axes = plt.subplots(1, len(classes), figsize=(6 * len(classes), 4.5), squeeze=False)
    for ax, num_classes in zip(axes[0], classes):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["classes"] == num_classes:
                label = f"{r['backend']}/{r['impl']} ({r['device']}, {r['dtype']})"
                series.setdefault(label, []).append((r["batch"], r["median_ms"]))
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("median time per loss + gradient (ms)")
        ax.set_title(f"SLD loss + gradient, {num_classes} classes")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench(
    backend: Annotated[str, typer.Option(help="numpy, torch, cupy, jax or all (comma-separated)")] = "all",
    device: Annotated[str, typer.Option(help="cpu, cuda (comma-separated)")] = "cpu",
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "64,256,1024,4096",
    classes: Annotated[str, typer.Option(help="comma-separated class counts")] = "100,1000",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 (comma-separated)")] = "float32",
    impl: Annotated[str, typer.Option(help="fused, generic, reference (comma-separated)")] = (
        "fused,generic,reference"
    ),
    repeats: Annotated[int, typer.Option(min=1, help="timed calls per grid point")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="untimed calls first (caches, kernel compiles)")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's)")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write results and skips as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of time vs batch size per backend/impl")] = None,
) -> None:
    """Time SLD loss + gradient over a grid; report median, IQR, rows/s, effective GB/s (fraction of
    a large-copy bandwidth measured in the same run) and speedup over the naive reference."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    import sld_core

    backends = _split(backend, BACKENDS, "backend")
    devices = _split(device, DEVICES, "device")
    dtypes = _split(dtype, DTYPES, "dtype")
    impls = _split(impl, IMPLS, "impl")
    batches = _ints(batch_sizes, "batch sizes")
    class_counts = _ints(classes, "classes")
    config = sld_core.SLDConfig()
    console = Console()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    copy_gbs: dict[str, float | None] = {}
    skipped: list[dict[str, Any]] = []
    for dev in devices:
        try:
            copy_gbs[dev] = copy_bandwidth(dev)
        except (Skip, ImportError) as exc:
            copy_gbs[dev] = None
            skipped.append({"device": dev, "what": "copy bandwidth", "reason": str(exc)})

    # Cases of one shape are timed together, round-robin (time_interleaved): the speedups compare
    # calls made under the same machine load.
    shapes = list(itertools.product(devices, dtypes, batches, class_counts))
    rows: list[dict[str, Any]] = []
    skipped_combos: dict[tuple[str, ...], str] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(shapes))
        for dev, dt, n, c in shapes:
            progress.update(task, description=f"{dev} {dt} {n}x{c}")
            ready: list[tuple[Case, tuple[Callable[[], Any], Callable[[], None]]]] = []
            for b, i in itertools.product(backends, impls):
                case = Case(b, i, dev, dt, n, c)
                try:
                    ready.append((case, build_case(case, config)))
                except Skip as exc:
                    skipped_combos.setdefault((b, i, dev, dt), str(exc))
            timings = time_interleaved([pair for _, pair in ready], repeats=repeats, warmup=warmup)
            rows += [summarize(case, times, copy_gbs.get(dev)) for (case, _), times in zip(ready, timings)]
            progress.advance(task)
    add_speedups(rows)
    skipped += [{"backend": b, "impl": i, "device": d, "dtype": dt, "reason": reason}
                for (b, i, d, dt), reason in skipped_combos.items()]

    table = Table(title="SLD loss + gradient (median over repeats)")
    for col in ("backend", "impl", "device", "dtype"):
        table.add_column(col)
    for col in ("B x C", "median ms", "IQR ms", "rows/s", "GB/s", "% copy", "vs ref"):
        table.add_column(col, justify="right")
    for r in rows:
        frac = r["fraction_of_copy"]
        speedup = r["speedup_vs_reference"]
        table.add_row(r["backend"], r["impl"], r["device"], r["dtype"], f"{r['batch']}x{r['classes']}",
                      f"{r['median_ms']:.3f}", f"{r['iqr_ms']:.3f}", f"{r['rows_per_s']:,.0f}",
                      f"{r['gb_per_s']:.2f}", "-" if frac is None else f"{100 * frac:.1f}",
                      "-" if speedup is None else f"{speedup:.1f}x")
    console.print(table)
    for dev, gbs in copy_gbs.items():
        if gbs is not None:
            console.print(f"copy bandwidth on {dev}: {gbs:.1f} GB/s (256 MiB float32 copy, read + write)")
    for s in skipped:
        what = s.get("what") or f"{s['backend']}/{s['impl']} on {s['device']} {s['dtype']}"
        console.print(f"[yellow]skipped[/yellow] {what}: {s['reason']}")

    if json_path is not None:
        payload = {"environment": _environment(threads), "config": sld_core.config_to_dict(config),
                   "epoch": BENCH_EPOCH, "copy_gb_per_s": copy_gbs, "results": rows, "skipped": skipped}
        json_path.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_path}")
    if plot is not None:
        if rows:
            _plot(rows, plot)
            console.print(f"wrote {plot}")
        else:
            console.print("[yellow]no results to plot[/yellow]")
