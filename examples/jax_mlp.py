"""SLD under JAX: ``jax.grad`` and ``jax.jit`` straight through ``sld_core.sld_loss``.

What it shows: the core is written against the array API, so JAX arrays go in and JAX differentiates the
loss as written in the paper; no closed-form gradient and no adapter. The MLP, data, schedule and
printout are those of ``numpy_mlp.py`` (same digits split, same teacher/student sizes); only the
gradient comes from autodiff and the SGD step is a hand-written ``tree_map`` (no optax).

Two JAX details: ``check_targets=False`` (the label-range check needs concrete values, which a traced
array under ``jit`` does not have), and the epoch is a static argument reduced to its phase (see
:func:`phase_epoch`), so ``jit`` compiles two versions of a step instead of one per epoch.

    python examples/jax_mlp.py --epochs 60
"""

from __future__ import annotations

import functools
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from numpy_mlp import CE_ONLY, GAMMA_FRACTION, init_mlp, load_digits_split, parser, report, run_kwargs

import sld_core


def forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Logits ``(B, C)`` of the two-layer ReLU MLP."""
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def phase_epoch(epoch: int, gamma: float) -> int:
    """An epoch standing for ``epoch``'s phase. ``sld_loss`` reads the epoch only through
    ``pseudo_teacher_active(epoch, gamma)``, so one epoch on each side of ``gamma`` gives the same loss
    as any other in its phase, and ``jit`` (epoch is static) compiles twice instead of once per epoch."""
    after = math.floor(gamma) + 1
    return after if sld_core.pseudo_teacher_active(epoch, gamma) else after - 1


@functools.partial(jax.jit, static_argnames=("epoch", "config"))
def sgd_step(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, teacher_logits: jax.Array | None,
             lr: float, *, epoch: int, config: sld_core.SLDConfig) -> dict[str, jax.Array]:
    """One SGD step on the SLD loss; ``teacher_logits=None`` uses the student's own (CE_ONLY only)."""

    def loss(p: dict[str, jax.Array]) -> jax.Array:
        logits = forward(p, x)
        teacher = jax.lax.stop_gradient(logits) if teacher_logits is None else teacher_logits
        return sld_core.sld_loss(logits, teacher, y, epoch=epoch, config=config, check_targets=False).total

    grads = jax.grad(loss)(params)
    return jax.tree_util.tree_map(lambda w, g: w - lr * g, params, grads)


def train_mlp(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, *, epochs: int, lr: float,
              batch_size: int, config: sld_core.SLDConfig, teacher_logits: jax.Array | None = None,
              seed: int = 0) -> dict[str, jax.Array]:
    """Minibatch SGD, the same batches in the same order as ``numpy_mlp.train_mlp``."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        step_epoch = phase_epoch(epoch, config.gamma)
        for start in range(0, n - batch_size + 1, batch_size):  # one batch shape: one compile per phase
            idx = order[start:start + batch_size]
            teacher = None if teacher_logits is None else teacher_logits[idx]
            params = sgd_step(params, x[idx], y[idx], teacher, lr, epoch=step_epoch, config=config)
    return params


def accuracy(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float(jnp.mean(jnp.argmax(forward(params, x), axis=1) == y))


def run(*, epochs: int = 60, teacher_hidden: int = 128, student_hidden: int = 8, teacher_lr: float = 0.3,
        lr: float = 0.03, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Teacher, CE student and SLD student under JAX; the same keys as ``numpy_mlp.run``."""
    data = load_digits_split()
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    rng = np.random.default_rng(seed)
    n_in, n_out = data.x_train.shape[1], 10

    def on_device(host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jnp.asarray(v) for k, v in host.items()}

    common = dict(epochs=epochs, batch_size=batch_size, seed=seed)
    teacher = train_mlp(on_device(init_mlp(rng, (n_in, teacher_hidden, n_out))), x_train, y_train,
                        lr=teacher_lr, config=CE_ONLY, **common)
    teacher_logits = forward(teacher, x_train)
    student_init = init_mlp(rng, (n_in, student_hidden, n_out))
    gamma = round(GAMMA_FRACTION * epochs)
    student_ce = train_mlp(on_device(student_init), x_train, y_train, lr=lr, config=CE_ONLY, **common)
    student_sld = train_mlp(on_device(student_init), x_train, y_train, teacher_logits=teacher_logits, lr=lr,
                            config=sld_core.SLDConfig(gamma=gamma), **common)
    return {
        "teacher": accuracy(teacher, x_test, y_test),
        "student-ce": accuracy(student_ce, x_test, y_test),
        "student-sld": accuracy(student_sld, x_test, y_test),
        "teacher-train-error": float(jnp.mean(sld_core.swap_mask(teacher_logits, y_train))),
        "gamma": gamma,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the JAX example."""
    args = parser(__doc__).parse_args(argv)
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1; got {args.epochs}")
    start = time.perf_counter()
    results = run(**run_kwargs(args))
    report(results, f"jax ({jax.default_backend()})", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
