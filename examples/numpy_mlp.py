"""SLD without a deep-learning framework: a NumPy MLP distilled by hand.

What it shows: ``sld_core.sld_loss_and_grad`` returns the exact gradient of the SLD loss with respect to
the student's logits in closed form, so any array library can train with it; the rest is ordinary
backpropagation through a two-layer MLP and plain SGD, written out below.

The data is scikit-learn's bundled ``load_digits`` (1797 8x8 handwritten digits, 10 classes), so nothing is
downloaded. A wider MLP teacher is trained briefly with cross-entropy in this script; then two narrow
students from the same initialization: one on cross-entropy alone, one with SLD from the fixed teacher.
The SLD pseudo-teacher joins after 150/240 of the run, the official schedule scaled to its length.

The printed accuracies show that the mechanics work, not which loss is better: both students share one
SGD learning rate, and SLD's gradient (six temperatures, each weighted by T) is about 20x cross-entropy's,
so at a rate where SLD is stable CE is the slower learner. ``sld demo`` is the fairer comparison.

``run(xp, ...)`` takes the array namespace, so ``cupy_mlp.py`` runs this same code on a GPU.

    python examples/numpy_mlp.py --epochs 60
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import sld_core

CE_ONLY = sld_core.SLDConfig(ce_weight=1.0, kd_weight=0.0, pseudo_teacher=False)
"""Plain cross-entropy: with ``kd_weight=0`` the SLD loss and its gradient are exactly CE's, so the
teacher and the CE baseline train through the same core function as the SLD student."""

GAMMA_FRACTION = 150 / 240  # the official recipe's pseudo-teacher start, as a fraction of the run


@dataclass(frozen=True)
class Digits:
    """A fixed train/test split of ``load_digits``; features scaled to [0, 1], float32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 1 / 3) -> Digits:
    """scikit-learn's bundled 8x8 digits, shuffled with ``seed`` and split; no network."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x = (x[order] / 16.0).astype(np.float32)  # pixel counts are 0..16
    y = y[order].astype(np.int64)
    n_test = int(len(y) * test_fraction)
    return Digits(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def init_mlp(rng: np.random.Generator, sizes: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """He-initialized ``in -> hidden -> out`` weights, as host NumPy arrays (moved by the caller)."""
    n_in, n_hidden, n_out = sizes
    return {
        "w1": (rng.standard_normal((n_in, n_hidden)) * math.sqrt(2 / n_in)).astype(np.float32),
        "b1": np.zeros(n_hidden, np.float32),
        "w2": (rng.standard_normal((n_hidden, n_out)) * math.sqrt(2 / n_hidden)).astype(np.float32),
        "b2": np.zeros(n_out, np.float32),
    }


def forward(params: dict[str, Any], x: Any, xp: Any) -> tuple[Any, Any]:
    """Logits ``(B, C)`` and the hidden pre-activation (kept for the backward pass)."""
    pre = x @ params["w1"] + params["b1"]
    return xp.maximum(pre, 0) @ params["w2"] + params["b2"], pre


def backward(params: dict[str, Any], x: Any, pre: Any, grad_logits: Any, xp: Any) -> dict[str, Any]:
    """Gradients of the loss w.r.t. every parameter, given its gradient w.r.t. the logits."""
    hidden = xp.maximum(pre, 0)
    grad_hidden = (grad_logits @ params["w2"].T) * (pre > 0)  # ReLU passes gradient where it was open
    return {
        "w1": x.T @ grad_hidden,
        "b1": xp.sum(grad_hidden, axis=0),
        "w2": hidden.T @ grad_logits,
        "b2": xp.sum(grad_logits, axis=0),
    }


def train_mlp(xp: Any, params: dict[str, Any], x: Any, y: Any, *, epochs: int, lr: float, batch_size: int,
              config: sld_core.SLDConfig, teacher_logits: Any = None, seed: int = 0) -> dict[str, Any]:
    """Minibatch SGD on ``config``'s SLD loss; ``teacher_logits=None`` means the student's own logits
    stand in (only valid with ``kd_weight=0``, i.e. :data:`CE_ONLY`)."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    for epoch in range(1, epochs + 1):  # sld_core counts epochs from 1
        order = xp.asarray(rng.permutation(n))
        # The ragged last batch is dropped: jax_mlp.py jits one batch shape and keeps the same batches.
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            logits, pre = forward(params, x[idx], xp)
            teacher = logits if teacher_logits is None else teacher_logits[idx]
            # check_targets=False: digits labels are 0..9 by construction, and the check syncs a GPU.
            _, grad_logits = sld_core.sld_loss_and_grad(logits, teacher, y[idx], epoch=epoch, config=config,
                                                        check_targets=False)
            grads = backward(params, x[idx], pre, grad_logits, xp)
            params = {k: params[k] - lr * grads[k] for k in params}
    return params


