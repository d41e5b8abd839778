"""``sld bench``: time SLD loss + gradient over a grid of backends, implementations, batch sizes,
class counts and dtypes, against the naive reference in the same run (the grid and the timing core
are :mod:`harness.bench`)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.bench.grid import (
    BACKENDS,
    BENCH_EPOCH,
    DEVICES,
    DTYPES,
    IMPLS,
    Case,
    add_speedups,
    build_case,
    environment,
    kernel_name,
    load_warning,
    pin_threads,
    plot_times,
    summarize,
    usable_cpus,
)
from harness.bench.timing import Skip, copy_bandwidth, first_call, time_interleaved


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


def _print_whole(console: Any, table: Any) -> None:
    """Print ``table`` unabridged: a log or pipe has no width limit, but Rich assumes 80 columns and
    would cut every cell to an ellipsis."""
    width = console.width
    if not console.is_terminal:
        from rich.measure import Measurement

        needed = Measurement.get(console, console.options.update_width(1000), table).maximum
        console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width


def bench(
    backend: Annotated[str, typer.Option(help="numpy, torch, cupy, jax or all (comma-separated)")] = "all",
    device: Annotated[str, typer.Option(help="cpu, cuda (comma-separated)")] = "cpu",
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "64,256,1024,4096",
    classes: Annotated[str, typer.Option(help="comma-separated class counts")] = "100,1000",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 (comma-separated)")] = "float32",
    impl: Annotated[
        str,
        typer.Option(
            help="fused (the fast path, with its compiled kernel), eager (the same without the kernel), "
            "generic, compiled (torch.compile / jax.jit, loss + gradient), compiled-loss (the loss "
            "alone), reference (comma-separated)"
        ),
    ] = "fused,generic,reference",
    compile_mode: Annotated[
        str, typer.Option(help="torch.compile mode of the compiled impls (reduce-overhead: CUDA graphs)")
    ] = "default",
    repeats: Annotated[int, typer.Option(min=1, help="timed calls per grid point")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="untimed calls first (caches, kernel compiles)")] = 3,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads of torch and of the CPU kernel, pinned for the whole run (default: torch's "
            "current count); printed with the results, since it changes CPU times many-fold",
        ),
    ] = None,
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
    # One count for torch and the CPU kernel, held for the whole grid: on a loaded 2-core machine a
    # 2-thread call waits for the busy second core (benchmarks/RESULTS.md: 1.2 ms quiet, 219 ms loaded).
    used = pin_threads(threads)
    threads_line = (
        f"CPU threads: {used} (torch and the CPU kernel, pinned for the run; "
        f"{'--threads' if threads is not None else 'torch default'}; {usable_cpus()} usable CPU(s))"
    )
    console.print(threads_line)
    warning = load_warning()
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}")

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
            ready: list[tuple[Case, tuple[Callable[[], Any], Callable[[], None]], float]] = []
            for b, i in itertools.product(backends, impls):
                case = Case(b, i, dev, dt, n, c)
                try:
                    pair = build_case(case, config, compile_mode=compile_mode)
                    ready.append((case, pair, first_call(*pair)))  # compiles a compiled impl
                except Skip as exc:
                    skipped_combos.setdefault((b, i, dev, dt), str(exc))
            timings = time_interleaved([pair for _, pair, _ in ready], repeats=repeats, warmup=warmup)
            rows += [summarize(case, times, copy_gbs.get(dev), first) | {"kernel": kernel_name(case)}
                     for (case, _, first), times in zip(ready, timings)]
            progress.advance(task)
    add_speedups(rows)
    skipped += [{"backend": b, "impl": i, "device": d, "dtype": dt, "reason": reason}
                for (b, i, d, dt), reason in skipped_combos.items()]

    table = Table(
        title=f"SLD loss + gradient (median over repeats; {used} CPU thread{'s' if used > 1 else ''})",
        caption="vs ref: speedup over the naive PyTorch formulation (harness/bench/reference.py) on the "
        "same device, dtype and shape, for every backend; 1st call: the first call's seconds (the "
        "compile, for compiled impls); compiled-loss times the loss alone",
    )
    for col in ("backend", "impl", "kernel", "device", "dtype"):
        table.add_column(col)
    for col in ("B x C", "1st call s", "median ms", "IQR ms", "rows/s", "GB/s", "% copy", "vs ref"):
        table.add_column(col, justify="right")
    for r in rows:
        frac = r["fraction_of_copy"]
        speedup = r["speedup_vs_reference"]
        table.add_row(r["backend"], r["impl"], r["kernel"], r["device"], r["dtype"],
                      f"{r['batch']}x{r['classes']}",
                      f"{r['first_call_s']:.2f}", f"{r['median_ms']:.3f}", f"{r['iqr_ms']:.3f}",
                      f"{r['rows_per_s']:,.0f}", f"{r['gb_per_s']:.2f}",
                      "-" if frac is None else f"{100 * frac:.1f}",
                      "-" if speedup is None else f"{speedup:.1f}x")
    _print_whole(console, table)
    console.print(threads_line)
    warning = load_warning()  # again: the load may have risen while the grid ran
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for dev, gbs in copy_gbs.items():
        if gbs is not None:
            console.print(f"copy bandwidth on {dev}: {gbs:.1f} GB/s (256 MiB float32 copy, read + write)")
    for s in skipped:
        what = s.get("what") or f"{s['backend']}/{s['impl']} on {s['device']} {s['dtype']}"
        console.print(f"[yellow]skipped[/yellow] {what}: {s['reason']}")

    if json_path is not None:
        payload = {"environment": environment(threads), "config": sld_core.config_to_dict(config),
                   "epoch": BENCH_EPOCH, "copy_gb_per_s": copy_gbs, "results": rows, "skipped": skipped}
        json_path.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_path}")
    if plot is not None:
        if rows:
            from harness.bench.grid import environment as machine

            env = machine(threads)
            load = env["load_average"]
            title = (
                f"{env['cpu']}; {used} CPU thread{'s' if used > 1 else ''} (torch and the CPU kernel) of "
                f"{env['usable_cpus']} usable; {repeats} repeats per point"
                + ("" if load is None else f"; load average {load[0]:.1f} at the end")
            )
            plot_times(rows, plot, title=title)
            console.print(f"wrote {plot}")
        else:
            console.print("[yellow]no results to plot[/yellow]")
