"""SLD in a PyTorch Lightning ``LightningModule`` (``pip install lightning``, or the ``[lightning]``
extra of this package).

What it shows: the student is distilled inside ``training_step`` with ``backends.SLDLoss``; the teacher is
a frozen submodule in eval mode, run under ``torch.no_grad()``; every SLD term is logged. Lightning counts
epochs from 0 (``self.current_epoch``) and SLD from 1, so the step passes ``self.current_epoch + 1``:
with gamma = 150 the pseudo-teacher then joins in the 151st epoch, as in the paper. The lr schedule is
the official one (x0.1 after 150, 180 and 210 of 240 epochs) scaled to the run.

The digits data, the MLPs and the CE teacher come from ``torch_loop.py`` (the teacher is trained there
in a plain loop); the student trains through ``lightning.Trainer`` on the CPU.

    python examples/lightning_module.py --epochs 20
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch_loop import GAMMA_FRACTION, accuracy, cross_entropy, digits, fit, mlp

import sld_core
from backends import SLDLoss


class SLDDistillation(L.LightningModule):
    """A student distilled from a fixed teacher with SLD.

    Parameters
    ----------
    student, teacher
        ``nn.Module``s from images to logits; the teacher is frozen here.
    config
        The loss settings (``sld_core.SLDConfig``; gamma in epochs counted from 1).
    lr, milestones
        SGD (momentum 0.9) and the epochs after which the lr is multiplied by 0.1.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: sld_core.SLDConfig, *, lr: float,
                 milestones: tuple[int, ...]) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss = SLDLoss(config)
        self.lr = lr
        self.milestones = milestones

    def on_train_epoch_start(self) -> None:
        self.teacher.eval()  # Lightning puts every submodule in train mode; the teacher's BN/dropout stay off

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        terms = self.loss(self.student(images), teacher_logits, labels, epoch=self.current_epoch + 1)
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.as_dict().items()},
                      on_step=False, on_epoch=True)
        return terms.total

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.student.parameters(), lr=self.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.milestones), gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}  # stepped once per epoch


def run(*, epochs: int = 20, lr: float = 0.02, seed: int = 0) -> dict[str, float]:
    """The CE teacher (plain loop), then the SLD student through ``lightning.Trainer``; test accuracies."""
    L.seed_everything(seed, verbose=False)
    x_train, y_train, x_test, y_test = digits()
    teacher = fit(mlp(128), cross_entropy, x_train, y_train, epochs=epochs, lr=0.1, seed=seed)
    gamma = round(GAMMA_FRACTION * epochs)
    milestones = tuple(sorted({max(1, round(epochs * m / 240)) for m in (150, 180, 210)}))
    module = SLDDistillation(mlp(8), teacher, sld_core.SLDConfig(gamma=gamma), lr=lr, milestones=milestones)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {
        "teacher": accuracy(teacher.eval(), x_test, y_test),
        "student-sld": accuracy(module.student.eval(), x_test, y_test),
        "epochs-run": trainer.current_epoch,
        "gamma": gamma,
        "last-epoch-pseudo-term": logged["train/pseudo"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="epochs for the teacher and the student")
    p.add_argument("--lr", type=float, default=0.02, help="the student's SGD learning rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1; got {args.epochs}")
    torch.set_num_threads(1)  # models this small only wait on a second thread
    # The frozen teacher is in eval mode on purpose; Lightning warns about any module that is.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    start = time.perf_counter()
    results = run(epochs=args.epochs, lr=args.lr, seed=args.seed)
    print(f"lightning: {results['epochs-run']} epochs; SLD pseudo-teacher from epoch {results['gamma'] + 1}; "
          f"its term in the last epoch {results['last-epoch-pseudo-term']:.4f}")
    for name in ("teacher", "student-sld"):
        print(f"{name:<12} test accuracy {results[name]:.4f}")
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
