"""How long one epoch of device-resident CIFAR training batches takes, for this checkout and, side by
side, for another one (``--baseline PATH``, e.g. a ``git worktree`` of an older commit).

An epoch is what the trainer asks of the data: a seeded permutation cut into global batches, each
batch's ``uint8`` rows taken from the images held on the device, and every view (weak, strong) drawn
from the run's generator. It is timed in one of two forms, whichever the checkout has:

``resident``
    ``DeviceResidentData.train_batches`` (``harness.data.resident``), the trainer's call today;
``loop``
    the data lines of the epoch loop before that class existed (``harness.train.loop`` at 15189b9):
    ``epoch_batches``, ``train_x[index]``, then ``weak_view`` / ``strong_view`` and the rank's rows.
    This checkout runs it too (with its own ``epoch_batches`` and views), as a control that separates
    the cost of the restructuring from changes to the augmentation itself.

Every measurement runs in a fresh subprocess whose ``PYTHONPATH`` is the checkout timed (working
directory: a temporary folder, so nothing else is imported), on ``--threads`` torch threads
(``OMP_NUM_THREADS`` too). The subprocesses alternate round-robin (the order rotates each round), so a
change in the load of a shared machine hits all of them alike. Each one loads the data (untimed), runs
one untimed epoch that also digests every batch (SHA-256 of the views and labels: equal digests mean
bit-identical batches for the same seed), then times ``--epochs`` epochs. Reported: the median epoch per
configuration and the ratios of the medians.

Example
-------
``python -m harness.bench.resident --threads 1``
``git worktree add /tmp/old 15189b9 && python -m harness.bench.resident --baseline /tmp/old --rounds 5``

The module runs as that worker under the other checkout's ``PYTHONPATH`` too, so it imports the
harness only inside functions and nothing newer than the oldest checkout it times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Config", "Measurement", "compare", "main"]

HERE = Path(__file__).resolve()
THIS_CHECKOUT = HERE.parents[2]  # harness/bench/resident.py -> the repository root
_WORKER_FLAG = "--worker"


@dataclass(frozen=True)
class Config:
    """One configuration timed: a checkout and the form of the epoch it is timed in."""

    name: str  # shown in the table
    checkout: Path
    form: str  # "resident" or "loop" (module docstring)


@dataclass(frozen=True)
class Measurement:
    """One configuration's epochs, over every round."""

    config: Config
    epoch_s: tuple[float, ...]  # every timed epoch, round after round
    digest: str  # of the untimed first epoch's batches (the same in every round, checked)
    batches: int
    images: int  # per epoch, all views counted once (rows of the global batches)
    rounds: int  # subprocesses; epoch_s holds len(epoch_s) // rounds epochs of each

    @property
    def median_s(self) -> float:
        return statistics.median(self.epoch_s)

    def round_medians(self) -> list[float]:
        """The median epoch of each round (subprocess), in round order."""
        per = len(self.epoch_s) // self.rounds
        return [statistics.median(self.epoch_s[r * per : (r + 1) * per]) for r in range(self.rounds)]


