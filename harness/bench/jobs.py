"""Runs per hour of a grid of tiny runs, one process per run at N at once (``sld reproduce --jobs N``)
against one at a time, and against the default of training them one after the other in one process.

Every setup trains the same grid: ``--runs`` seeds of one method on resnet8 (student and an untrained
resnet8 teacher) for ``--epochs`` epochs on a generated CIFAR-100 look-alike, each run into a fresh
directory through :func:`harness.jobs.run_pool` (what ``--jobs`` runs: ``sld train --config RUN/job.json``
processes, ``OMP_NUM_THREADS`` = cores // N unless set) or, for ``inproc``, through
:func:`harness.train.loop.train` in this process (what ``sld reproduce`` without ``--jobs`` does, on
torch's default thread count). The setups are timed in interleaved rounds (round 1: A B C, round 2:
A B C, ...) so that a change in the machine's load hits each alike; the load average is read before and
after every measurement. Reported: the median over the rounds.

Example
-------
``python -m harness.bench.jobs``                                      # inproc, --jobs 1, --jobs 2
``python -m harness.bench.jobs --setups 1,2,1x1 --runs 6 --rounds 3``  # 1x1: --jobs 1, one thread
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import TrainConfig, with_overrides
from harness.data.cifar import load_cifar100
from harness.data.synthetic import write_cifar100_archive
from harness.jobs import available_cores, prepare_job, run_pool
from harness.models import build_model
from harness.recipes import pair_config

__all__ = ["GridThroughput", "Setup", "grid_throughput", "main", "parse_setups", "tiny_grid"]

PAIR = "resnet56-resnet20"  # its recipe; both models are replaced by resnet8
MODEL = "resnet8"


@dataclass(frozen=True)
class Setup:
    """How the grid is trained: ``jobs`` processes at once (None: in this process, one after the other),
    each on ``threads`` torch threads (None: the default of that way)."""

    jobs: int | None
    threads: int | None = None

    @property
    def name(self) -> str:
        if self.jobs is None:
            return "inproc" if self.threads is None else f"inprocx{self.threads}"
        return f"--jobs {self.jobs}" + ("" if self.threads is None else f" x{self.threads} thread(s)")


def parse_setups(text: str) -> list[Setup]:
    """``"inproc,1,2,1x1"``: in-process, --jobs 1, --jobs 2, --jobs 1 on one thread each.

    >>> [s.name for s in parse_setups("inproc,2,1x1")]
    ['inproc', '--jobs 2', '--jobs 1 x1 thread(s)']
    """
    setups = []
    for item in (part.strip().lower() for part in text.split(",")):
        jobs, _, threads = item.partition("x")
        try:
            setups.append(Setup(None if jobs == "inproc" else int(jobs), int(threads) if threads else None))
        except ValueError:
            raise ValueError(f"a setup is inproc or N, optionally xT (threads); got {item!r}") from None
    return setups


@dataclass(frozen=True)
class GridThroughput:
    """One setup's runs per hour: the median round, every round, and the load average around each."""

    setup: Setup
    runs: int  # per round
    runs_per_hour: float
    rounds: tuple[float, ...]
    loads: tuple[tuple[float, float], ...]  # 1-minute load average before and after each round


def tiny_grid(
    root: Path, *, runs: int, epochs: int, method: str, train_images: int, test_images: int
) -> list[TrainConfig]:
    """``runs`` configs (seeds 0..runs-1) of ``method`` on resnet8, with a generated data set and an
    untrained resnet8 teacher in ``root``; their ``out_dir`` is set per measurement."""
    data = root / "cifar"
    md5 = write_cifar100_archive(data / "cifar-100-python.tar.gz", n_train=train_images, n_test=test_images)
    load_cifar100(data, download=False, md5=md5)  # extracted once, not in every timed run
    teacher = root / "teacher.pt"
    torch.manual_seed(123)
    torch.save({"model": build_model(MODEL).state_dict()}, teacher)
    base = with_overrides(
        pair_config(PAIR, method),
        {
            "student": MODEL,
            "teacher": MODEL if method != "ce" else None,
            "teacher_checkpoint": str(teacher) if method != "ce" else None,
            "optim.epochs": epochs,
            "data.data_dir": str(data),
            "data.download": False,
        },
    )
    return [with_overrides(base, {"seed": seed}) for seed in range(runs)]


