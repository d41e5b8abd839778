"""``sld bench`` end to end on a tiny grid (CliRunner), and its timing core."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harness.bench import grid, timing
from harness.cli import app


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
    assert payload["environment"]["versions"]["torch"]


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
    assert row["rows_per_s"] == pytest.approx(10 / 0.0025)
    ref = grid.summarize(grid.Case("torch", "reference", "cpu", "float32", 10, 100), [0.01], 10.0)
    rows = [row, ref]
    grid.add_speedups(rows)
    assert row["speedup_vs_reference"] == pytest.approx(4.0) and ref["speedup_vs_reference"] == 1.0


def test_jax_compiled_impls_are_jit_of_value_and_grad_and_of_the_loss():
    """The compiled JAX cases give the closed-form numbers (value_and_grad of the total == the core's
    total and gradient; the loss alone == the total), and sld bench reports their first call."""
    pytest.importorskip("jax")
    import numpy as np

    import sld_core

    case = grid.Case("jax", "compiled", "cpu", "float32", 6, 7)
    value, grad = grid.build_case(case)[0]()
    loss_only = grid.build_case(grid.Case("jax", "compiled-loss", "cpu", "float32", 6, 7))[0]()
    s, t, y = grid._numpy_inputs(case)
    terms, expected = sld_core.sld_loss_and_grad(s.astype(np.float64), t.astype(np.float64), y,
                                                 epoch=grid.BENCH_EPOCH)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=2e-5, atol=1e-7)
    assert float(value) == pytest.approx(float(terms.total), rel=1e-5)
    assert float(loss_only) == pytest.approx(float(terms.total), rel=1e-5)
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
