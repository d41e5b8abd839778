"""The training step with fewer launches: one teacher forward over both views (bit-identical to one per
view on the CPU), the multi-tensor SGD (bit-identical to torch's per-parameter loop, within rounding of
a float64 update written out here), the whole step against a step written plainly here, the CUDA-graph
bookkeeping (a CPU stand-in that replays the recorded function; the real graph against the eager step
where CUDA runs) and the op counter of ``python -m harness.bench.step``."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rich.console import Console  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from harness.bench.ops import OpCounter  # noqa: E402
from harness.bench.step import count_step_ops, training_step  # noqa: E402
from harness.config import (  # noqa: E402
    CEConfig,
    ConfigError,
    DKDConfig,
    KDConfig,
    OptimConfig,
    SLDConfig,
    TrainConfig,
)
from harness.data.resident import DeviceResidentData  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.runs import RunDir  # noqa: E402
from harness.train.distributed import DistContext  # noqa: E402
from harness.train.evaluate import autocast  # noqa: E402
from harness.train.graphs import CudaGraphs, StepGraph, check_cuda_graphs  # noqa: E402
from harness.train.interrupt import StopSignals  # noqa: E402
from harness.train.methods import METHODS, StepLogits, processed_rows  # noqa: E402
from harness.train.optim import build_optimizer, load_optimizer_state  # noqa: E402
from harness.train.step import (  # noqa: E402
    StepParts,
    StepStats,
    step_stats,
    teacher_forward,
    train_epoch,
    train_step,
)
from sld_core import swap_mask  # noqa: E402

from .train_helpers import invoke, one_thread  # noqa: E402, F401 (autouse: one torch thread)

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def eval_teacher(name: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialized model whose BatchNorm running statistics are not the identity."""
    torch.manual_seed(seed)
    net = build_model(name).train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    return net.eval().requires_grad_(False)


def plain_config(amp: str = "off", channels_last: bool = False, **optim: Any) -> TrainConfig:
    return TrainConfig(
        student="resnet8",
        teacher="resnet8",
        method="sld",
        loss=SLDConfig(gamma=1),  # pseudo-teacher on from epoch 2
        optim=OptimConfig(batch_size=8, **optim),
        amp=amp,
        channels_last=channels_last,
    )


# ------------------------------------------------------------------------------ teacher: one forward


@pytest.mark.parametrize("layout", ["nchw", "channels-last", "bf16-autocast"])
@pytest.mark.parametrize("model", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV2"])
def test_one_teacher_forward_over_both_views_is_bit_identical_to_two(model: str, layout: str) -> None:
    net = eval_teacher(model)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(16, 3, 32, 32, generator=g) for _ in range(2)]
    if layout != "nchw":
        net = net.to(memory_format=torch.channels_last)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    amp = "bf16" if layout == "bf16-autocast" else "off"
    with torch.no_grad(), autocast(amp, CPU):
        both = teacher_forward(net, views, at_once=True)
        separately = [net(v) for v in views]
    assert both.shape == (32, 100)
    assert both.dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)
    for got, want in zip(both.split(16), separately):
        assert torch.equal(got, want)


def test_one_teacher_forward_at_the_recipe_batch_is_bit_identical() -> None:
    net = eval_teacher("resnet8")
    views = [torch.randn(64, 3, 32, 32) for _ in range(2)]
    with torch.no_grad():
        assert torch.equal(teacher_forward(net, views, at_once=True), torch.cat([net(v) for v in views]))


def test_a_teacher_in_training_mode_runs_each_view_on_its_own() -> None:
    net = build_model("resnet8").train()  # BatchNorm normalizes with the batch's own statistics
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32) * 3 + 1]
    with torch.no_grad():
        got = teacher_forward(net, views, at_once=True)
        separately = torch.cat([net(v) for v in views])
        mixed = net(torch.cat(views))
    assert torch.equal(got, separately)
    assert not torch.allclose(mixed, separately)  # what one forward would have done in training mode


# --------------------------------------------------------------------------- SGD: multi-tensor update


