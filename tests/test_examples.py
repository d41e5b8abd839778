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


TORCH_LINE = re.compile(
    r"^(teacher|student-ce|student-sld|student-swap-kd)\s+test accuracy\s+(\S+)$", re.MULTILINE
)


@pytest.mark.skipif(not _importable("torch"), reason="no torch")
def test_torch_loop_trains_with_the_module_and_the_swap_in_front_of_its_own_loss() -> None:
    done = _run("torch_loop.py", *ARGS)
    assert done.returncode == 0, done.stderr
    accuracies = {k: float(v) for k, v in TORCH_LINE.findall(done.stdout)}
    assert set(accuracies) == {"teacher", "student-ce", "student-sld", "student-swap-kd"}, done.stdout
    for name, value in accuracies.items():
        assert math.isfinite(value) and CHANCE + 0.05 < value <= 1.0, f"{name}: {value}\n{done.stdout}"
    assert "SLD pseudo-teacher from epoch 5" in done.stdout  # round(6 * 150 / 240) = 4, on for epoch > 4


@pytest.mark.skipif(not _importable("lightning"), reason="lightning is not installed (pip install lightning)")
def test_lightning_module_distills_and_passes_the_epoch_counted_from_one() -> None:
    """Two epochs: gamma = round(2 * 150 / 240) = 1, so the pseudo-teacher is on in the second epoch only
    if the module passes Lightning's 0-based ``current_epoch`` + 1 (with the raw epoch, 1 > 1 is false
    and the logged term would be 0)."""
    done = _run("lightning_module.py", "--epochs", "2")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^lightning: 2 epochs; SLD pseudo-teacher from epoch 2; its term in the last epoch "
                     r"(\S+)$", done.stdout, re.MULTILINE), done.stdout
    pseudo = float(re.search(r"its term in the last epoch (\S+)", done.stdout).group(1))
    assert pseudo > 0, done.stdout
    accuracies = {k: float(v) for k, v in LINE.findall(done.stdout)}
    assert set(accuracies) == {"teacher", "student-sld"}, done.stdout
    assert all(CHANCE < v <= 1.0 for v in accuracies.values()), done.stdout
