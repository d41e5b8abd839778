"""A training step replayed as one CUDA graph (``--cuda-graphs``): :class:`StepGraph` runs a step
function eagerly for a few warm-up steps, then records it once into a graph and from then on only
copies each batch into the graph's input buffers and replays it, so the several hundred kernel
launches of forward, loss, backward and update become one (the augmentation, which makes the batch,
stays outside). :func:`check_cuda_graphs` refuses the settings a graph cannot replay.

What a replay needs, and where it is handled:

- Fixed input buffers: the graph reads the addresses it was recorded with, so every batch is copied
  into the same tensors (:meth:`StepGraph.run`); a batch of another shape (the last, short batch of an
  epoch) does not go through the graph at all (:func:`harness.train.step.train_step` runs it eagerly).
- Fixed outputs: a replay overwrites the tensors the recorded step returned; the caller copies what it
  keeps (``train_epoch`` clones its running sums from the first step's).
- Python numbers are baked in at recording: the epoch (SLD's pseudo-teacher switch, DKD's warm-up) and
  the learning rate (a float in SGD's update). They are part of the key the step passes; a new key
  records a new graph (once per epoch), after one eager step with the new key.
- No host sync inside the step: the loss runs with ``check_targets=False``, the non-finite check reads
  the loss outside the step, and the GradScaler of ``--amp fp16`` (it reads its inf check on the host
  before stepping the multi-tensor SGD) is refused, as are DDP (its buckets and collectives need their
  own warm-up and graph-safe NCCL settings) and ``--compile`` (``torch.compile`` keeps graphs of its own).
- Lazily created state must exist before recording, since creating it may copy between host and
  device, which a capture forbids: SGD's momentum buffers, cuBLAS handles, compiled Triton kernels, the
  loss's constant tables (cached per setting, so a new pseudo-teacher setting builds new ones). The
  first ``warmup_steps`` steps, and the first step after every key change, run eagerly on a side
  stream (as torch's whole-network capture recipe asks); they are real training steps. Autocast runs
  with its weight cache off inside the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol

import torch

from harness.config import ConfigError, TrainConfig

from .distributed import DistContext

__all__ = ["CudaGraphs", "GraphBackend", "StepGraph", "check_cuda_graphs"]


def check_cuda_graphs(config: TrainConfig, device: torch.device, dist: DistContext) -> None:
    """Raise :class:`ConfigError` (one line naming the conflict) when ``config.cuda_graphs`` cannot
    run on ``device`` with the rest of ``config``; nothing when it is off.

    Example
    -------
    >>> from harness.config import CEConfig
    >>> cfg = TrainConfig(student="resnet8", method="ce", loss=CEConfig(), cuda_graphs=True)
    >>> check_cuda_graphs(cfg, torch.device("cpu"), DistContext())
    Traceback (most recent call last):
    ...
    harness.config.ConfigError: cuda_graphs (--cuda-graphs) needs a CUDA device; this run is on cpu
    """
    if not config.cuda_graphs:
        return
    if device.type != "cuda":
        raise ConfigError(f"cuda_graphs (--cuda-graphs) needs a CUDA device; this run is on {device.type}")
    if config.amp == "fp16":
        raise ConfigError(
            "cuda_graphs (--cuda-graphs) cannot replay --amp fp16 (the GradScaler reads its inf check on "
            "the host every step); use --amp bf16 or off"
        )
    if config.compile:
        raise ConfigError("cuda_graphs (--cuda-graphs) and compile (--compile): choose one")
    if dist.active:
        raise ConfigError("cuda_graphs (--cuda-graphs) runs in a single process; drop --nproc / torchrun")


class GraphBackend(Protocol):
    """How :class:`StepGraph` warms up, records and replays; :class:`CudaGraphs` on a GPU."""

    def warmup(self) -> contextlib.AbstractContextManager[Any]:
        """Where a warm-up step runs."""
        ...

    def capture(self, fn: Callable[[], Any]) -> Any:
        """Record ``fn()`` (without running it) and return its outputs; replaces any earlier graph."""
        ...

    def replay(self) -> None:
        """Run the recorded work once more."""
        ...


class CudaGraphs:
    """:class:`GraphBackend` of ``torch.cuda``: warm-up on a side stream, ``torch.cuda.graph`` capture."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._graph: torch.cuda.CUDAGraph | None = None

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)  # the batch was made on the current stream
        with torch.cuda.stream(side):
            yield
        current.wait_stream(side)

    def capture(self, fn: Callable[[], Any]) -> Any:
        self._graph = None  # the old graph's memory pool is released before the new one is taken
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # synchronizes the device, then records on a stream of its own
            outputs = fn()
        self._graph = graph
        return outputs

    def replay(self) -> None:
        if self._graph is None:
            raise RuntimeError("replay() before capture()")
        self._graph.replay()


