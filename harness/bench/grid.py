"""The grid ``sld bench`` times: SLD loss + gradient per backend, implementation, device, dtype, batch
size and class count (:class:`Case`), each as a ready ``(fn, sync)`` pair (:func:`build_case`), and
one result row per case (:func:`summarize`, :func:`add_speedups`). Plain Python, no Rich or Typer, so
the pytest-benchmark suites in ``benchmarks/`` reuse it. Frameworks are imported only for the backends
asked for.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .timing import Skip

__all__ = [
    "BACKENDS",
    "BENCH_EPOCH",
    "DEVICES",
    "DTYPES",
    "IMPLS",
    "Case",
    "Skip",
    "add_speedups",
    "build_case",
    "build_inputs",
    "environment",
    "kernel_name",
    "load_warning",
    "pin_threads",
    "plot_times",
    "summarize",
    "usable_cpus",
]

BACKENDS = ("numpy", "torch", "cupy", "jax")
# fused: the backend's fast path (its compiled kernel where there is one); eager: the same path with the
# kernels bypassed (backends.use_kernels(False)); generic: sld_core eagerly; compiled / compiled-loss:
# sld_core under the stack's compiler (torch.compile, jax.jit) for loss + gradient / the loss alone;
# reference: the naive PyTorch formulation every speedup is measured against.
IMPLS = ("fused", "eager", "generic", "compiled", "compiled-loss", "reference")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
BENCH_EPOCH = 200  # after gamma=150: the pseudo-teacher is on, so every term is timed


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
        """Bytes that must move at the least: both logits read once, the gradient written once (none
        for ``compiled-loss``, which computes the loss alone; the labels are int64)."""
        itemsize = 4 if self.dtype == "float32" else 2
        arrays = 2 if self.impl == "compiled-loss" else 3
        return arrays * self.batch * self.classes * itemsize + 8 * self.batch


def _numpy_inputs(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # logit scale ~3: a realistic mix of right and wrong rows, so the swaps do happen
    student = rng.standard_normal((case.batch, case.classes), dtype=np.float32) * 3
    teacher = rng.standard_normal((case.batch, case.classes), dtype=np.float32) * 3
    targets = rng.integers(0, case.classes, case.batch)
    return student, teacher, targets


def _torch_case(case: Case, config: Any, compile_mode: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    import torch

    if case.device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch.cuda.is_available() is False")
    s_np, t_np, y_np = _numpy_inputs(case)
    dtype = getattr(torch, case.dtype)
    s = torch.as_tensor(s_np, device=case.device).to(dtype)
    t = torch.as_tensor(t_np, device=case.device).to(dtype)
    y = torch.as_tensor(y_np, device=case.device)
    if case.impl in ("fused", "eager"):
        from backends.torch_sld import sld_loss_fused

        def fused() -> Any:  # what a training step runs: forward, then backward of the total
            leaf = s.detach().requires_grad_(True)
            sld_loss_fused(leaf, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False).total.backward()
            return leaf.grad

        fn = fused if case.impl == "fused" else _without_kernels(fused)
    elif case.impl == "generic":
        import sld_core

        def fn() -> Any:
            return sld_core.sld_loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False)
    elif case.impl in ("compiled", "compiled-loss"):
        import sld_core

        def loss_and_grad(s: Any, t: Any, y: Any) -> Any:
            terms, grad = sld_core.sld_loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config,
                                                     check_targets=False)
            return terms.total, grad

        def loss(s: Any, t: Any, y: Any) -> Any:
            return sld_core.sld_loss(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False).total

        # array-api-compat's type checks are lru_cache-wrapped; Dynamo traces through them (they are pure)
        # and would print one warning per helper at the first call.
        warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`",
                                category=UserWarning)
        compiled = torch.compile(loss_and_grad if case.impl == "compiled" else loss, mode=compile_mode)

        def fn() -> Any:
            return compiled(s, t, y)
    else:
        from .reference import reference_sld_loss_and_grad

        def fn() -> Any:
            return reference_sld_loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config)
    sync = torch.cuda.synchronize if case.device == "cuda" else (lambda: None)
    return fn, sync


def _numpy_case(case: Case, config: Any, compile_mode: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    if case.impl.startswith("compiled"):
        raise Skip("NumPy has no compiler (the fused path is NumPy's fast one)")
    if case.device != "cpu":
        raise Skip("NumPy runs on the CPU only")
    if case.dtype == "bfloat16":
        raise Skip("NumPy has no bfloat16")
    s, t, y = (a.astype(case.dtype) if a.dtype.kind == "f" else a for a in _numpy_inputs(case))
    if case.impl in ("fused", "eager"):
        from backends.numpy_sld import sld_loss_and_grad_numpy as loss_and_grad
    else:
        from sld_core import sld_loss_and_grad as loss_and_grad

    def fn() -> Any:
        return loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False)

    return (_without_kernels(fn) if case.impl == "eager" else fn), lambda: None


def _cupy_case(case: Case, config: Any, compile_mode: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    if case.impl == "eager":
        raise Skip("CuPy's fast path is its kernel (no eager variant)")
    if case.impl.startswith("compiled"):
        raise Skip("no compiled CuPy path (the fused path is CuPy's own kernel)")
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


def _jax_case(case: Case, config: Any, compile_mode: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    if case.impl in ("fused", "eager"):
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

    def loss(s: Any, t: Any, y: Any) -> Any:
        return sld_core.sld_loss(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False).total

    if case.impl == "compiled":  # how JAX users train: jit of value_and_grad of the loss
        run = jax.jit(jax.value_and_grad(loss))
    elif case.impl == "compiled-loss":
        run = jax.jit(loss)
    else:  # eager, with the closed-form gradient
        def run(s: Any, t: Any, y: Any) -> Any:
            return sld_core.sld_loss_and_grad(s, t, y, epoch=BENCH_EPOCH, config=config, check_targets=False)

    def fn() -> Any:
        return jax.block_until_ready(run(s, t, y))  # JAX dispatches asynchronously: wait inside the clock

    return fn, lambda: None


def _without_kernels(fn: Callable[[], Any]) -> Callable[[], Any]:
    import backends

    def eager() -> Any:
        with backends.use_kernels(False):
            return fn()

    return eager


def kernel_name(case: Case) -> str:
    """What runs for ``case``: for ``fused``, the backend's kernel (``backends.implementation``:
    numba, triton, cupy-kernel, or eager when no compiled kernel is available)."""
    if case.impl == "fused":
        import backends

        sample = build_inputs(case)[0]
        return backends.implementation(sample, with_grad=True)
    compilers = {"torch": "torch.compile", "jax": "jax.jit"}
    return {"eager": "eager", "generic": "core", "reference": "reference"}.get(
        case.impl, compilers.get(case.backend, "")
    )


def build_inputs(case: Case) -> tuple[Any, Any, Any]:
    """The case's (student, teacher, labels) as arrays of its backend and device (small cases only
    need their type; the timed functions hold their own)."""
    s, t, y = _numpy_inputs(case)
    if case.backend == "torch":
        import torch

        return tuple(torch.as_tensor(a, device=case.device) for a in (s, t, y))
    if case.backend == "cupy":
        import cupy

        return tuple(cupy.asarray(a) for a in (s, t, y))
    return s, t, y


def build_case(
    case: Case, config: Any = None, *, compile_mode: str = "default"
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """``(fn, sync)`` for one grid point: ``fn()`` computes the loss terms and the gradient w.r.t. the
    student logits (the loss alone for ``compiled-loss``); ``sync()`` waits for the device. Raises
    :class:`Skip` with the reason when the point cannot run here (library missing, no GPU, unsupported
    dtype or combination). ``compile_mode`` is ``torch.compile``'s (``"reduce-overhead"``: CUDA graphs);
    ``jax.jit`` has no modes."""
    if case.impl == "reference" and case.backend != "torch":
        raise Skip("the reference formulation is PyTorch only")
    if case.backend == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise Skip(f"torch is not installed ({exc})") from exc
    builders = {"torch": _torch_case, "numpy": _numpy_case, "cupy": _cupy_case, "jax": _jax_case}
    return builders[case.backend](case, config, compile_mode)


def summarize(
    case: Case, times: list[float], copy_gbs: float | None, first_call_s: float | None = None
) -> dict[str, Any]:
    """One result row: median, quartiles and IQR (ms), rows/s, effective GB/s and its fraction of
    ``copy_gbs``, and the first call's seconds (for ``compiled`` impls: the one-time compile)."""
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    gbs = case.bytes_moved / median / 1e9
    return {
        **asdict(case),
        "first_call_s": first_call_s,
        "median_ms": median * 1e3,
        "q25_ms": q25 * 1e3,
        "q75_ms": q75 * 1e3,
        "iqr_ms": (q75 - q25) * 1e3,
        "repeats": len(times),
        "rows_per_s": case.batch / median,
        "gb_per_s": gbs,
        "fraction_of_copy": gbs / copy_gbs if copy_gbs else None,
        "speedup_vs_reference": None,
    }


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Fill ``speedup_vs_reference`` from the torch reference row of the same device, dtype and shape
    (the reference must be in the same run): every backend is compared with the naive PyTorch
    formulation, NumPy, CuPy and JAX included, as the table's caption says."""
    reference = {
        (r["device"], r["dtype"], r["batch"], r["classes"]): r["median_ms"]
        for r in rows if r["impl"] == "reference"
    }
    for r in rows:
        ref = reference.get((r["device"], r["dtype"], r["batch"], r["classes"]))
        r["speedup_vs_reference"] = ref / r["median_ms"] if ref else None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pin_threads(threads: int | None) -> int:
    """Set torch's intra-op threads and the CPU kernel's (``backends.set_num_threads``) to ``threads``
    (default: torch's current count) for the rest of the process, and return the count: timings on a
    shared CPU change many-fold with it, so a run states and holds one.

    >>> pin_threads(1)  # doctest: +SKIP
    1
    """
    import torch

    from backends import set_num_threads

    count = torch.get_num_threads() if threads is None else threads
    torch.set_num_threads(count)
    set_num_threads(count)
    return count