def compare(
    configs: Sequence[Config],
    data_dir: Path,
    *,
    rounds: int = 5,
    epochs: int = 2,
    batch_size: int = 64,
    views: int = 2,
    threads: int = 1,
    seed: int = 0,
    augment: str = "full",
) -> list[Measurement]:
    """Time one epoch of training batches of every configuration, round-robin in subprocesses.

    Parameters
    ----------
    configs
        The configurations; round ``r`` starts with configuration ``r % len(configs)``.
    data_dir
        A folder with an extracted CIFAR-100-format archive (``cifar-100-python/``).
    rounds, epochs
        Subprocesses per configuration, and timed epochs in each.
    batch_size, views
        The global batch, and 1 (weak) or 2 (weak + strong) views.
    threads
        torch threads of every subprocess.
    seed
        Seeds the generator the epochs draw from (the same in every configuration).
    augment
        ``"full"``: the official views. Check switches, applied in every subprocess: ``"no-cutout"``
        replaces ``harness.data.augment.cutout`` by the identity, for comparing checkouts whose Cutout
        draws differently (the rest of the batch then stays comparable bit for bit);
        ``"normalize-only"`` makes every view ``to_float_normalized`` alone (no random draws), which
        leaves the batching's own cost.

    Returns
    -------
    list of Measurement
        One per configuration, in the order given.

    Raises
    ------
    RuntimeError
        A subprocess failed (its output is in the message), or a configuration's digest changed
        between rounds.

    Examples
    --------
    >>> compare([Config("now", THIS_CHECKOUT, "resident")], Path("data"), rounds=1)  # doctest: +SKIP
    """
    if rounds < 1 or epochs < 1:
        raise ValueError(f"need rounds >= 1 and epochs >= 1, got {rounds} and {epochs}")
    job = {
        "data_dir": str(Path(data_dir).resolve()),
        "batch_size": batch_size,
        "views": views,
        "threads": threads,
        "seed": seed,
        "epochs": epochs,
        "augment": augment,
    }
    results: list[list[dict[str, Any]]] = [[] for _ in configs]
    for r in range(rounds):
        for k in range(len(configs)):
            i = (r + k) % len(configs)
            results[i].append(_run_worker(configs[i], job))
    measurements = []
    for config, runs in zip(configs, results):
        digests = {run["digest"] for run in runs}
        if len(digests) != 1:
            raise RuntimeError(f"{config.name}: the same seed gave different batches in different rounds")
        measurements.append(
            Measurement(
                config,
                tuple(t for run in runs for t in run["epoch_s"]),
                digests.pop(),
                runs[0]["batches"],
                runs[0]["images"],
                rounds,
            )
        )
    return measurements


def _run_worker(config: Config, job: dict[str, Any]) -> dict[str, Any]:
    checkout = Path(config.checkout).resolve()
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(job["threads"]))
    env["MKL_NUM_THREADS"] = str(job["threads"])
    payload = json.dumps({**job, "form": config.form, "checkout": str(checkout)})
    # run_path, not -m: the module need not exist in the checkout timed.
    bootstrap = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    with tempfile.TemporaryDirectory(prefix="sld-resident-") as cwd:
        done = subprocess.run(
            [sys.executable, "-c", bootstrap, str(HERE), _WORKER_FLAG, payload],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{config.name} ({checkout}) failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- the worker (subprocess)


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    import harness

    where = Path(harness.__file__).resolve()
    if Path(job["checkout"]) not in where.parents:
        raise RuntimeError(f"imported the harness from {where}, not from {job['checkout']}")
    _check_switches(job["augment"])
    epoch = _epoch_fn(job)
    generator = torch.Generator().manual_seed(job["seed"])
    digest, batches, images = hashlib.sha256(), 0, 0
    for tensors in epoch(generator):  # the untimed first epoch
        for t in tensors:
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.contiguous().numpy().tobytes())
        batches += 1
        images += tensors[-1].shape[0]
    times = []
    for _ in range(job["epochs"]):
        start = time.perf_counter()
        for _tensors in epoch(generator):
            pass  # on the CPU every view is computed by the time the batch is yielded
        times.append(time.perf_counter() - start)
    return {"digest": digest.hexdigest()[:16], "batches": batches, "images": images, "epoch_s": times}


def _check_switches(augment: str) -> None:
    """Apply ``compare``'s ``augment`` switch to the views of this process's harness."""
    import importlib.util

    import harness.data.augment as views

    holders = [views]
    if importlib.util.find_spec("harness.data.resident") is not None:
        import harness.data.resident

        holders.append(harness.data.resident)  # it imported the views by name
    if augment == "no-cutout":
        views.cutout = lambda x, generator=None: x  # strong_view looks the name up at each call
        # both views at once draw Cutout's numbers inside: the two calls instead
        both = lambda x, generator=None: (views.weak_view(x, generator), views.strong_view(x, generator))  # noqa: E731
        for module in holders:
            if hasattr(module, "weak_and_strong_views"):
                module.weak_and_strong_views = both
    elif augment == "normalize-only":
        for module in holders:
            for name in ("weak_view", "strong_view"):
                setattr(module, name, lambda x, generator=None: views.to_float_normalized(x))
            if hasattr(module, "weak_and_strong_views"):
                module.weak_and_strong_views = lambda x, generator=None: (views.to_float_normalized(x),) * 2
    elif augment != "full":
        raise ValueError(f"augment must be 'full', 'no-cutout' or 'normalize-only', got {augment!r}")


