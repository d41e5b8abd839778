"""``sld bench`` end to end on a tiny grid (CliRunner), and its timing core."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harness.bench import grid, timing
from harness.cli import app


@pytest.fixture(autouse=True)
def restore_threads():
    """``sld bench`` pins torch's and the CPU kernel's threads for the rest of its process; in this one,
    undo it after each test."""
    torch = pytest.importorskip("torch")
    import backends

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    backends.set_num_threads(None)


def test_bench_small_grid_writes_json_and_png(tmp_path):
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(app, [
        "bench", "--backend", "numpy,torch,cupy", "--device", "cpu,cuda", "--batch-sizes", "8,16",
        "--classes", "10", "--impl", "fused,reference", "--repeats", "2", "--warmup", "1",
        "--json", str(json_path), "--plot", str(png_path),
    ])
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    rows = payload["results"]
    ran = {(r["backend"], r["impl"], r["device"]) for r in rows}
    assert ("torch", "fused", "cpu") in ran and ("torch", "reference", "cpu") in ran
    assert ("numpy", "fused", "cpu") in ran
    assert {r["batch"] for r in rows} == {8, 16}
    for r in rows:
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["rows_per_s"] > 0 and r["gb_per_s"] > 0
        assert r["speedup_vs_reference"] is not None  # the torch reference ran for every shape
        assert 0 < r["fraction_of_copy"]
    assert payload["copy_gb_per_s"]["cpu"] > 0
    reasons = {(s.get("backend"), s.get("impl"), s["device"]): s["reason"] for s in payload["skipped"]}
    assert reasons[("numpy", "reference", "cpu")] == "the reference formulation is PyTorch only"
    assert reasons[("cupy", "fused", "cpu")] == "CuPy runs on CUDA only"
    assert reasons[("numpy", "fused", "cuda")] == "NumPy runs on the CPU only"
    if not _cuda_available():
        assert "is False" in reasons[("cupy", "fused", "cuda")]
        assert "torch.cuda.is_available() is False" in reasons[("torch", "fused", "cuda")]
    assert "skipped" in result.output and "NumPy runs on the CPU only" in result.output
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = payload["environment"]
    assert env["versions"]["torch"]
    # no --threads: torch's count, pinned for the CPU kernel too, and said so
    assert env["torch_threads"] == env["kernel_threads"] >= 1 and env["threads_option"] is None
    assert f"CPU threads: {env['torch_threads']} (torch and the CPU kernel, pinned" in " ".join(
        result.output.split()
    )
    for r in rows:
        assert r["q25_ms"] <= r["median_ms"] <= r["q75_ms"]
        assert r["iqr_ms"] == pytest.approx(r["q75_ms"] - r["q25_ms"])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_bench_rejects_unknown_grid_values():
    result = CliRunner().invoke(app, ["bench", "--backend", "tensorflow"])
    assert result.exit_code != 0
    assert "unknown backend ['tensorflow']" in result.output
    result = CliRunner().invoke(app, ["bench", "--batch-sizes", "8,x"])
    assert result.exit_code != 0
    assert "batch sizes must be comma-separated integers" in result.output


def test_bench_jax_has_no_fused_path_but_runs_generic():
    pytest.importorskip("jax")
    with pytest.raises(grid.Skip, match="no fused JAX path"):
        grid.build_case(grid.Case("jax", "fused", "cpu", "float32", 4, 5))
    fn, sync = grid.build_case(grid.Case("jax", "generic", "cpu", "float32", 4, 5))
    times = timing.time_call(fn, sync, repeats=2, warmup=1)
    assert len(times) == 2 and min(times) > 0


def test_timing_core_summary_and_speedups():
    case = grid.Case("torch", "fused", "cpu", "float32", 10, 100)
    assert case.bytes_moved == 3 * 10 * 100 * 4 + 8 * 10
    row = grid.summarize(case, [0.001, 0.002, 0.003, 0.004], copy_gbs=10.0)
    assert row["median_ms"] == pytest.approx(2.5) and row["iqr_ms"] == pytest.approx(1.5)
    # linear interpolation between order statistics: 1 + 0.75 * (2 - 1), 3 + 0.25 * (4 - 3)
    assert row["q25_ms"] == pytest.approx(1.75) and row["q75_ms"] == pytest.approx(3.25)
    assert row["rows_per_s"] == pytest.approx(10 / 0.0025)
    ref = grid.summarize(grid.Case("torch", "reference", "cpu", "float32", 10, 100), [0.01], 10.0)
    rows = [row, ref]
    grid.add_speedups(rows)
    assert row["speedup_vs_reference"] == pytest.approx(4.0) and ref["speedup_vs_reference"] == 1.0


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_compiled_impls_give_the_float64_cores_numbers(backend: str) -> None:
    """The compiled cases (jax.jit of value_and_grad / of the loss; torch.compile of the core's loss +
    closed-form gradient / of the loss) give the float64 core's total and gradient on the bench's
    inputs (torch's first call compiles: ~10 s on a CPU)."""
    if backend == "jax":
        pytest.importorskip("jax")
    import numpy as np

    import sld_core

    case = grid.Case(backend, "compiled", "cpu", "float32", 6, 7)
    total, grad = grid.build_case(case)[0]()
    loss_only = grid.build_case(grid.Case(backend, "compiled-loss", "cpu", "float32", 6, 7))[0]()
    s, t, y = grid._numpy_inputs(case)
    terms, expected = sld_core.sld_loss_and_grad(s.astype(np.float64), t.astype(np.float64), y,
                                                 epoch=grid.BENCH_EPOCH)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=2e-5, atol=1e-7)
    assert float(total) == pytest.approx(float(terms.total), rel=1e-5)
    assert float(loss_only) == pytest.approx(float(terms.total), rel=1e-5)