def grid_throughput(
    configs: Sequence[TrainConfig], setups: Sequence[Setup], *, rounds: int, root: Path
) -> list[GridThroughput]:
    """Time ``configs`` under each of ``setups`` in ``rounds`` interleaved rounds (module docstring).

    Raises
    ------
    RuntimeError
        A run failed (the message names it and its log).
    """
    from rich.console import Console

    quiet = Console(quiet=True)
    rates: dict[Setup, list[float]] = {s: [] for s in setups}
    loads: dict[Setup, list[tuple[float, float]]] = {s: [] for s in setups}
    for r in range(rounds):
        for setup in setups:
            where = root / f"round{r}" / setup.name.replace(" ", "_").replace("-", "")
            grid = [with_overrides(c, {"out_dir": str(where / f"seed{c.seed}")}) for c in configs]
            before = os.getloadavg()[0]
            start = time.perf_counter()
            _train(grid, setup, quiet)
            seconds = time.perf_counter() - start
            loads[setup].append((before, os.getloadavg()[0]))
            rates[setup].append(3600 * len(grid) / seconds)
    return [
        GridThroughput(s, len(configs), statistics.median(rates[s]), tuple(rates[s]), tuple(loads[s]))
        for s in setups
    ]


def _train(grid: Sequence[TrainConfig], setup: Setup, console: Any) -> None:
    if setup.jobs is None:
        from harness.train.loop import train

        previous = torch.get_num_threads()
        torch.set_num_threads(setup.threads or previous)
        try:
            for config in grid:
                train(config, "cpu", console=console)
        finally:
            torch.set_num_threads(previous)
        return
    jobs = [prepare_job(config, os.path.basename(config.out_dir)) for config in grid]
    outcomes = run_pool(jobs, slots=setup.jobs, devices=["cpu"], threads=setup.threads, console=console)
    failed = [o.describe() for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError("; ".join(failed))


def main(argv: Sequence[str] | None = None) -> list[GridThroughput]:
    """``python -m harness.bench.jobs``: print runs per hour per setup (``--help`` for options)."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench.jobs",
        description="Runs per hour of a grid of tiny CPU runs: --jobs N processes vs one at a time.",
    )
    parser.add_argument(
        "--setups", default="inproc,1,2", help="comma-separated: inproc, N or NxT (default inproc,1,2)"
    )
    parser.add_argument("--runs", type=int, default=4, help="runs in the grid (default 4)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--method", default="sld")
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--test-images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per setup (default 2)")
    args = parser.parse_args(argv)
    setups = parse_setups(args.setups)
    with tempfile.TemporaryDirectory(prefix="sld-jobs-bench-") as tmp:
        configs = tiny_grid(
            Path(tmp),
            runs=args.runs,
            epochs=args.epochs,
            method=args.method,
            train_images=args.train_images,
            test_images=args.test_images,
        )
        results = grid_throughput(configs, setups, rounds=args.rounds, root=Path(tmp))
    omp = os.environ.get("OMP_NUM_THREADS")
    print(
        f"{args.runs} runs of {args.method} on {MODEL} ({args.epochs} epochs, {args.train_images} train / "
        f"{args.test_images} test images), {available_cores()} cores, OMP_NUM_THREADS={omp or 'unset'}:"
    )
    print(f"{'setup':<24}  {'runs/hour':>9}  rounds (load before -> after)")
    for result in results:
        spread = ", ".join(
            f"{rate:.0f} ({a:.1f}->{b:.1f})" for rate, (a, b) in zip(result.rounds, result.loads)
        )
        print(f"{result.setup.name:<24}  {result.runs_per_hour:>9.0f}  {spread}")
    return results


if __name__ == "__main__":
    main()
