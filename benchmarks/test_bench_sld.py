"""pytest-benchmark suite over the ``sld bench`` grid, reusing its timing core (``build_case``).

Not part of the default test run (``testpaths = ["tests"]``). Run with::

    python -m pytest benchmarks --benchmark-only                     # everything that can run here
    python -m pytest benchmarks --benchmark-only -k "torch and 4096"  # a slice
    python -m pytest benchmarks --benchmark-only --benchmark-compare  # against the previous run

Grid points that cannot run here (no GPU, no CuPy, reference on NumPy, ...) are skipped with the reason.
"""

from __future__ import annotations

import itertools

import pytest

from harness.bench.grid import BACKENDS, Case, Skip, build_case

BATCH_SIZES = (64, 256, 1024, 4096)
CLASSES = (100, 1000)
GRID = [
    Case(backend, impl, device, "float32", batch, classes)
    for backend, impl, device, batch, classes in itertools.product(
        BACKENDS, ("fused", "generic", "reference"), ("cpu", "cuda"), BATCH_SIZES, CLASSES
    )
]


def _id(case: Case) -> str:
    return f"{case.backend}-{case.impl}-{case.device}-{case.batch}x{case.classes}"


@pytest.mark.parametrize("case", GRID, ids=_id)
def test_sld_loss_and_grad(benchmark, case: Case):
    try:
        fn, sync = build_case(case)
    except Skip as exc:
        pytest.skip(str(exc))
    benchmark.group = f"{case.batch}x{case.classes} {case.device}"
    benchmark.extra_info.update(bytes_moved=case.bytes_moved)

    def step():  # the device sync belongs inside the clock
        fn()
        sync()

    benchmark.pedantic(step, warmup_rounds=3, rounds=10 if case.batch * case.classes >= 1 << 20 else 50)
