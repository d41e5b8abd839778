"""The examples run end to end as their users run them: a subprocess from the repository root."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHANCE = 0.1  # ten digit classes
ARGS = ("--epochs", "6")  # short, yet the slowest learner (the CE student) is well above chance
LINE = re.compile(r"^(teacher|student-ce|student-sld)\s+test accuracy\s+(\S+)$", re.MULTILINE)


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _cuda_usable() -> bool:
    try:
        import cupy
    except ImportError:
        return False
    return bool(cupy.cuda.is_available())


@functools.cache  # the agreement test reuses the runs above instead of paying twice
def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The project need not be installed: the examples import sld_core from the checkout.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, f"examples/{script}", *args], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": path}, text=True, timeout=120)


@pytest.mark.parametrize(
    "script",
    [
        "numpy_mlp.py",
        pytest.param("jax_mlp.py", marks=pytest.mark.skipif(not _importable("jax"), reason="no jax")),
        pytest.param("cupy_mlp.py", marks=pytest.mark.skipif(not _cuda_usable(), reason="no usable GPU")),
    ],
)
def test_example_trains_above_chance(script: str) -> None:
    done = _run(script, *ARGS)
    assert done.returncode == 0, done.stderr
    accuracies = dict(LINE.findall(done.stdout))
    assert set(accuracies) == {"teacher", "student-ce", "student-sld"}, done.stdout
    for name, text in accuracies.items():
        value = float(text)
        assert math.isfinite(value) and CHANCE + 0.05 < value <= 1.0, f"{name}: {text}\n{done.stdout}"


def test_numpy_and_jax_examples_agree() -> None:
    """Closed-form gradient (NumPy) and autodiff (JAX) train the same MLPs on the same batches, so they
    print the same accuracies up to float32 round-off (at most a couple of test digits flip)."""
    pytest.importorskip("jax")
    outputs = [_run(script, *ARGS) for script in ("numpy_mlp.py", "jax_mlp.py")]
    for done in outputs:
        assert done.returncode == 0, done.stderr
    numpy_acc, jax_acc = ({k: float(v) for k, v in LINE.findall(done.stdout)} for done in outputs)
    for name in numpy_acc:
        assert abs(numpy_acc[name] - jax_acc[name]) <= 3 / 599, (name, numpy_acc, jax_acc)


@pytest.mark.skipif(_cuda_usable(), reason="a GPU is present, so the no-GPU message is not shown")
def test_cupy_example_without_gpu_says_why() -> None:
    done = _run("cupy_mlp.py")
    assert done.returncode == 1
    assert re.search(r"needs (a CUDA GPU|CuPy)", done.stderr), done.stderr