def _epoch_fn(job: dict[str, Any]) -> Callable[[Any], Iterator[tuple[Any, ...]]]:
    """``epoch(generator)`` -> each batch as ``(*views, labels)``, in the form ``job["form"]``."""
    import torch

    cpu = torch.device("cpu")
    batch_size, views = job["batch_size"], job["views"]
    import importlib.util

    if importlib.util.find_spec("harness.data.resident") is not None:  # the layered harness
        from harness.config import DataConfig
        from harness.data.resident import epoch_batches
        from harness.train.data import load_data

        data = load_data(
            DataConfig(data_dir=job["data_dir"], download=False, views=views), cpu, batch_size=batch_size
        )
    else:  # 15189b9: the loop held the batching and loaded CIFAR itself
        if job["form"] == "resident":
            raise RuntimeError("this checkout has no harness.data.resident; time it with form 'loop'")
        from harness.train.config import DataConfig  # type: ignore[no-redef]
        from harness.train.loop import (  # type: ignore[no-redef,attr-defined]
            epoch_batches,
            load_data,
        )

        data = load_data(DataConfig(data_dir=job["data_dir"], download=False, views=views), cpu)
    if job["form"] == "resident":

        def resident(generator: torch.Generator) -> Iterator[tuple[Any, ...]]:
            for batch in data.train_batches(1, generator=generator):
                yield (*batch.views, batch.labels)

        return resident
    if job["form"] != "loop":
        raise ValueError(f"form must be 'resident' or 'loop', got {job['form']!r}")
    from harness.data.augment import strong_view, weak_view

    view_fns = (weak_view, strong_view)[:views]
    rows = slice(None)  # one process: DistContext.shard_slice's share is the whole batch

    def loop(generator: torch.Generator) -> Iterator[tuple[Any, ...]]:
        # 15189b9's _train_epoch (index, train_x[index], train_y[index]) and train_step (each view of
        # the whole batch, then this rank's rows), in that order of generator draws.
        for index in epoch_batches(data.train_x.shape[0], batch_size, generator, min_rows=2):
            images, labels = data.train_x[index], data.train_y[index]
            yield (*(view(images, generator)[rows] for view in view_fns), labels[rows])

    return loop


# ---------------------------------------------------------------------------------------------- the CLI


