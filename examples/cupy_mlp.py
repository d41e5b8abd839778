"""SLD on a GPU with CuPy: the NumPy example, unchanged, with ``xp = cupy``.

What it shows: ``sld_core`` takes its array namespace from the arrays it is given, so the hand-written
MLP, backward pass and SGD loop of ``numpy_mlp.py`` run on the GPU when their arrays are CuPy arrays; this
file only checks for a GPU and passes ``cupy`` to ``numpy_mlp.run``. Needs a CUDA device; without one it
says so and exits with status 1.

    python examples/cupy_mlp.py --epochs 60
"""

from __future__ import annotations

import sys

from numpy_mlp import cli


def require_gpu() -> object:
    """The ``cupy`` module, or ``SystemExit`` with the reason it cannot run here."""
    try:
        import cupy
    except ImportError as exc:
        raise SystemExit(
            f"cupy_mlp.py needs CuPy ({exc}); install cupy-cuda12x, or run numpy_mlp.py"
        ) from None
    if not cupy.cuda.is_available():
        raise SystemExit("cupy_mlp.py needs a CUDA GPU, and cupy.cuda.is_available() is False here; "
                         "run examples/numpy_mlp.py for the same example on the CPU")
    return cupy


def main(argv: list[str] | None = None) -> int:
    """Run the NumPy example on the GPU."""
    cupy = require_gpu()
    return cli(argv, cupy, f"cupy ({cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()})", __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