@pytest.mark.parametrize(
    ("momentum", "weight_decay", "nesterov"),
    [(0.9, 5e-4, False), (0.9, 5e-4, True), (0.9, 0.0, True), (0.0, 5e-4, False), (0.0, 0.0, False)],
)
def test_multi_tensor_sgd_equals_the_per_parameter_loop(
    momentum: float, weight_decay: float, nesterov: bool
) -> None:
    torch.manual_seed(0)
    start = [p.detach().clone() for p in build_model("resnet8").parameters()]
    lr, steps = 0.05, 6
    g = torch.Generator().manual_seed(2)
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(steps)]
    config = TrainConfig(
        student="resnet8",
        method="ce",
        loss=CEConfig(),
        optim=OptimConfig(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov),
    )

    def run(make: Callable[[torch.nn.Module], torch.optim.Optimizer]) -> list[torch.Tensor]:
        params = torch.nn.ParameterList([torch.nn.Parameter(p.clone()) for p in start])
        optimizer = make(params)
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            optimizer.step()
        return [p.detach() for p in params]

    fast = run(lambda module: build_optimizer(module, config.optim)[0])
    loop = run(
        lambda module: torch.optim.SGD(
            module.parameters(),
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            foreach=False,
        )
    )
    for a, b in zip(fast, loop):
        assert torch.equal(a, b)

    # the update written out in float64: d = g + wd p; b = m b + d (b = d at the first step);
    # p -= lr (d + m b) with nesterov, else lr b
    for p32, p0, index in zip(fast, start, range(len(start))):
        p, buf = p0.double(), None
        for step_grads in grads:
            d = step_grads[index].double() + weight_decay * p
            if momentum:
                buf = d if buf is None else momentum * buf + d
                d = d + momentum * buf if nesterov else buf
            p = p - lr * d
        # float32 rounding of ~6 steps of O(1) updates
        assert (p32.double() - p).abs().max() <= 1e-6 * (1 + p.abs().max())


def test_resuming_keeps_the_multi_tensor_update() -> None:
    net = torch.nn.Linear(3, 2)
    config = plain_config()
    optimizer, _ = build_optimizer(net, config.optim)
    old_style = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, foreach=False).state_dict()
    load_optimizer_state(optimizer, old_style)
    assert optimizer.param_groups[0]["foreach"] is True
    assert optimizer.param_groups[0]["momentum"] == 0.9  # the saved hyperparameters still load


# ------------------------------------------------------------------------------ the step, written out


def _batches(n: int, rows: int, seed: int) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            [torch.randn(rows, 3, 32, 32, generator=g) for _ in range(2)],
            torch.randint(0, 100, (rows,), generator=g),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("teacher_at_once", [True, None], ids=["teacher-at-once", "teacher-cpu-default"])