def test_sld_bench_runs_the_jax_compiled_impls_and_says_why_numpy_has_none():
    pytest.importorskip("jax")
    assert grid.Case("jax", "compiled-loss", "cpu", "float32", 6, 7).bytes_moved == 2 * 6 * 7 * 4 + 8 * 6
    result = CliRunner().invoke(app, [
        "bench", "--backend", "jax,numpy", "--batch-sizes", "8", "--classes", "10",
        "--impl", "compiled,compiled-loss", "--repeats", "2", "--warmup", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "NumPy has no compiler" in result.output
    assert "speedup over the naive PyTorch formulation" in " ".join(result.output.split())


def test_first_call_failure_is_a_skip_with_the_reason():
    def broken():
        raise RuntimeError("no C++ compiler found\nlong traceback text")

    with pytest.raises(grid.Skip, match="first call failed: RuntimeError: no C\\+\\+ compiler found$"):
        timing.first_call(broken, lambda: None)


def test_threads_are_pinned_for_torch_and_the_cpu_kernel(tmp_path):
    import torch

    import backends

    json_path = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--backend", "torch", "--batch-sizes", "8", "--classes", "10", "--impl", "fused",
        "--repeats", "2", "--warmup", "0", "--threads", "1", "--json", str(json_path),
    ])
    assert result.exit_code == 0, result.output
    assert "CPU threads: 1 (torch and the CPU kernel, pinned for the run; --threads" in " ".join(
        result.output.split()
    )
    assert "1 CPU thread)" in result.output  # in the table's title
    assert torch.get_num_threads() == 1 and backends.num_threads() == 1
    env = json.loads(json_path.read_text())["environment"]
    assert (env["torch_threads"], env["kernel_threads"], env["threads_option"]) == (1, 1, 1)
    assert env["usable_cpus"] >= 1


def test_load_warning_when_the_load_exceeds_the_usable_cpus(monkeypatch):
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 4.0, 3.0))
    warning = grid.load_warning(cpus=2)
    assert warning is not None and "load average 5.0 > 2 usable CPU(s)" in warning
    assert grid.load_warning(cpus=8) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 0.0, 0.0))
    assert grid.load_warning(cpus=2) is None  # at the CPU count, not above it

    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert grid.load_warning(cpus=1) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    result = CliRunner().invoke(app, [
        "bench", "--backend", "numpy", "--batch-sizes", "8", "--classes", "10", "--impl", "fused",
        "--repeats", "1", "--warmup", "0",
    ])
    assert result.exit_code == 0, result.output
    assert "warning: the machine is loaded: 1-minute load average 9.0" in " ".join(result.output.split())


def test_plot_has_a_panel_per_class_count_and_iqr_error_bars(tmp_path):
    from matplotlib.container import ErrorbarContainer

    rows = []
    for classes in (10, 100):
        for batch, times in ((8, [0.001, 0.002, 0.003, 0.004]), (16, [0.004, 0.004, 0.008, 0.012])):
            row = grid.summarize(grid.Case("torch", "fused", "cpu", "float32", batch, classes), times, None)
            rows.append(row | {"kernel": "numba"})
    fig = grid.plot_times(rows, tmp_path / "bench.png", title="1 CPU thread")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_title() for ax in fig.axes] == ["10 classes", "100 classes"]
    assert "1 CPU thread" in fig.get_suptitle() and "25th to 75th percentile" in fig.get_suptitle()
    for ax in fig.axes:
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        segments = [seg[:, 1] for seg in bars.lines[2][0].get_segments()]
        # np.percentile's quartiles: (1.75, 3.25) ms and (4, 9) ms
        assert [tuple(seg) for seg in segments] == [pytest.approx((1.75, 3.25)), pytest.approx((4.0, 9.0))]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["torch/fused [numba] (cpu, float32)"]
