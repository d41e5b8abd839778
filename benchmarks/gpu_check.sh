#!/usr/bin/env bash
# GPU check for a CUDA box with no internet, in order of priority:
#   1. the CUDA/CuPy tests of the core, the backends and the kernels (torch CUDA through the Triton
#      kernel, the CuPy kernel; CPU cases there run too),
#   2. `sld bench` on cuda: torch fused (= the Triton kernel where triton imports), CuPy kernel and the
#      reference at 64x100 and 4096x1000 (the targets),
#   3. one training step resnet32x4 -> resnet8x4 (batch 64) with KD and with SLD on cuda: fp32 and
#      bf16 + channels-last, each eager and replayed as a CUDA graph (the graphed step's equality test
#      against the eager step first), with the ATen op counts per phase,
#   4. the wider grid (generic core, JAX, bfloat16), the compiled stacks, a tiny training run,
#   5. a markdown results table.
# The whole run fits GPU_CHECK_BUDGET_S seconds (default 480, so a 10-minute device call has room to
# spare): every step's timeout is cut to what is left, a step that would get under 10 s is skipped and
# says so, and the exit status is then non-zero.
# Python: the repo's .venv if there is one, else the machine's python3 with the repo on PYTHONPATH;
# wheels in .whl/ (e.g. array-api-compat) are installed to /tmp/site first when present.
# Everything is written under $OUT when set (else benchmarks/gpu_out/). Run from anywhere:
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-benchmarks/gpu_out}"
mkdir -p "$OUT_DIR"
status=0
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-480}

# bounded N CMD...: CMD under `timeout`, N seconds or what is left of the budget if less; with under
# 10 s left it does not start (exit status 124, as a timeout)
bounded() {
  local limit=$1 left
  shift
  left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "skipped, the ${BUDGET} s budget is spent: $*"
    return 124
  fi
  timeout "$limit" "$@"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi failed"
  python3 - <<'PY'
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
try:
    import cupy
    from backends.cupy_sld import kernel_available
    print("cupy", cupy.__version__, "kernel available:", kernel_available())
except ImportError as exc:
    print("cupy not importable:", exc)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton not importable:", exc)
import backends
if torch.cuda.is_available():
    print("torch cuda kernel:", backends.implementation(torch.zeros(2, 3, device="cuda")))
PY
} 2>&1 | tee "$OUT_DIR/environment.txt"

# SKIP_TESTS=1 / SKIP_BENCH=1 / SKIP_STEP=1 / SKIP_COMPILE=1 / SKIP_TRAIN=1 leave out step 1 / the benches
# of steps 2 and 4 / step 3 / the compiled stacks / the training run (a rerun of the rest on a short device
# budget; step 3 alone takes about 2-3 minutes).
test_status=skipped bench_status=skipped step_status=skipped train_status=skipped

# 1. tests: -rs lists every skip with its reason (e.g. NVRTC missing -> CuPy kernel tests skip)
[ "${SKIP_TESTS:-0}" = 1 ] || { bounded 200 python3 -m pytest tests/test_core.py tests/test_backends.py tests/test_kernels.py -q -rs -p no:cacheprovider \
  2>&1 | tee "$OUT_DIR/pytest_backends.txt"
test_status=${PIPESTATUS[0]}
[ "$test_status" -ne 0 ] && status=1; }

# 2. the targets' grid (float32; >= 50 % of copy bandwidth at 4096x1000 for torch-triton and CuPy,
#    >= 20x the reference at 64x100); the reference runs in the same call
[ "${SKIP_BENCH:-0}" = 1 ] || { bounded 120 python3 -m harness bench \
  --backend torch,cupy --device cuda --batch-sizes 64,4096 --classes 100,1000 --dtype float32 \
  --impl fused,reference --repeats 50 --warmup 5 --json "$OUT_DIR/bench_targets.json" 2>&1 \
  | tee "$OUT_DIR/bench_targets.txt"
bench_status=${PIPESTATUS[0]}
[ "$bench_status" -ne 0 ] && status=1; }

