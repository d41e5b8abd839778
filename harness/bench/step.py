"""Time one training step of KD against one of SLD, side by side: what SLD costs over KD per step.

The step is the trainer's own: the dataset's augmentation of every view
(:class:`harness.data.resident.DeviceResidentData`), then :func:`harness.train.step.train_step`
(student forward and backward, teacher forward, the loss, the SGD update), so the ratio is what a run
sees, not the loss alone. The two methods alternate inside each repeat (KD, SLD, KD, SLD, ...) so that
a machine that speeds up or slows down during the measurement affects both alike; the median of the
repeats is reported. On a GPU every clock reading is preceded by a synchronize.

    python -m harness.bench.step               # resnet32x4 -> resnet8x4, batch 64, CPU
    python -m harness.bench.step --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.bench.timing import time_interleaved
from harness.config import DataConfig, KDConfig, OptimConfig, SLDConfig, TrainConfig
from harness.data.resident import DeviceResidentData
from harness.models import build_model
from harness.train.methods import METHODS
from harness.train.step import StepParts, train_step

__all__ = ["StepTimes", "measure_step_times", "training_step"]


@dataclass(frozen=True)
class StepTimes:
    """Median seconds per training step for KD and SLD, and what follows from them."""

    kd_s: float
    sld_s: float
    batch_size: int

    @property
    def ratio(self) -> float:
        """SLD step time / KD step time (the target is <= 1.03)."""
        return self.sld_s / self.kd_s

    @property
    def kd_images_per_s(self) -> float:
        return self.batch_size / self.kd_s

    @property
    def sld_images_per_s(self) -> float:
        return self.batch_size / self.sld_s


def measure_step_times(
    *,
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    batch_size: int = 64,
    views: int = 2,
    epoch: int = 151,
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> StepTimes:
    """Median time of one training step with KD and with SLD, interleaved.

    Parameters
    ----------
    teacher, student
        Model names (``harness.models.MODELS``); weights are random, which does not change the time.
    batch_size, views
        Images per step and views per image (2: weak + strong, the official SLD setting), the same
        for both methods so only the loss differs.
    epoch
        Epoch passed to the loss; the default 151 has SLD's pseudo-teacher term on (its costlier phase).
    repeats, warmup
        Timed steps per method, after ``warmup`` untimed ones each.
    device
        Where to run.

    Returns
    -------
    StepTimes
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    teacher_net = build_model(teacher).to(device).eval().requires_grad_(False)
    runners = {
        method: training_step(method, teacher_net, teacher=teacher, student=student, batch_size=batch_size,
                              views=views, epoch=epoch, device=device, seed=seed)
        for method in ("kd", "sld")
    }

    def sync() -> None:
        _sync(device)

    # KD and SLD round-robin, so a change in machine load hits both alike (sld bench's timing core)
    kd_times, sld_times = time_interleaved(
        [(runners["kd"], sync), (runners["sld"], sync)], repeats=repeats, warmup=warmup
    )
    return StepTimes(
        kd_s=statistics.median(kd_times), sld_s=statistics.median(sld_times), batch_size=batch_size
    )


def training_step(
    method: str,
    teacher_net: torch.nn.Module,
    *,
    teacher: str,
    student: str,
    batch_size: int = 64,
    views: int = 2,
    epoch: int = 151,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Callable[[], None]:
    """A function that runs one training step of a fresh ``student`` taught by ``teacher_net`` (the
    model named ``teacher``) with ``method`` ("kd" or "sld", default recipes) on one fixed random
    ``uint8`` batch: the views are augmented anew each call, as in training."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 32, 32, 3), dtype=torch.uint8, generator=generator,
                           device=device)
    labels = torch.randint(0, 100, (batch_size,), generator=generator, device=device)
    data = DeviceResidentData(images.cpu().numpy(), labels.cpu().numpy(), images[:2].cpu().numpy(),
                              labels[:2].cpu().numpy(), num_classes=100, device=device,
                              batch_size=batch_size, views=views)
    config = TrainConfig(
        student=student,
        teacher=teacher,
        method=method,
        loss=KDConfig() if method == "kd" else SLDConfig(),
        optim=OptimConfig(batch_size=batch_size),
        data=DataConfig(views=views),
    )
    net = build_model(student).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    parts = StepParts(net, teacher_net, METHODS[method], optimizer, scaler, config)

    def step() -> None:
        batch = next(data.train_batches(1, generator=generator))
        train_step(parts, batch, epoch=epoch)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads; 1 is steadier on a shared machine"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    times = measure_step_times(
        device=args.device, repeats=args.repeats, batch_size=args.batch_size, views=args.views
    )
    print(f"KD  step {1000 * times.kd_s:8.1f} ms  {times.kd_images_per_s:8.1f} img/s")
    print(f"SLD step {1000 * times.sld_s:8.1f} ms  {times.sld_images_per_s:8.1f} img/s")
    print(f"SLD/KD step-time ratio {times.ratio:.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()
