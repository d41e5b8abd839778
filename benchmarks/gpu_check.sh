#!/usr/bin/env bash
# GPU check for a lent CUDA box (no internet; the repo and its .venv are copied over). Under 8 minutes:
#   1. the CUDA/CuPy backend tests (tests/test_backends.py; CPU tests there run too, they take seconds),
#   2. `sld bench` on cuda (torch fused/generic/reference, CuPy fused/generic, JAX generic if it sees a GPU),
#   3. a markdown results table.
# Everything is written under $OUT when set (else benchmarks/gpu_out/). Run from anywhere:
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
OUT_DIR="${OUT:-benchmarks/gpu_out}"
mkdir -p "$OUT_DIR"
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi failed"
  python - <<'PY'
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
try:
    import cupy
    from backends.cupy_sld import kernel_available
    print("cupy", cupy.__version__, "kernel available:", kernel_available())
except ImportError as exc:
    print("cupy not importable:", exc)
PY
} 2>&1 | tee "$OUT_DIR/environment.txt"

# 1. tests: -rs lists every skip with its reason (e.g. NVRTC missing -> CuPy kernel tests skip)
timeout 180 python -m pytest tests/test_backends.py -q -rs -p no:cacheprovider 2>&1 | tee "$OUT_DIR/pytest_backends.txt"
test_status=${PIPESTATUS[0]}
[ "$test_status" -ne 0 ] && status=1

# 2. the bench grid on cuda (float32 and bfloat16); the reference runs in the same call for speedups
timeout 240 python -c "from harness.cli import app; app()" bench \
  --backend torch,cupy,jax --device cuda --batch-sizes 64,256,1024,4096 --classes 100,1000 \
  --dtype float32,bfloat16 --impl fused,generic,reference --repeats 20 --warmup 3 \
  --json "$OUT_DIR/bench_cuda.json" --plot "$OUT_DIR/bench_cuda.png" 2>&1 | tee "$OUT_DIR/bench_cuda.txt"
bench_status=${PIPESTATUS[0]}
[ "$bench_status" -ne 0 ] && status=1

# 3. markdown summary
python - "$OUT_DIR" "$test_status" "$bench_status" <<'PY'
import json, sys
from pathlib import Path

out, test_status, bench_status = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lines = ["# GPU check", "", f"- tests/test_backends.py exit status: {test_status}",
         f"- sld bench exit status: {bench_status}", ""]
env = (out / "environment.txt")
if env.exists():
    lines += ["```", env.read_text().strip(), "```", ""]
bench = out / "bench_cuda.json"
if bench.exists():
    data = json.loads(bench.read_text())
    lines += [f"Copy bandwidth: {data['copy_gb_per_s']}", "",
              "| backend | impl | dtype | B x C | median ms | IQR ms | rows/s | GB/s | % copy | vs reference |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        frac = "-" if r["fraction_of_copy"] is None else f"{100 * r['fraction_of_copy']:.1f}"
        speed = "-" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.1f}x"
        lines.append(f"| {r['backend']} | {r['impl']} | {r['dtype']} | {r['batch']}x{r['classes']} | "
                     f"{r['median_ms']:.3f} | {r['iqr_ms']:.3f} | {r['rows_per_s']:,.0f} | "
                     f"{r['gb_per_s']:.1f} | {frac} | {speed} |")
    lines += ["", "Skipped:"] + [f"- {s}" for s in data["skipped"]]
else:
    lines.append("sld bench wrote no JSON (see bench_cuda.txt)")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("wrote", out / "results.md")
PY
exit $status
