"""Code of another git revision, importable beside this tree's, for A/B timings in one process
(``kernel_calls --against``, ``augment_ops --against``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["revision_package"]


def revision_package(revision: str, directory: str, root: Path, files: tuple[str, ...] | None = None) -> str:
    """The Python files of ``directory`` at git ``revision`` (all of them, or only ``files``) as the
    package ``<directory's last part>_<revision>`` under ``root``; returns the package's name. Put
    ``root`` on ``sys.path`` to import it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout

    name = f"{Path(directory).name}_" + "".join(ch if ch.isalnum() else "_" for ch in revision)
    target = root / name
    target.mkdir()
    listing = files if files is not None else git("ls-tree", "--name-only", f"{revision}:{directory}").split()
    for file in listing:
        if file.endswith(".py"):
            (target / file).write_text(git("show", f"{revision}:{directory}/{file}"))
    return name
