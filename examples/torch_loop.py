"""SLD in your own PyTorch training loop: the loss module, and the swap in front of a loss of your own.

What it shows, on scikit-learn's bundled digits (nothing is downloaded; the data and split are
``numpy_mlp.py``'s):

- ``backends.SLDLoss``, an ``nn.Module``: ``SLDLoss(config)(student_logits, teacher_logits, labels, epoch)``
  returns the loss terms; ``.total`` is what to call ``backward()`` on (the fused autograd Function, with
  the closed-form gradient). Its ``epoch`` counts from 1, as the paper's gamma does; this loop counts from 0
  like most, so it passes ``epoch + 1``.
- ``sld_core.swap_logits``: the teacher fix alone, in front of any loss -- here a Hinton KD written in
  plain torch -- for a method of your own.

A wider MLP teacher is trained briefly with cross-entropy; then three narrow students from the same
initialization and batch order: cross-entropy alone, SLD, and "swap + KD". The printed accuracies show
that the mechanics work, not which loss is better (``sld demo`` is the comparison).

    python examples/torch_loop.py --epochs 20
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from numpy_mlp import load_digits_split
from torch import nn

import sld_core
from backends import SLDLoss

GAMMA_FRACTION = 150 / 240  # the official recipe's pseudo-teacher start, as a fraction of the run
# loss(student_logits, labels, teacher_logits, epoch counted from 1) -> 0-d tensor
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, int], torch.Tensor]


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits split as float32 / int64 tensors: x_train, y_train, x_test, y_test."""
    data = load_digits_split()
    return tuple(torch.from_numpy(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test))


def mlp(hidden: int) -> nn.Module:
    """64 pixels -> ``hidden`` ReLU units -> 10 logits."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def fit(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
        teacher_logits: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Minibatch SGD (momentum 0.9, batch 64) on ``loss_fn``; the batch order comes from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for epoch in range(epochs):  # 0, 1, ...: most loops (and Lightning) count from 0
        for index in torch.randperm(len(y), generator=generator).split(64):
            teacher = None if teacher_logits is None else teacher_logits[index]
            loss = loss_fn(model(x[index]), y[index], teacher, epoch + 1)  # SLD counts epochs from 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, epoch: int
                  ) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def sld(config: sld_core.SLDConfig) -> Loss:
    """The SLD loss through the module (labels are checked on every call, the default)."""
    module = SLDLoss(config)

    def loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, epoch: int
             ) -> torch.Tensor:
        return module(logits, teacher, labels, epoch).total

    return loss


def swap_then_kd(temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9) -> Loss:
    """A loss of your own behind the swap: Hinton KD against the teacher with its wrong rows fixed (the
    label's logit and the top logit trade places in every row whose top-1 is not the label)."""

    def loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, epoch: int
             ) -> torch.Tensor:
        fixed = sld_core.swap_logits(teacher, labels)  # a new tensor; the teacher's stay as they are
        log_p = F.log_softmax(fixed / temperature, dim=1)
        log_q = F.log_softmax(logits / temperature, dim=1)
        kd = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2
        return ce_weight * F.cross_entropy(logits, labels) + kd_weight * kd

    return loss


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(dim=1) == y).double().mean().item()


def run(*, epochs: int = 20, teacher_hidden: int = 128, student_hidden: int = 8, teacher_lr: float = 0.1,
        lr: float = 0.02, seed: int = 0) -> dict[str, float]:
    """Train the teacher, then the three students; returns their test accuracies, the teacher's
    training-set error (the rows the swap fixes) and gamma."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits()
    teacher = fit(mlp(teacher_hidden), cross_entropy, x_train, y_train, epochs=epochs, lr=teacher_lr,
                  seed=seed)
    with torch.no_grad():
        teacher_logits = teacher(x_train)  # fixed from here on: no augmentation in this example
    gamma = round(GAMMA_FRACTION * epochs)
    init = mlp(student_hidden).state_dict()  # every student starts from these weights
    results = {"teacher": accuracy(teacher, x_test, y_test)}
    students = {"student-ce": cross_entropy, "student-sld": sld(sld_core.SLDConfig(gamma=gamma)),
                "student-swap-kd": swap_then_kd()}
    for name, loss_fn in students.items():
        student = mlp(student_hidden)
        student.load_state_dict(init)
        fit(student, loss_fn, x_train, y_train, epochs=epochs, lr=lr, teacher_logits=teacher_logits,
            seed=seed)
        results[name] = accuracy(student, x_test, y_test)
    results["teacher-train-error"] = sld_core.swap_mask(teacher_logits, y_train).double().mean().item()
    results["gamma"] = gamma
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="epochs for the teacher and each student")
    p.add_argument("--lr", type=float, default=0.02, help="the students' SGD learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialization and batch order")
    args = p.parse_args(argv)
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1; got {args.epochs}")
    torch.set_num_threads(1)  # models this small only wait on a second thread
    start = time.perf_counter()
    results = run(epochs=args.epochs, lr=args.lr, seed=args.seed)
    print(f"torch: teacher train error (swap fires on) {results['teacher-train-error']:.4f}; "
          f"SLD pseudo-teacher from epoch {results['gamma'] + 1} (gamma = 150/240 of the run)")
    for name in ("teacher", "student-ce", "student-sld", "student-swap-kd"):
        print(f"{name:<16} test accuracy {results[name]:.4f}")
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
