"""What reproducing a run needs to know about where it ran: the project's git commit, the versions of
the packages that compute its numbers, the device, the Python and the OS (:func:`environment`), and the
time in ISO 8601 UTC (:func:`utc_now`). The trainer records them per session in ``run.json``
(:meth:`harness.runs.RunDir.begin_session`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

__all__ = ["PACKAGES", "device_name", "environment", "git_commit", "package_versions", "utc_now"]

# The distributions whose versions a run records: the project, what computes its numbers (torch, numpy,
# the array-API layer, the optional CPU/GPU kernels) and the image decoder of the streamed data sets.
PACKAGES = (
    "swapped-logit-distillation",
    "torch",
    "numpy",
    "array-api-compat",
    "numba",
    "triton",
    "cupy-cuda12x",
    "pillow",
)
_GIT_TIMEOUT_S = 5.0
_CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding harness/


def utc_now() -> str:
    """The current time as ISO 8601 in UTC, to the second, e.g. ``2025-05-01T12:00:00+00:00``.

    Example
    -------
    >>> utc_now().endswith("+00:00")
    True
    """
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device, *, world_size: int = 1) -> dict[str, Any]:
    """Where this process trains, as ``run.json`` records it per session.

    Parameters
    ----------
    device
        This process's device (rank 0's under DDP).
    world_size
        The number of processes training together.

    Returns
    -------
    dict
        ``command`` (this process's arguments), ``git_commit`` (``"unknown"`` without git or outside a
        checkout), ``git_dirty`` (uncommitted changes to tracked files; ``None`` when unknown),
        ``packages`` (name -> version of the installed :data:`PACKAGES`), ``python``, ``platform``,
        ``device``, ``device_name``, ``world_size`` and, on CUDA, ``cuda`` and ``cudnn`` versions.

    Example
    -------
    >>> environment(torch.device("cpu"))["device"]
    'cpu'
    """
    commit, dirty = git_commit()
    info: dict[str, Any] = {
        "command": list(sys.argv),
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "world_size": world_size,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


@functools.cache
def git_commit(root: Path = _CODE_ROOT) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the git checkout the code runs from: ``("unknown", None)`` when git is
    missing, ``root`` is not the top of a checkout (an installed wheel; a virtual environment inside
    some other repository must not lend it that repository's commit), or git fails.

    Example
    -------
    >>> commit, dirty = git_commit()
    >>> commit == "unknown" or len(commit) == 40
    True
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=_GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return "unknown", None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return "unknown", None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else status != ""


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The installed version of each distribution in ``names`` (those not installed are left out).

    Example
    -------
    >>> "torch" in package_versions()
    True
    """
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def device_name(device: torch.device) -> str:
    """The hardware behind ``device``: the GPU's name for CUDA, the CPU model for the CPU (from
    ``/proc/cpuinfo`` on Linux, else the platform's processor string), else the device type.

    Example
    -------
    >>> isinstance(device_name(torch.device("cpu")), str)
    True
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_model()
    return device.type


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
