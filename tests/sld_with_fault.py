"""Run the ``sld`` command line with one fault injected at a chosen point (for test_reliability.py and
test_run_integrity.py).

    python tests/sld_with_fault.py WHERE SIGNAL N sld-args...

WHERE is one of

* ``step``: just before this process's N-th training step;
* ``epoch-end``: just after the N-th epoch's checkpoints and metrics are written (between epochs);
* ``during-write:FILE``: halfway through the N-th write of the run file FILE (``last.pt``, ``best.pt``,
  ``metrics.jsonl``, ``config.json``, ``teacher.json``, ``summary.json``): half its bytes are in the
  temporary file, the file itself is still the old one;
* ``after-write:FILE``: just after the N-th write of FILE landed (e.g. ``after-write:last.pt`` is the
  moment between an epoch's ``last.pt`` and its ``best.pt``);
* ``checkpoint-write``: the same as ``during-write:last.pt``.

SIGNAL (``SIGINT``, ``SIGTERM``, ``SIGKILL``, ``SIGSTOP``) is then sent to this very process with
``os.kill``, which is what an outside ``kill`` at that moment does; it only makes the moment exact.
``parent:SIGNAL`` sends it to the parent process instead (e.g. ``parent:SIGUSR2``: a cluster's
preemption warning to the submitit job that watches this run). With ``SLD_FAULT_ONCE=PATH`` in the
environment the fault fires only if PATH does not exist yet, and creates it: a requeued or resumed
process then runs undisturbed.
Every run file is written through ``harness.runs.atomic_writer``, whose commit is one ``os.replace``
of the temporary file onto FILE, so the write boundaries are found there.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    where, signal_name, nth, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    target_parent = signal_name.startswith("parent:")
    sig = signal.Signals[signal_name.removeprefix("parent:")]
    once = os.environ.get("SLD_FAULT_ONCE")
    if where == "checkpoint-write":
        where = "during-write:last.pt"

    import harness.train.loop as loop
    import harness.train.step as step_module

    count = 0

    def count_and_fire() -> None:
        nonlocal count
        count += 1
        if count == nth:
            if once is not None:
                if Path(once).exists():
                    return
                Path(once).touch()
            os.kill(os.getppid() if target_parent else os.getpid(), sig)

    if where == "step":
        real_step = step_module.train_step

        def step(*a: Any, **k: Any) -> Any:
            count_and_fire()
            return real_step(*a, **k)

        step_module.train_step = step
    elif where == "epoch-end":
        real_write = loop._write_epoch

        def write_epoch(*a: Any, **k: Any) -> None:
            real_write(*a, **k)
            count_and_fire()

        loop._write_epoch = write_epoch
    elif where.startswith(("during-write:", "after-write:")):
        moment, name = where.split(":", 1)
        real_replace = os.replace

        def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if Path(dst).name != name:
                return real_replace(src, dst, *a, **k)
            if moment == "after-write":
                real_replace(src, dst, *a, **k)
                count_and_fire()
                return None
            whole = Path(src).read_bytes()
            with open(src, "r+b") as f:  # what a kill halfway through the write leaves in the temp file
                f.truncate(len(whole) // 2)
            count_and_fire()
            Path(src).write_bytes(whole)  # still alive (SIGINT/SIGTERM only set a flag): finish the write
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    else:
        raise SystemExit(f"unknown fault point {where!r}")

    from harness.cli import main as sld

    sys.argv = ["sld", *args]
    sld()


if __name__ == "__main__":
    main()