class StepGraph:
    """Run a step function eagerly ``warmup_steps`` times, then as a recorded graph.

    Parameters
    ----------
    backend
        :class:`CudaGraphs` (tests pass a stand-in that re-runs the function).
    warmup_steps
        Eager steps before the first recording (torch's recipe uses 3; at least 1 creates the
        optimizer's momentum buffers outside the graph).

    Example
    -------
    >>> graph = StepGraph(CudaGraphs(torch.device("cuda")))  # doctest: +SKIP
    >>> loss, stats = graph.run(step, (weak, strong, labels), key=(epoch, lr))  # doctest: +SKIP
    """

    def __init__(self, backend: GraphBackend, *, warmup_steps: int = 3) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1; got {warmup_steps}")
        self.backend = backend
        self.warmup_steps = warmup_steps
        self.warm = 0  # eager warm-up steps run so far
        self.eager_steps = 0  # steps run eagerly through run(): the warm-up, one per new key
        self.captures = 0  # graphs recorded so far
        self._key: Hashable = None  # what the current graph was recorded with
        self._eager_key: Hashable = None  # what the last eager step ran with
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._outputs: Any = None

    def run(self, step: Callable[..., Any], inputs: tuple[torch.Tensor, ...], *, key: Hashable) -> Any:
        """``step(*inputs)``: eagerly while warming up and at the first step of a new ``key`` (or new
        input shapes), else by replaying the graph recorded for ``key`` (recorded at its second step).
        ``key`` must hold every Python value the step's arithmetic depends on besides ``inputs``.

        Returns
        -------
        What ``step`` returns; after warm-up the same tensors every call, overwritten by the next one.
        """
        key = (key, tuple((x.shape, x.dtype, x.device) for x in inputs))
        if self.warm < self.warmup_steps:
            self.warm += 1
            return self._eager(step, inputs, key)
        if key != self._key and key != self._eager_key:
            return self._eager(step, inputs, key)
        if key != self._key:
            self._record(step, inputs, key)
        else:
            for buffer, x in zip(self._inputs, inputs):
                buffer.copy_(x)
        self.backend.replay()
        return self._outputs

    def _eager(self, step: Callable[..., Any], inputs: tuple[torch.Tensor, ...], key: Hashable) -> Any:
        with self.backend.warmup():
            outputs = step(*inputs)
        self.eager_steps += 1
        self._eager_key = key
        return outputs

    def _record(self, step: Callable[..., Any], inputs: tuple[torch.Tensor, ...], key: Hashable) -> None:
        same_shapes = self._key is not None and key[1] == self._key[1]
        if same_shapes:
            for buffer, x in zip(self._inputs, inputs):
                buffer.copy_(x)
        else:
            self._inputs = tuple(x.clone() for x in inputs)
        self._outputs = None
        buffers = self._inputs
        self._outputs = self.backend.capture(lambda: step(*buffers))
        self._key = key
        self.captures += 1