# 3. one training step, KD vs SLD, interleaved (the paper quotes ~12 ms per batch for SLD on its GPU):
#    the graphed step against the eager one (tests/test_step.py, CUDA cases), then four settings
if [ "${SKIP_STEP:-0}" != 1 ]; then
  bounded 150 python3 -m pytest tests/test_step.py -q -rs -p no:cacheprovider -k "cuda or graph" 2>&1 \
    | tee "$OUT_DIR/pytest_step.txt"
  step_status=${PIPESTATUS[0]}
  for setting in "fp32_eager:" "fp32_graphs:--cuda-graphs" "bf16_cl_eager:--amp bf16 --channels-last" \
      "bf16_cl_graphs:--amp bf16 --channels-last --cuda-graphs"; do
    name=${setting%%:*}
    # shellcheck disable=SC2086
    bounded 100 python3 -m harness.bench.step --device cuda --repeats 30 ${setting#*:} \
      --json "$OUT_DIR/step_cuda_$name.json" 2>&1 | tee "$OUT_DIR/step_cuda_$name.txt"
    [ "${PIPESTATUS[0]}" -ne 0 ] && step_status=1
  done
  # the augmentation alone: launches and time per call of each view on the GPU
  bounded 60 python3 -m harness.bench.augment_ops --device cuda --repeats 50 2>&1 \
    | tee "$OUT_DIR/augment_ops_cuda.txt"
  [ "${PIPESTATUS[0]}" -ne 0 ] && step_status=1
  [ "$step_status" -ne 0 ] && status=1
fi

# 4. the wider grid (the reference in the same call), then the compiled stacks
[ "${SKIP_BENCH:-0}" = 1 ] || { bounded 180 python3 -m harness bench \
  --backend torch,cupy,jax --device cuda --batch-sizes 64,1024,4096 --classes 100,1000 \
  --dtype float32,bfloat16 --impl fused,generic,reference --repeats 20 --warmup 3 \
  --json "$OUT_DIR/bench_cuda.json" --plot "$OUT_DIR/bench_cuda.png" 2>&1 | tee "$OUT_DIR/bench_cuda.txt"
wide_status=${PIPESTATUS[0]}
[ "$wide_status" -ne 0 ] && bench_status=$wide_status && status=1; }

# the compiled stacks on cuda, as their users run them: torch.compile (default, then CUDA graphs) and
# jax.jit of value_and_grad, with each compile's seconds, against eager fused and the reference
[ "${SKIP_COMPILE:-0}" = 1 ] || for mode in default reduce-overhead; do
  bounded 240 python3 -m harness bench --backend torch,jax --device cuda --batch-sizes 64,4096 \
    --classes 100,1000 --impl fused,compiled,compiled-loss,reference --compile-mode "$mode" --repeats 20 \
    --json "$OUT_DIR/compiled_cuda_$mode.json" 2>&1 | tee "$OUT_DIR/compiled_cuda_$mode.txt"
done

if [ "${SKIP_TRAIN:-0}" != 1 ]; then

# 4b. the trainer end to end on cuda: a tiny synthetic CIFAR-format archive, a 1-epoch teacher, then a
#     2-epoch SLD student with bf16 autocast and channels-last, then sld eval of its checkpoint, then the
#     same student with --cuda-graphs (8 steps per epoch: 3 warm-up steps, then recorded and replayed)
work=$(mktemp -d)
{
  python3 - "$work/data" <<'PY' &&
import sys
from pathlib import Path
from harness.data import load_cifar100
from harness.data.synthetic import write_cifar100_archive
root = Path(sys.argv[1])  # extracted once with the synthetic md5; later loads skip the checksum
load_cifar100(root, download=False, md5=write_cifar100_archive(root / "cifar-100-python.tar.gz", 512, 256))
PY
  bounded 120 python3 -m harness train-teacher --model resnet14 --epochs 1 --data-dir "$work/data" \
    --runs-dir "$work/runs" --device cuda &&
  bounded 120 python3 -m harness train --student resnet8 --teacher-model resnet14 --method sld --epochs 2 \
    --gamma 1 --amp bf16 --channels-last --data-dir "$work/data" --runs-dir "$work/runs" --out "$work/sld" \
    --device cuda &&
  bounded 60 python3 -m harness eval "$work/sld/last.pt" --data-dir "$work/data" --device cuda &&
  cp "$work/sld/metrics.jsonl" "$OUT_DIR/train_cuda_metrics.jsonl" &&
  bounded 120 python3 -m harness train --student resnet8 --teacher-model resnet14 --method sld --epochs 2 \
    --gamma 1 --amp bf16 --channels-last --cuda-graphs --data-dir "$work/data" --runs-dir "$work/runs" \
    --out "$work/sld_graphs" --device cuda &&
  cp "$work/sld_graphs/metrics.jsonl" "$OUT_DIR/train_cuda_graphs_metrics.jsonl"
} 2>&1 | tee "$OUT_DIR/train_cuda.txt"
train_status=${PIPESTATUS[0]}
[ "$train_status" -ne 0 ] && status=1
fi

# 5. markdown summary
python3 - "$OUT_DIR" "$test_status" "$bench_status" "$train_status" "$step_status" <<'PY'
import json, sys
from pathlib import Path

out, test_status, bench_status, train_status, step_status = Path(sys.argv[1]), *sys.argv[2:6]
lines = ["# GPU check", "", f"- tests (core + backends) exit status: {test_status}",
         f"- sld bench exit status: {bench_status}", f"- training-step tests and benches exit status: {step_status}",
         f"- tiny cuda training run exit status: {train_status}", ""]
steps = [(name, out / f"step_cuda_{name}.json") for name in ("fp32_eager", "fp32_graphs", "bf16_cl_eager", "bf16_cl_graphs")]
if any(path.exists() for _, path in steps):
    lines += ["Training step resnet32x4 -> resnet8x4, batch 64, 2 views, cuda (the paper quotes ~12 ms per batch):", "",
              "| setting | KD ms | SLD ms | SLD/KD | 240-epoch run (steps only) | SLD ATen ops (all / launching) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, path in steps:
        if path.exists():
            r = json.loads(path.read_text())
            ops = r["ops"].get("sld", {})
            count = f"{sum(ops.get('all', {}).values())} / {sum(ops.get('launching', {}).values())}" if ops else "-"
            lines.append(f"| {name} | {r['kd_ms']:.2f} | {r['sld_ms']:.2f} | {r['ratio']:.3f} | "
                         f"{r['sld_run_hours']:.2f} h | {count} |")
        else:
            lines.append(f"| {name} | failed (see step_cuda_{name}.txt) | | | | |")
    lines.append("")
for mode in ("default", "reduce-overhead"):
    compiled = out / f"compiled_cuda_{mode}.txt"
    if compiled.exists():
        lines += [f"compiled stacks (torch.compile mode {mode}, jax.jit), cuda:", "```",
                  compiled.read_text().strip(), "```", ""]
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
