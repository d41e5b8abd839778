"""Data-parallel training with PyTorch's own engine: ``torchrun`` + ``DistributedDataParallel``.

``sld train`` / ``sld train-teacher`` run unchanged under ``torchrun`` (or ``--nproc N``, which
re-executes the command under ``python -m torch.distributed.run``: ``harness.commands._common``). Each
process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, joins the process group (NCCL on CUDA, gloo on
the CPU) and trains on ``cuda:LOCAL_RANK`` (or the CPU). :func:`harness.train.loop.train` needs no extra
argument: it asks :func:`context` whether a process group is up. This module holds the process group
and :class:`DistContext` only.

How the work is split (the loop does it; this module holds the pieces):

* ``--batch-size`` is the GLOBAL batch. Every rank draws the same seeded permutation, cuts the same
  global batches and keeps its ``tensor_split(world_size)`` share (sizes differ by at most one row in
  the last, short batch). Each rank augments the whole global batch with the shared generator and
  keeps its rows, so every image gets exactly the crop, flip and RandAugment draws it would get in a
  single process, whatever the world size (at CIFAR batch sizes the augmentation kernels are
  launch-bound, so the extra rows cost next to nothing on a GPU).
* DDP averages gradients over ranks. A rank's loss is its shard's mean times ``world * rows / global
  rows`` (exactly 1 for equal shards), so the averaged gradient is the gradient of the global mean.
* Loss sums, correct and swap counts are all-reduced, and evaluation is sharded and all-reduced, so the
  logged numbers are those of the global batch.
* Only rank 0 prints and writes files; the others wait for it (:meth:`DistContext.on_main`), and learn
  if it failed, so no rank hangs at a barrier.
* BatchNorm is per rank, like the official code: each shard is normalized by its own statistics, and
  DDP copies rank 0's running statistics to every rank before each forward. So 1 and N processes
  differ in the BN batch statistics (``--sync-bn`` uses global ones, CUDA only).

What does and does not depend on the world size (tests/test_ddp.py checks it with gloo on the CPU):

* identical by construction: the permutation and the batches, every image's augmentation, the
  teacher's logits, the loss as a global-batch mean, the lr schedule, the RNG state in checkpoints
  (so a run resumes bit for bit on the same world size and continues the same streams on another);
* equal up to float rounding: gradients (summed per shard, then averaged), logged sums and
  accuracies (all-reduced);
* different: BatchNorm statistics in training mode (per shard of ``batch / world`` rows; running
  statistics from rank 0's shard), and a last short batch of fewer than ``2 * world`` rows is dropped
  (one process drops only a single row). A one-process run that normalizes each shard separately
  matches two processes to float rounding; a plain one-process run does not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from harness.config import ConfigError
from harness.data.base import shard_slice

from .device import as_device
from .interrupt import DistributedAbort

__all__ = [
    "DistContext",
    "DistributedAbort",
    "check_global_batch",
    "context",
    "setup",
    "teardown",
    "torchrun_env",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the process group; a world of one when there is none.

    ``device`` is where collective tensors live (NCCL reduces CUDA tensors, gloo CPU ones).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of ``rows`` (``tensor_split``: sizes differ by at most one)."""
        return rows.tensor_split(self.world_size)[self.rank] if self.active else rows

    def shard_slice(self, num_rows: int) -> slice:
        """The rows :meth:`shard` keeps of a length-``num_rows`` tensor, as a slice."""
        return shard_slice(num_rows, self.rank, self.world_size)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor; ``values`` is left alone)."""
        return self._all_reduce(values, tdist.ReduceOp.SUM)

    def all_reduce_min(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise minimum over ranks (a new tensor)."""
        return self._all_reduce(values, tdist.ReduceOp.MIN)

    def _all_reduce(self, values: torch.Tensor, op: Any) -> torch.Tensor:
        if not self.active:
            return values
        reduced = values.clone()  # all_reduce writes in place; the caller's tensor stays as it was
        tdist.all_reduce(reduced, op=op)
        return reduced

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a host sync; call it at the same place on every rank)."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that evaluation on
        any rank sees the model rank 0 checkpoints."""
        if self.active:
            for buffer in module.buffers():
                tdist.broadcast(buffer, src=0)

    def on_main(self, write: Any) -> Any:
        """Run ``write()`` on rank 0 only, while the others wait; every rank learns whether it failed.

        Rank 0 re-raises its own error; the other ranks raise :class:`DistributedAbort`, so a full disk
        on rank 0 stops the whole job instead of leaving the others at a barrier. Returns what
        ``write`` returned on rank 0 (``None`` elsewhere).
        """
        result, error = None, None
        if self.is_main:
            try:
                result = write()
            except Exception as exc:  # re-raised below, after the other ranks have been told
                error = exc
        if self.any(error is not None) and error is None:
            raise DistributedAbort("rank 0 failed while writing the run's files; its error says why")
        if error is not None:
            raise error
        return result


def context(device: torch.device) -> DistContext:
    """The current process group as a :class:`DistContext` (a world of one if none is initialized).

    ``device`` is the training device; under NCCL the collective tensors must live on it.
    """
    if not (tdist.is_available() and tdist.is_initialized()):
        return DistContext(device=device)
    return DistContext(rank=tdist.get_rank(), world_size=tdist.get_world_size(), device=device)


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the environment torchrun sets, or ``None`` outside it."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        raise ConfigError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers; "
            "start distributed runs with torchrun (or --nproc N)"
        ) from None


def setup(device: str | torch.device | None) -> tuple[torch.device, bool]:
    """Pick this process's device and, under torchrun with more than one process, join the group.

    Parameters
    ----------
    device
        ``--device`` as given (checked by :func:`harness.train.device.as_device`): ``None`` (CUDA if
        available, else CPU), a type (``"cuda"``, ``"cpu"``) or, in a single process only, an indexed
        device (``"cuda:1"``). Under torchrun a CUDA rank always uses ``cuda:LOCAL_RANK``.

    Returns
    -------
    (device, joined)
        ``joined``: this call initialized the process group (NCCL on CUDA, gloo otherwise), so the
        caller should :func:`teardown` it; False in a single process or when a group already exists.
    """
    chosen = as_device(device, label="--device")
    env = torchrun_env()
    if env is None or env[1] == 1:
        return chosen, False
    rank, world_size, local_rank = env
    if chosen.index is not None:
        raise ConfigError(
            f"--device {device} names one device, but each of the {world_size} processes uses its own "
            f"(cuda:LOCAL_RANK); pass --device {chosen.type}"
        )
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {rank} has LOCAL_RANK {local_rank} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use --nproc <= {torch.cuda.device_count()}"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if tdist.is_initialized():  # e.g. a teacher trained from inside an already distributed run
        return chosen, False
    if chosen.type == "cuda":
        tdist.init_process_group("nccl", device_id=chosen)  # device_id: NCCL connects eagerly, no guess
    else:
        tdist.init_process_group("gloo")
    return chosen, True


def teardown() -> None:
    """Leave the process group, if one was joined."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def check_global_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global ``batch_size``; a :class:`ConfigError` unless it divides evenly
    into shards of at least two rows (BatchNorm cannot normalize one)."""
    if batch_size % world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch and must be divisible by the number of "
            f"processes ({world_size}); try {batch_size - batch_size % world_size or world_size * 2}"
        )
    if batch_size // world_size < 2:
        raise ConfigError(
            f"--batch-size {batch_size} over {world_size} processes leaves {batch_size // world_size} "
            "row per process; BatchNorm needs at least 2"
        )
    return batch_size // world_size
