"""Run the ``sld`` command line with one fault injected at a chosen point (for test_reliability.py).

    python tests/sld_with_fault.py WHERE SIGNAL N sld-args...

WHERE is ``step`` (just before this process's N-th training step), ``epoch-end`` (just after the N-th
epoch's metrics and checkpoints are written: between epochs) or ``checkpoint-write`` (halfway through
writing the N-th ``last.pt``: half the bytes are in the temporary file). SIGNAL (``SIGINT``, ``SIGTERM``,
``SIGKILL``) is then sent to this very process with ``os.kill``, which is what an outside ``kill`` at
that moment does; it only makes the moment exact.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Any


def main() -> None:
    where, signal_name, nth, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    sig = signal.Signals[signal_name]
    import torch

    import harness.train.loop as loop
    import harness.train.step as step_module

    count = 0

    def count_and_fire() -> None:
        nonlocal count
        count += 1
        if count == nth:
            os.kill(os.getpid(), sig)

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
    elif where == "checkpoint-write":
        real_save_checkpoint, real_torch_save = loop.save_checkpoint, torch.save
        armed = False

        def save_checkpoint(path: Any, payload: Any) -> None:
            nonlocal armed
            armed = os.path.basename(path) == "last.pt"
            try:
                real_save_checkpoint(path, payload)
            finally:
                armed = False

        def torch_save(obj: Any, f: Any, *a: Any, **k: Any) -> None:
            if not armed:
                return real_torch_save(obj, f, *a, **k)
            data = io.BytesIO()
            real_torch_save(obj, data, *a, **k)
            half = len(data.getvalue()) // 2
            f.write(data.getvalue()[:half])
            f.flush()
            count_and_fire()
            f.write(data.getvalue()[half:])

        loop.save_checkpoint = save_checkpoint
        torch.save = torch_save
    else:
        raise SystemExit(f"unknown fault point {where!r}")

    from harness.cli import main as sld

    sys.argv = ["sld", *args]
    sld()


if __name__ == "__main__":
    main()
