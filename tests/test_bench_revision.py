"""``harness.bench.revision.revision_package``: another revision's files, importable beside this tree's."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from harness.bench.revision import revision_package

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    monkeypatch.chdir(ROOT)


def test_a_directory_or_some_of_its_files_at_head(in_checkout: None, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    whole = revision_package("HEAD", "backends", tmp_path)
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", "HEAD:backends"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert whole == "backends_HEAD"
    assert sorted(p.name for p in (tmp_path / whole).iterdir()) == sorted(
        f for f in listed if f.endswith(".py")
    )
    one = revision_package("HEAD", "harness/data", tmp_path, files=("augment.py",))
    assert [p.name for p in (tmp_path / one).iterdir()] == ["augment.py"]
    module = importlib.import_module(f"{one}.augment")
    assert module.__file__.startswith(str(tmp_path)) and module.RANDAUGMENT_OPS[0].name == "AutoContrast"
    sys.modules.pop(f"{one}.augment", None)
    sys.modules.pop(one, None)


def test_an_unknown_revision_is_an_error(in_checkout: None, tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        revision_package("no-such-revision-0", "backends", tmp_path)