@pytest.mark.parametrize(("amp", "channels_last"), [("off", False), ("off", True), ("bf16", False)])
def test_train_step_equals_the_step_written_out(amp: str, channels_last: bool, teacher_at_once: bool) -> None:
    """Per view: student forward, teacher forward, SLD summed over the views, backward, torch's
    per-parameter SGD (the step before this change) -- bit for bit, parameters, BatchNorm statistics
    and every logged sum."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    config = plain_config(amp, channels_last)
    teacher = eval_teacher("resnet8", seed=3).to(memory_format=memory_format)
    torch.manual_seed(4)
    student = build_model("resnet8").to(memory_format=memory_format).train()
    reference = copy.deepcopy(student)
    optimizer, _ = build_optimizer(student, config.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    parts = StepParts(
        student, teacher, METHODS["sld"], optimizer, scaler, config, teacher_at_once=teacher_at_once
    )
    plain_sgd = torch.optim.SGD(
        reference.parameters(), lr=config.optim.lr, momentum=0.9, weight_decay=5e-4, foreach=False
    )
    for epoch, (views, labels) in enumerate(_batches(3, 8, seed=5), start=1):
        loss, step_stats, _ = train_step(parts, _batch(views, labels), epoch=epoch)
        stats = step_stats.as_dict()

        plain_sgd.zero_grad(set_to_none=True)
        students, teachers = [], []
        for view in views:
            x = view.contiguous(memory_format=memory_format)
            with autocast(amp, CPU):
                students.append(reference(x))
                with torch.no_grad():
                    teachers.append(teacher(x))
        terms = METHODS["sld"](
            StepLogits(tuple(students), tuple(teachers), labels), epoch=epoch, config=config.loss
        )
        terms["loss_sld"].backward()
        plain_sgd.step()

        assert torch.equal(loss, terms["loss_sld"].detach())
        want = {name: value.detach() * 8 for name, value in terms.items()}
        want["loss"] = terms["loss_sld"].detach() * 8
        want["teacher_swaps"] = sum(int((t.argmax(1) != labels).sum()) for t in teachers)
        want["student_swaps"] = sum(int((s.argmax(1) != labels).sum()) for s in students)
        want["train_correct"] = int((students[0].argmax(1) == labels).sum())
        assert set(stats) == set(want)
        for name, value in want.items():
            assert torch.equal(stats[name], torch.as_tensor(value, dtype=stats[name].dtype)), name
        for (name, a), b in zip(student.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(a, b), name


def _batch(views: list[torch.Tensor], labels: torch.Tensor) -> Any:
    from harness.data.base import Batch

    return Batch(views=tuple(views), labels=labels, global_rows=labels.shape[0])


# --------------------------------------------------------------------------- the step's statistics


def _stats_as_before(
    terms: dict[str, torch.Tensor],
    loss: torch.Tensor,
    students: tuple[torch.Tensor, ...],
    teachers: tuple[torch.Tensor, ...] | None,
    labels: torch.Tensor,
    processed: torch.Tensor | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The step's statistics as they were computed before they became one vector: one op or more per
    term, per count and per view."""
    rows = labels.shape[0]
    stats = {name: value.detach() * rows for name, value in terms.items()}
    view_labels = labels.repeat(len(students))
    if teachers is not None:
        stats["teacher_swaps"] = swap_mask(torch.cat(teachers), view_labels, check_targets=False).sum()
        if processed is not None:
            stats["teacher_processed"] = processed.sum()
    student_wrong = swap_mask(torch.cat([s.detach() for s in students]), view_labels, check_targets=False)
    stats["student_swaps"] = student_wrong.sum()
    stats["train_correct"] = (~student_wrong[:rows]).sum()
    stats["loss"] = loss.detach() * rows

    def all_finite(logits: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        if not logits:
            return torch.ones((), dtype=torch.bool)
        return torch.isfinite(torch.stack([z.detach().sum(dtype=torch.float32) for z in logits]).sum())

    return stats, torch.stack([all_finite(students), all_finite(teachers)])


def _random_logits(
    g: torch.Generator, rows: int, views: int, dtype: torch.dtype, labels: torch.Tensor
) -> list[torch.Tensor]:
    """Random ``(rows, 10)`` logits per view, about half the rows made right (the label on top)."""
    out = []
    for _ in range(views):
        z = torch.randn(rows, 10, generator=g, dtype=torch.float64)
        right = torch.rand(rows, generator=g) < 0.5
        z[right, labels[right]] += 10.0
        out.append(z.to(dtype))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    ("method", "loss", "views", "fault"),
    [
        ("sld", SLDConfig(gamma=1), 2, None),
        ("sld", SLDConfig(teacher_processing="conditional_swap", swap_threshold=0.5), 2, None),
        ("sld", SLDConfig(gamma=1), 2, "student-nan"),
        ("sld", SLDConfig(gamma=1), 2, "teacher-inf"),
        ("kd", KDConfig(), 1, None),
        ("dkd", DKDConfig(), 2, "teacher-inf"),
        ("ce", CEConfig(), 2, None),
        ("ce", CEConfig(), 1, "student-nan"),
    ],
)
def test_step_stats_equal_the_statistics_computed_term_by_term(
    method: str, loss: Any, views: int, fault: str | None, dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(7)
    teacher = method != "ce"
    for batch in range(3):
        labels = torch.randint(0, 10, (8,), generator=g)
        students = tuple(z.requires_grad_() for z in _random_logits(g, 8, views, dtype, labels))
        teachers = tuple(_random_logits(g, 8, views, dtype, labels)) if teacher else None
        if fault == "student-nan" and batch > 0:
            students[-1].data[batch, 3] = float("nan")
        if fault == "teacher-inf" and batch > 0:
            teachers[0][batch, 1] = float("inf")
        terms = METHODS[method](StepLogits(students, teachers, labels), epoch=2, config=loss)
        total = sum(value for name, value in terms.items() if name.startswith("loss"))
        teacher_rows = torch.cat(teachers) if teacher else None
        processed = processed_rows(loss, teacher_rows, labels) if teacher else None
        assert (processed is not None) == (
            loss.teacher_processing == "conditional_swap" if teacher else False
        )
        stats, finite = step_stats(terms, total, students, teacher_rows, labels, processed=processed)
        want, want_finite = _stats_as_before(terms, total, students, teachers, labels, processed)
        got = stats.as_dict()
        assert list(got) == list(want)  # the record's order too
        for name, value in want.items():  # bit for bit, NaN where the old sum was NaN, same dtype
            torch.testing.assert_close(got[name], value, rtol=0, atol=0, equal_nan=True, msg=name)
        assert torch.equal(finite, want_finite)
        if fault is not None:
            assert finite.tolist() == ([batch == 0, True] if fault == "student-nan" else [True, batch == 0])
        wrong = [(z.argmax(1) != labels).sum() for z in students]
        assert 0 < sum(wrong) < views * 8  # some predictions right, some wrong
        assert stats.loss.item() == pytest.approx(got["loss"].item(), nan_ok=True)


@pytest.mark.parametrize("method", ["sld", "ce"], ids=["sld-conditional-swap", "ce-no-teacher"])
def test_an_epochs_sums_are_the_sums_of_its_steps(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_epoch adds two vectors per step; its record equals the per-step values added up name by
    name in their own dtype (the accumulation before), then made Python floats in one transfer."""
    import harness.train.step as step_module

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, 20)
    data = DeviceResidentData(
        images, labels, images[:4], labels[:4], num_classes=100, device=CPU, batch_size=8
    )
    optim = OptimConfig(batch_size=8, epochs=1)
    if method == "sld":
        loss = SLDConfig(gamma=1, teacher_processing="conditional_swap", swap_threshold=0.9)
        config = TrainConfig(student="resnet8", teacher="resnet8", method="sld", loss=loss, optim=optim)
        teacher = eval_teacher("resnet8")
    else:
        config, teacher = TrainConfig(student="resnet8", method="ce", loss=CEConfig(), optim=optim), None
    torch.manual_seed(4)
    student = build_model("resnet8")
    optimizer, _ = build_optimizer(student, config.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    parts = StepParts(student, teacher, METHODS[config.method], optimizer, scaler, config)
    steps: list[dict[str, torch.Tensor]] = []
    real_step = step_module.train_step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        out = real_step(*args, **kwargs)
        steps.append({name: value.clone() for name, value in out[1].as_dict().items()})
        return out

    monkeypatch.setattr(step_module, "train_step", recording_step)
    logged: list[tuple[int, dict[str, float]]] = []
    with StopSignals() as stop:
        generator = torch.Generator().manual_seed(0)
        record = train_epoch(
            parts, data, 1, generator, Console(quiet=True), RunDir("unused"), stop,
            on_log=lambda step, values: logged.append((step, values)),
        )  # fmt: skip
    assert len(steps) == 3  # 8, 8 and a short 4
    sums = dict(steps[0])
    for values in steps[1:]:
        for name, value in values.items():
            sums[name] = sums[name] + value
    want = {name: float(value.float()) for name, value in sums.items()} | {"rows": 20}
    assert list(record) == list(want)
    assert record == want
    counts = ("teacher_swaps", "teacher_processed", "student_swaps", "train_correct")
    assert all(record[name] == int(record[name]) for name in counts if name in record)
    assert ("teacher_processed" in record) == (teacher is not None)
    assert logged[0] == (1, {"loss": float(steps[0]["loss"]) / 8, "lr": config.optim.lr})  # the first step


# --------------------------------------------------------------------------------------- CUDA graphs


class ReplayingBackend:
    """Stands in for CUDA graphs on the CPU. ``capture`` records the function without its effects (the
    model's and the optimizer's state are put back, as a capture runs nothing); ``replay`` runs the
    recorded function again and writes its results into the recorded output tensors in place, as a
    graph does. So a step that read anything but its input buffers, an epoch baked in at recording
    and never re-recorded, or a caller that kept an output past the next step all show up as wrong
    numbers here; a learning rate that changed since the recording is an error (a graph would replay
    the recorded one)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.fn: Callable[[], Any] | None = None

    def warmup(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def capture(self, fn: Callable[[], Any]) -> Any:
        saved = [t.clone() for t in self._state()]
        outputs = fn()
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        self.fn, self.outputs, self.lrs = fn, outputs, self._lrs()
        return outputs

    def replay(self) -> None:
        assert self.fn is not None and self._lrs() == self.lrs
        for recorded, value in zip(_tensors(self.outputs), _tensors(self.fn()), strict=True):
            recorded.copy_(value)

    def _state(self) -> list[torch.Tensor]:
        buffers = [s["momentum_buffer"] for s in self.optimizer.state.values() if "momentum_buffer" in s]
        return [*self.model.state_dict().values(), *buffers]

    def _lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


def _tensors(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a step's outputs, those of its :class:`StepStats` included."""
    leaves = tree_leaves(outputs)
    return [
        x for leaf in leaves for x in ((leaf.sums, leaf.counts) if isinstance(leaf, StepStats) else (leaf,))
    ]


def _three_epochs(
    make_graph: Callable[[torch.nn.Module, torch.optim.Optimizer], StepGraph | None],
    device: torch.device,
    amp: str = "off",
    channels_last: bool = False,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], StepGraph | None]:
    """3 epochs of 20 images in batches of 8 (8, 8, then a short 4); SLD's pseudo-teacher comes on in
    epoch 2 (same lr), the lr drops x0.1 for epoch 3: each constant a graph bakes in changes alone."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, 20)
    data = DeviceResidentData(
        images, labels, images[:4], labels[:4], num_classes=100, device=device, batch_size=8, views=2
    )
    config = plain_config(amp, channels_last, epochs=3, lr_milestones=(2,))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    teacher = eval_teacher("resnet8", seed=3).to(device, memory_format=memory_format)
    torch.manual_seed(4)
    student = build_model("resnet8").to(device, memory_format=memory_format)
    optimizer, scheduler = build_optimizer(student, config.optim)
    graph = make_graph(student, optimizer)
    parts = StepParts(
        student,
        teacher,
        METHODS["sld"],
        optimizer,
        torch.amp.GradScaler(device.type, enabled=False),
        config,
        graph=graph,
        teacher_at_once=True,
    )
    generator = torch.Generator(device=device).manual_seed(0)
    sums = []
    with StopSignals() as stop:
        for epoch in (1, 2, 3):
            sums.append(
                train_epoch(parts, data, epoch, generator, Console(quiet=True), RunDir("unused"), stop)
            )
            scheduler.step()
    return sums, student.state_dict(), graph


def test_graphed_steps_equal_eager_steps_with_a_replaying_stand_in() -> None:
    eager_sums, eager_state, _ = _three_epochs(lambda *_: None, CPU)
    graph_sums, graph_state, graph = _three_epochs(
        lambda model, opt: StepGraph(ReplayingBackend(model, opt), warmup_steps=1), CPU
    )
    assert graph is not None
    # per epoch: one eager step (the warm-up, then the first of each new epoch), one recorded and
    # replayed; the short batches bypass the graph
    assert (graph.warm, graph.eager_steps, graph.captures) == (1, 3, 3)
    assert graph_sums == eager_sums
    for name, value in eager_state.items():
        assert torch.equal(graph_state[name], value), name


def test_step_graph_records_again_when_the_key_or_the_shapes_change() -> None:
    calls = []

    class Counting:
        def warmup(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

        def capture(self, fn: Callable[[], Any]) -> Any:
            calls.append("capture")
            self.fn = fn
            return torch.zeros(())

        def replay(self) -> None:
            calls.append(("replay", float(self.fn())))

    graph = StepGraph(Counting(), warmup_steps=2)
    x = torch.ones(3)
    assert float(graph.run(lambda a: a.sum(), (x,), key=1)) == 3.0  # warm-up steps run eagerly
    graph.run(lambda a: a.sum(), (x,), key=1)
    assert calls == []
    graph.run(lambda a: a.sum(), (x * 2,), key=1)  # records, then replays from the copied input
    graph.run(lambda a: a.sum(), (x * 3,), key=1)  # replays with the new input copied in
    assert float(graph.run(lambda a: a.sum(), (x * 4,), key=2)) == 12.0  # a new key: one step eagerly,
    graph.run(lambda a: a.sum(), (x * 5,), key=2)  # then recorded
    graph.run(lambda a: a.sum(), (torch.ones(5),), key=2)  # new shapes count as a new key
    graph.run(lambda a: a.sum(), (torch.ones(5) * 2,), key=2)
    assert calls == [
        "capture",
        ("replay", 6.0),
        ("replay", 9.0),
        "capture",
        ("replay", 15.0),
        "capture",
        ("replay", 10.0),
    ]
    assert (graph.warm, graph.eager_steps, graph.captures) == (2, 4, 3)
    with pytest.raises(ValueError, match="warmup_steps must be >= 1"):
        StepGraph(Counting(), warmup_steps=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"device": "cpu"}, "needs a CUDA device; this run is on cpu"),
        ({"amp": "fp16"}, "cannot replay --amp fp16"),
        ({"compile": True}, "and compile (--compile): choose one"),
    ],
)
def test_cuda_graphs_refuse_what_they_cannot_replay(change: dict, message: str) -> None:
    device = torch.device(change.pop("device", "cuda"))
    config = TrainConfig(student="resnet8", teacher="resnet8", cuda_graphs=True, **change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_cuda_graphs(config, device, DistContext())
    check_cuda_graphs(TrainConfig(student="resnet8", teacher="resnet8", **change), device, DistContext())
    with pytest.raises(ConfigError, match="cuda_graphs must be true or false"):
        TrainConfig(student="resnet8", teacher="resnet8", cuda_graphs="yes")


def test_cuda_graphs_flag_on_the_cpu_is_one_clear_line(tmp_path: Path) -> None:
    result = invoke(
        "train-teacher",
        "--model",
        "resnet8",
        "--cuda-graphs",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--out",
        tmp_path / "t",
        "--data-dir",
        tmp_path,
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: cuda_graphs (--cuda-graphs) needs a CUDA device; this run is on cpu"
    )


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize(("amp", "channels_last"), [("off", False), ("bf16", True)])
def test_cuda_graphed_steps_equal_eager_steps(amp: str, channels_last: bool) -> None:
    device = torch.device("cuda")
    torch.backends.cudnn.deterministic, was = True, torch.backends.cudnn.deterministic
    try:
        eager_sums, eager_state, _ = _three_epochs(lambda *_: None, device, amp, channels_last)
        graph_sums, graph_state, graph = _three_epochs(
            lambda *_: StepGraph(CudaGraphs(device)), device, amp, channels_last
        )
    finally:
        torch.backends.cudnn.deterministic = was
    # warm-up: epoch 1's two full batches and epoch 2's first; epoch 3's first runs eagerly (a new
    # key); recordings at the second full batch of epochs 2 and 3
    assert graph is not None and (graph.warm, graph.eager_steps, graph.captures) == (3, 4, 2)
    # the same kernels on the same addresses: expected bit-equal; allow float32 rounding in case
    # cuBLAS/cuDNN chose another algorithm while capturing
    for got, want in zip(graph_sums, eager_sums):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-6), name
    for name, value in eager_state.items():
        torch.testing.assert_close(graph_state[name], value, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------- the op counter


def test_op_counter_counts_each_op_once_by_phase() -> None:
    w = torch.ones(3, requires_grad=True)
    x = torch.arange(3.0)
    counter = OpCounter()
    with counter:
        with counter.phase("loss"):
            y = (w * x).sum()  # mul, sum
            x.view(3)  # a view: counted, but launches nothing
        y.backward()  # the seed (ones_like) here; MulBackward's mul inside the engine
    assert dict(counter.counts.all) == {"loss": 3, "rest of the step": 1, "backward": 3}
    assert dict(counter.counts.launching) == {"loss": 2, "rest of the step": 1, "backward": 1}
    assert dict(counter.counts.by_op["loss"]) == {"mul": 1, "sum": 1}
    assert torch.equal(w.grad, x)


@pytest.mark.parametrize(("at_once", "forwards"), [(True, 1), (None, 2)], ids=["at-once", "cpu-default"])
def test_a_counted_step_runs_the_teacher_once_and_sgd_in_a_few_ops(
    at_once: bool | None, forwards: int
) -> None:
    torch.manual_seed(0)
    teacher = build_model("resnet8").eval().requires_grad_(False)
    step = training_step(
        "sld", teacher, teacher="resnet8", student="resnet8", batch_size=8, teacher_at_once=at_once
    )
    step()
    counts = count_step_ops(step)

    x = torch.randn(8, 3, 32, 32)
    one_forward = OpCounter("teacher forward")
    with torch.no_grad(), one_forward:
        teacher(x)
    per_forward = one_forward.counts.launching["teacher forward"]
    # (the per-view path's cat of the two logits happens outside the teacher: rest of the step)
    assert counts.launching["teacher forward"] == forwards * per_forward
    assert len(list(step.parts.student.parameters())) > 10
    assert (
        counts.launching["optimizer"] == 4
    )  # weight decay, momentum (mul, add), update: all tensors at once
    assert counts.launching["augmentation"] > 0 and counts.launching["backward"] > 0
    assert counts.total == sum(counts.all.values()) >= counts.total_launching
