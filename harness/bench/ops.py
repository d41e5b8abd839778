"""Counting the ATen ops of a training step, phase by phase (:class:`OpCounter`): on a GPU every op
that is not a view or a bare allocation is (at least) one kernel launch, so the count is what a step
costs in launches, and it can be measured on any CPU.

Definition of the counts. :class:`OpCounter` is a ``TorchDispatchMode``: it sees every ATen op that
reaches the Python dispatch key, i.e. after autograd and after the composite ops that only call others
(``conv2d`` -> ``convolution``) were taken apart, forward, backward (autograd's engine runs inside the
mode) and optimizer alike; the ops an op calls inside its own kernel are not seen again. ``all`` counts
every such call; ``launching`` leaves out views and metadata ops (``view``, ``t``, ``detach``, ...:
``OpOverload.is_view``), bare allocations (``empty*``, ``resize_``), ``lift_fresh`` and the profiler's markers
(``profiler::_record_function_*``), none of which launches a kernel.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["PHASES", "OpCounter", "OpCounts", "launches"]

# The phases of a step, in order; "rest of the step" is whatever no hook claims (input layout, the
# teacher's input concatenation, the statistics for the epoch record, zero_grad and step markers).
PHASES = (
    "augmentation",
    "student forward",
    "teacher forward",
    "loss",
    "backward",
    "optimizer",
    "rest of the step",
)
# resize_ only sets sizes or allocates: a random draw into a preallocated row (``out=``) calls it.
_NOT_LAUNCHING = frozenset(
    {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "resize_"}
)


def launches(func: torch._ops.OpOverload) -> bool:
    """Whether ``func`` (an ATen overload) counts as launching work: not a view, not a bare allocation,
    not a profiler marker.

    >>> launches(torch.ops.aten.add.Tensor), launches(torch.ops.aten.view.default)
    (True, False)
    """
    if func.namespace == "profiler" or func.is_view:
        return False
    return func.overloadpacket.__name__ not in _NOT_LAUNCHING


@dataclass
class OpCounts:
    """Ops per phase: ``all`` and ``launching`` (see the module docstring), and the most frequent
    launching ops of each phase (for reading where they come from)."""

    all: dict[str, int] = field(default_factory=lambda: collections.Counter())
    launching: dict[str, int] = field(default_factory=lambda: collections.Counter())
    by_op: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    @property
    def total(self) -> int:
        return sum(self.all.values())

    @property
    def total_launching(self) -> int:
        return sum(self.launching.values())


class OpCounter(TorchDispatchMode):
    """Count ATen ops while active (``with counter:``), attributed to the innermost :meth:`phase`;
    ops autograd's engine runs count as ``"backward"``.

    Example
    -------
    >>> counter = OpCounter()
    >>> x = torch.ones(3)
    >>> with counter, counter.phase("loss"):
    ...     y = (x * 2).sum()
    >>> dict(counter.counts.all)
    {'loss': 2}
    """

    def __init__(self, default_phase: str = "rest of the step") -> None:
        super().__init__()
        self.counts = OpCounts()
        self._phases = [default_phase]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the ops inside the block to ``name``."""
        self._phases.append(name)
        try:
            yield
        finally:
            self._phases.pop()

    def enter(self, name: str) -> None:
        """:meth:`phase` as two calls, for hooks: ``enter`` ... :meth:`leave`."""
        self._phases.append(name)

    def leave(self) -> None:
        self._phases.pop()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # The engine runs backward nodes on this thread (CPU) or on its device thread, which inherits
        # the mode; a node being executed means this op is part of backward.
        phase = "backward" if torch._C._current_autograd_node() is not None else self._phases[-1]
        self.counts.all[phase] += 1
        if launches(func):
            self.counts.launching[phase] += 1
            self.counts.by_op[phase][func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
