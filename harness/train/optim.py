"""The optimizer and its schedule, as every run builds them (:func:`build_optimizer`), and loading a
checkpoint's optimizer state without losing the multi-tensor update (:func:`load_optimizer_state`)."""

from __future__ import annotations

from typing import Any

import torch

from harness.config import OptimConfig

__all__ = ["build_optimizer", "load_optimizer_state"]

# torch's multi-tensor SGD: a handful of ``_foreach_*`` ops for all parameters instead of three or four
# ops per parameter (~130 ops per step for resnet8x4), with the same arithmetic per element (bit-equal
# to the per-parameter loop on the CPU: tests/test_step.py). CUDA already defaulted to it; the CPU did
# not. ``fused=True`` (one kernel) rounds differently on the CPU (an FMA), so it is not used.
_IMPLEMENTATION = {"foreach": True, "fused": None}


def build_optimizer(
    student: torch.nn.Module, optim: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (multi-tensor) and its multistep schedule, stepped once per epoch.

    Parameters
    ----------
    student
        The module whose parameters are trained (not a DDP / compile wrapper: the state dict keys of
        the optimizer do not depend on it).
    optim
        A run's ``config.optim``: lr, momentum, nesterov, weight decay and the schedule.

    Returns
    -------
    (optimizer, scheduler)

    Example
    -------
    >>> net = torch.nn.Linear(3, 2)
    >>> opt, sched = build_optimizer(net, OptimConfig())
    >>> opt.param_groups[0]["foreach"], sched.milestones
    (True, Counter({150: 1, 180: 1, 210: 1}))
    """
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
        **_IMPLEMENTATION,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(optim.lr_milestones), gamma=optim.lr_decay
    )
    return optimizer, scheduler


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping the update implementation :func:`build_optimizer`
    chose: a param group's saved ``foreach`` / ``fused`` flags would otherwise replace it (a checkpoint
    written before the multi-tensor update would resume on the per-parameter loop). The flags change
    the speed only, never the numbers.

    Parameters
    ----------
    optimizer
        Built by :func:`build_optimizer`.
    state
        ``optimizer.state_dict()`` of a checkpoint.

    Example
    -------
    >>> net = torch.nn.Linear(3, 2)
    >>> old = torch.optim.SGD(net.parameters(), lr=0.1).state_dict()  # foreach None
    >>> new = torch.optim.SGD(net.parameters(), lr=0.1, foreach=True)
    >>> load_optimizer_state(new, old)
    >>> new.param_groups[0]["foreach"]
    True
    """
    chosen = [{key: group.get(key) for key in _IMPLEMENTATION} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, chosen):
        group.update(flags)
