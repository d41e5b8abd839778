"""The layers of ARCHITECTURE.md hold: import-linter's contracts (pyproject.toml) pass, and the modules
that must stay torch-free import no torch when actually imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    # lint_imports_command is the `lint-imports` console script; run it in a clean process, uncached.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
         "sys.argv = ['lint-imports', '--no-cache']; c()"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_cycle_between_any_two_modules() -> None:
    """Stricter than the sibling contract: no module reaches back to one it imports, counting imports
    inside functions and a package's ``__init__`` (grimp is import-linter's graph)."""
    import grimp

    graph = grimp.build_graph("sld_core", "backends", "harness", cache_dir=None)
    cycles = [
        (module, imported)
        for module in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    ]
    assert cycles == []


@pytest.mark.parametrize(
    "module",
    ["harness.config", "harness.method_names", "harness.runs", "harness.recipes", "harness.report",
     "harness.cli", "harness.train.interrupt", "harness.jobs"],
)
def test_torch_free_modules_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
