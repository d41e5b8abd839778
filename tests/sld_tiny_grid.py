"""Run the ``sld`` command line with every pair's models replaced by resnet8 (test_reproduce's
``tiny_pair_config``), as a process of its own: for tests that must signal a whole ``sld reproduce``
(test_jobs.py).

    python tests/sld_tiny_grid.py reproduce --pairs resnet56-resnet20 --jobs 2 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` importable from any directory


def main() -> None:
    import harness.reproduce
    from harness.cli import main as sld
    from tests.test_reproduce import tiny_pair_config

    harness.reproduce.pair_config = tiny_pair_config
    sys.argv = ["sld", *sys.argv[1:]]
    sld()


if __name__ == "__main__":
    main()
