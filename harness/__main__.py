"""``python -m harness ...``: the ``sld`` command line, e.g. where the package is not installed, and
what each torchrun worker runs (``sld train --nproc N`` re-runs itself as
``python -m torch.distributed.run ... -m harness train ...``)."""

from __future__ import annotations

import os
import sys

from harness.cli import main


def _worker_main() -> None:
    """A torchrun worker: the sld command line itself, then a hard exit.

    The hard exit skips C++ static destructors: after the process group is destroyed, gloo's threads
    can still abort the interpreter's shutdown ("terminate called without an active exception", seen
    in about 1 of 7 two-process CPU runs), which torchrun reports as a failed worker although every
    epoch, checkpoint and log line was already written and flushed."""
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    sys.argv[0] = "sld"
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        _worker_main()
    else:
        main()
