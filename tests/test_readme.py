"""README.md stays true: its Python examples run, and .ci/run reads its two commands from it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index):
    pytest.importorskip("torch")
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), {})


def test_ci_runs_the_readme_commands():
    """.ci/run extracts exactly the first line of each marked block."""
    script = (ROOT / ".ci" / "run").read_text()
    extractor = re.search(r"readme_command\(\) \{\n(.*?)\n\}", script, flags=re.S).group(1)
    program = f"readme_command() {{\n{extractor}\n}}\nreadme_command install-and-run; readme_command test"
    out = subprocess.run(
        ["bash", "-c", program],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out == ['pip install -e ".[dev]" -c constraints.txt && sld demo', "python -m pytest"]
    first_lines = README.split("\n\n", 4)
    assert "<!-- install-and-run -->" in "".join(first_lines[:3])  # the commands open the README