def accuracy(params: dict[str, Any], x: Any, y: Any, xp: Any) -> float:
    """Top-1 accuracy in [0, 1]."""
    logits, _ = forward(params, x, xp)
    return float((xp.argmax(logits, axis=1) == y).mean())


def run(xp: Any, *, epochs: int = 60, teacher_hidden: int = 128, student_hidden: int = 8,
        teacher_lr: float = 0.3, lr: float = 0.03, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Train the teacher, then the CE and SLD students, with array namespace ``xp`` (numpy or cupy).

    Returns
    -------
    dict
        Test accuracies ``teacher``, ``student-ce``, ``student-sld``; ``teacher-train-error`` (how often the
        teacher's swap fires on the training set) and ``gamma``.
    """
    data = load_digits_split()
    x_train, y_train = xp.asarray(data.x_train), xp.asarray(data.y_train)
    x_test, y_test = xp.asarray(data.x_test), xp.asarray(data.y_test)
    rng = np.random.default_rng(seed)
    n_in, n_out = data.x_train.shape[1], 10

    def on_device(host: dict[str, np.ndarray]) -> dict[str, Any]:
        return {k: xp.asarray(v) for k, v in host.items()}

    common = dict(epochs=epochs, batch_size=batch_size, seed=seed)
    teacher = train_mlp(xp, on_device(init_mlp(rng, (n_in, teacher_hidden, n_out))), x_train, y_train,
                        lr=teacher_lr, config=CE_ONLY, **common)
    teacher_logits, _ = forward(teacher, x_train, xp)  # fixed from here on
    student_init = init_mlp(rng, (n_in, student_hidden, n_out))  # both students start identical
    gamma = round(GAMMA_FRACTION * epochs)
    student_ce = train_mlp(xp, on_device(student_init), x_train, y_train, lr=lr, config=CE_ONLY, **common)
    student_sld = train_mlp(xp, on_device(student_init), x_train, y_train, teacher_logits=teacher_logits,
                            lr=lr, config=sld_core.SLDConfig(gamma=gamma), **common)
    swapped = sld_core.swap_mask(teacher_logits, y_train)
    return {
        "teacher": accuracy(teacher, x_test, y_test, xp),
        "student-ce": accuracy(student_ce, x_test, y_test, xp),
        "student-sld": accuracy(student_sld, x_test, y_test, xp),
        "teacher-train-error": float(swapped.mean()),
        "gamma": gamma,
    }


def parser(description: str | None) -> argparse.ArgumentParser:
    """The options every example takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60, help="epochs for the teacher and each student")
    p.add_argument("--teacher-hidden", type=int, default=128, help="teacher MLP width")
    p.add_argument("--student-hidden", type=int, default=8, help="student MLP width (narrow: room to learn)")
    p.add_argument("--teacher-lr", type=float, default=0.3, help="the teacher's SGD learning rate (CE)")
    p.add_argument("--lr", type=float, default=0.03,
                   help="both students' SGD learning rate; above ~0.04 SLD's larger gradient can diverge")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seeds the initialization and batch order")
    return p


def report(results: dict[str, float], library: str, seconds: float) -> None:
    """Print the results, one ``<model> test accuracy <value>`` line each (tests parse these)."""
    print(f"{library}: teacher train error (swap fires on) {results['teacher-train-error']:.4f}; "
          f"SLD pseudo-teacher from epoch {results['gamma'] + 1} (gamma = 150/240 of the run)")
    for name in ("teacher", "student-ce", "student-sld"):
        print(f"{name:<12} test accuracy {results[name]:.4f}")
    print(f"wall time {seconds:.1f} s")


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`run` from parsed options (every option is one)."""
    return dict(vars(args))


def cli(argv: list[str] | None, xp: Any, library: str, description: str | None) -> int:
    """Parse ``argv``, :func:`run` on ``xp`` and print the report; shared with ``cupy_mlp.py``."""
    args = parser(description).parse_args(argv)
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1; got {args.epochs}")
    start = time.perf_counter()
    results = run(xp, **run_kwargs(args))
    report(results, library, time.perf_counter() - start)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the NumPy example."""
    return cli(argv, np, "numpy", __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