def _revision(checkout: Path) -> str:
    """The commit a checkout is at (short hash, ``+changes`` when its tracked files differ from it)."""
    from harness.train.provenance import git_commit

    commit, dirty = git_commit(checkout.resolve())
    return "not a git checkout" if commit == "unknown" else commit[:7] + ("+changes" if dirty else "")


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def _report(measurements: Sequence[Measurement]) -> list[str]:
    lines = [f"{'configuration':<34} {'median s':>9} {'images/s':>9}  digest            epochs (s)"]
    for m in measurements:
        spread = ", ".join(f"{t:.3f}" for t in m.epoch_s)
        lines.append(
            f"{m.config.name:<34} {m.median_s:>9.3f} {m.images / m.median_s:>9.0f}  {m.digest}  {spread}"
        )
    for i, m in enumerate(measurements):
        for earlier in measurements[:i]:
            same = "bit-identical batches" if m.digest == earlier.digest else "different batches"
            ratio = m.median_s / earlier.median_s
            # rounds pair up in time: the ratio within each round, less exposed to a load that drifts
            paired = [a / b for a, b in zip(m.round_medians(), earlier.round_medians())]
            lines.append(
                f"{m.config.name} / {earlier.config.name}: {ratio:.3f} (per round: median "
                f"{statistics.median(paired):.3f}, {min(paired):.3f}..{max(paired):.3f}; {same})"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> list[Measurement]:
    """``python -m harness.bench.resident``: print the table (``--help`` for the options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_WORKER_FLAG]:
        print(json.dumps(_worker(json.loads(argv[1]))))
        return []
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench.resident",
        description="Seconds per epoch of device-resident CIFAR training batches (CPU), this checkout "
        "against --baseline, round-robin in subprocesses.",
    )
    parser.add_argument("--baseline", type=Path, help="another checkout to time first (its own form)")
    parser.add_argument("--baseline-form", default="loop", choices=("loop", "resident"))
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="skip this checkout's run of the loop form (the restructuring's control)",
    )
    parser.add_argument("--data-dir", type=Path, help="extracted CIFAR-100 archive (default: generated)")
    parser.add_argument("--images", type=int, default=5000, help="generated training images (default 5000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=2, choices=(1, 2))
    parser.add_argument("--rounds", type=int, default=5, help="subprocesses per configuration (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per subprocess (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per subprocess (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--augment",
        default="full",
        choices=("full", "no-cutout", "normalize-only"),
        help="check switches: no-cutout (Cutout is the identity everywhere, for bit-identity across "
        "Cutout's change), normalize-only (every view is the normalization alone: the batching's cost)",
    )
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.images < 2 or args.batch_size < 2 or args.threads < 1:
        parser.error(
            f"need --images >= 2, --batch-size >= 2 and --threads >= 1, got "
            f"{args.images}, {args.batch_size} and {args.threads}"
        )
    if args.baseline is not None and not (args.baseline / "harness").is_dir():
        parser.error(f"--baseline {args.baseline} is not a checkout of this project (no harness/ folder)")

    configs = []
    if args.baseline is not None:
        configs.append(Config(f"baseline {args.baseline_form}", args.baseline, args.baseline_form))
    if not args.no_control:
        configs.append(Config("this checkout, loop form", THIS_CHECKOUT, "loop"))
    configs.append(Config("this checkout, resident", THIS_CHECKOUT, "resident"))

    before = _load_average()
    with tempfile.TemporaryDirectory(prefix="sld-resident-data-") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            from harness.data.cifar import load_cifar100
            from harness.data.synthetic import write_cifar100_archive

            data_dir = Path(tmp)
            md5 = write_cifar100_archive(data_dir / "cifar-100-python.tar.gz", n_train=args.images, n_test=2)
            load_cifar100(data_dir, download=False, md5=md5)  # extracts: the workers skip the checksum
        measurements = compare(
            configs,
            data_dir,
            rounds=args.rounds,
            epochs=args.epochs,
            batch_size=args.batch_size,
            views=args.views,
            threads=args.threads,
            seed=args.seed,
            augment=args.augment,
        )
    after = _load_average()
    m = measurements[0]
    print(
        f"one epoch of {m.batches} batches ({m.images} images, batch {args.batch_size}, {args.views} "
        f"view(s), augment {args.augment}), {args.threads} thread(s), {args.rounds} rounds x {args.epochs} "
        f"epochs, seed {args.seed}"
    )
    revisions = {c.checkout: _revision(c.checkout) for c in configs}
    print("checkouts: " + ", ".join(f"{c.name} at {revisions[c.checkout]}" for c in configs))
    print(f"before: {before}")
    for line in _report(measurements):
        print(line)
    print(f"after: {after}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "load_before": before,
                    "load_after": after,
                    # no paths: they are this machine's; the revisions say what was timed
                    "args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
                    "measurements": [
                        {
                            **asdict(m),
                            "median_s": m.median_s,
                            "config": {
                                "name": m.config.name,
                                "form": m.config.form,
                                "revision": revisions[m.config.checkout],
                            },
                        }
                        for m in measurements
                    ],
                },
                indent=1,
            )
        )
    return measurements


if __name__ == "__main__":
    main()