def load_warning(cpus: int | None = None) -> str | None:
    """A warning when the 1-minute load average exceeds the CPUs this process may use (``cpus``,
    default :func:`usable_cpus`): other work then shares the cores and every time here is inflated,
    unevenly. ``None`` when the load is low or unknown (no ``os.getloadavg``)."""
    cpus = usable_cpus() if cpus is None else cpus
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load <= cpus:
        return None
    return (
        f"the machine is loaded: 1-minute load average {load:.1f} > {cpus} usable CPU(s); other processes "
        "share the cores, so times are inflated and noisy (ratios measured side by side hold up best)"
    )


def environment(threads: int | None) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("numpy", "torch", "cupy-cuda12x", "jax", "numba"):
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
    from backends import num_threads

    try:
        load = list(os.getloadavg())
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(),
            "torch_threads": torch_threads, "kernel_threads": num_threads(), "threads_option": threads,
            "load_average": load, "platform": platform.platform(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}


def plot_times(rows: list[dict[str, Any]], path: Path, *, title: str = "") -> Any:
    """Median time per call against the batch size, one panel per class count, one line per
    backend / impl / device / dtype, with the interquartile range (25th to 75th percentile of the
    repeats) as error bars; ``title`` goes on top (the threads and the machine). Writes ``path`` and
    returns the figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    classes = sorted({r["classes"] for r in rows})
    fig = Figure(figsize=(6.5 * len(classes), 5.0), layout="constrained")
    axes = fig.subplots(1, len(classes), squeeze=False)[0]
    for ax, num_classes in zip(axes, classes):
        series: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["classes"] == num_classes:
                kernel = r.get("kernel") or r["impl"]
                runs = "" if kernel == r["impl"] else f" [{kernel}]"
                label = f"{r['backend']}/{r['impl']}{runs} ({r['device']}, {r['dtype']})"
                series.setdefault(label, []).append(r)
        for label, points in sorted(series.items()):
            points.sort(key=lambda r: r["batch"])
            median = np.array([r["median_ms"] for r in points])
            q25 = np.array([r.get("q25_ms", r["median_ms"]) for r in points])
            q75 = np.array([r.get("q75_ms", r["median_ms"]) for r in points])
            ax.errorbar([r["batch"] for r in points], median, yerr=[median - q25, q75 - median], marker="o",
                        markersize=4, capsize=3, label=label)
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch"] for r in rows})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("batch size (rows)")
        ax.set_ylabel("ms per loss + gradient")
        ax.set_title(f"{num_classes} classes")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    heading = "SLD loss + gradient: median time per call; bars: 25th to 75th percentile of the repeats"
    fig.suptitle(heading + (f"\n{title}" if title else ""), fontsize=11)
    fig.savefig(path, dpi=120)
    return fig
