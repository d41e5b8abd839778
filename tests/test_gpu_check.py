"""``benchmarks/gpu_check.sh`` keeps to its time budget: with none left it starts no step, says which it
skipped, still writes its summary, and exits non-zero. (Its GPU steps themselves need a CUDA machine.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and timeout")
def test_a_spent_budget_skips_every_step_and_still_writes_the_summary(tmp_path: Path) -> None:
    env = dict(os.environ, GPU_CHECK_BUDGET_S="0", OUT=str(tmp_path))
    # the script runs `python3`: the interpreter running the tests, first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    skipped = [line for line in done.stdout.splitlines()
               if line.startswith("skipped, the 0 s budget is spent:")]
    steps = ["pytest tests/test_core.py", "--impl fused,reference --repeats 50", "pytest tests/test_step.py",
             "harness.bench.step --device cuda", "harness.bench.augment_ops",
             "--impl fused,generic,reference", "--compile-mode default", "--compile-mode reduce-overhead",
             "harness train-teacher"]
    for step in steps:
        assert any(step in line for line in skipped), (step, done.stdout[-2000:])
    # the tests, the targets' grid, the step tests, 4 step settings, the augmentation, the wider grid,
    # 2 compiled stacks, the training run (it stops at its first skipped command)
    assert len(skipped) == 12
    summary = (tmp_path / "results.md").read_text()
    assert "- tests (core + backends) exit status: 124" in summary
    assert "- sld bench exit status: 124" in summary
    assert (tmp_path / "environment.txt").exists()
