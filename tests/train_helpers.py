"""Helpers shared by the trainer's tests (test_train*.py, test_reproduce.py, test_ddp.py,
test_reliability.py): a tiny synthetic CIFAR-100, an untrained teacher file, metric/weight
comparisons, ``sld`` in this process (:func:`invoke`) or as a real subprocess with a timeout that kills
the whole process tree (torchrun starts its workers in sessions of their own, so killing the launcher
alone would orphan them)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from harness.cli import app
from harness.data.cifar import load_cifar100
from harness.data.synthetic import write_cifar100_archive
from harness.demo import torch_threads
from harness.models import build_model

SLD = str(Path(sys.executable).with_name("sld"))  # the console script of this environment
TIMING = ("epoch_time_s", "images_per_s")  # metric fields that differ between identical runs


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block: on a busy two-core machine a tiny model trains several
    times faster so (1.6 s instead of 11.6 s for the runs here), and runs in other processes that also
    use one thread do the same arithmetic."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """:func:`one_torch_thread` around a whole test module: importing this fixture into a module applies
    it to every test there (autouse)."""
    with one_torch_thread():
        yield


def write_tiny_cifar(root: Path, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A synthetic CIFAR-100 archive in ``root``, already extracted (later loads skip the checksum)."""
    md5 = write_cifar100_archive(root / "cifar-100-python.tar.gz", n_train=n_train, n_test=n_test, seed=seed)
    load_cifar100(root, download=False, md5=md5)
    return root


def write_untrained_teacher(path: Path, model: str = "resnet8", seed: int = 123) -> Path:
    """A teacher in mdistiller's file layout (``{"model": state_dict}``); untrained is enough for tests."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_model(model).state_dict(), "epoch": 240}, path)
    return path


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with random weights *and* BatchNorm running statistics, in eval mode: a checkpoint load
    that skipped any tensor would then change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return model.eval()


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The records of ``out_dir/metrics.jsonl``."""
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: Iterable[dict]) -> list[dict]:
    """Metric records minus the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def final_state(out_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model state of ``out_dir/last.pt``."""
    return torch.load(Path(out_dir) / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_state(a: dict, b: dict, *, exact: bool = True, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Equal keys, and every tensor equal (``exact``) or close; the message names the first tensor off."""
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        elif a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(a[key], b[key]), key  # counters such as num_batches_tracked


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with one torch thread per process (what is fastest for tiny models on a busy
    two-core machine, and what makes runs in different processes bit-comparable)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200", **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # never inherit a distributed setting from the test runner
    return env


def run_process(
    command: Sequence[str], *, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``command``, capture stdout+stderr, and on timeout kill it and every descendant, then fail."""
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
        cwd=cwd,
        start_new_session=True,  # its own process group, away from pytest's Ctrl-C
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        output, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(command)}\n{output}")
    finally:
        if proc.poll() is None:  # an exception (or Ctrl-C) in the test itself
            kill_tree(proc.pid)
            proc.wait()
    return subprocess.CompletedProcess(list(command), proc.returncode, output)


def invoke(*args: str | Path) -> Result:
    """``sld ARGS`` in this process (Typer's test runner): exit code and output, no subprocess."""
    return CliRunner().invoke(app, [str(a) for a in args])


def run_sld(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``sld ARGS`` in a subprocess (see :func:`run_process`)."""
    return run_process([SLD, *map(str, args)], timeout=timeout)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (found through /proc before anything dies, since
    orphans are re-parented)."""
    for victim in [*_descendants(pid), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # Field 4 of /proc/PID/stat is the parent; the command name (field 2) may hold spaces.
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
