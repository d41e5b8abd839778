"""Data-parallel training: ``sld train --nproc 2`` (torchrun, gloo, CPU) against one process.

The run: resnet8 distilled from an (untrained) resnet8 with SLD, both views, pseudo-teacher from
epoch 2, 3 epochs of 75 synthetic images in global batches of 32 (the last one, 11 rows, splits 6/5
between the ranks, so the unequal-shard loss weighting is exercised), evaluation in batches of 16.

What "the same as one process" means here: with plain per-rank BatchNorm, two processes normalize each
16-row shard by its own statistics, which one process with a 32-row batch does not. The reference
single-process run therefore swaps every BatchNorm for :class:`PerRankBatchNorm`, which does exactly
what two ranks do (and nothing else changes: same data order, same augmentation draws, same loss). A
plain single-process run is checked to be measurably different, so the comparison is not vacuous. The same
holds, and is checked the same way, for streamed data: an ImageNet-layout folder of JPEG files decoded in
DataLoader workers (``--workers 0``, and ``--workers 1``, which must not change a bit).

Every process uses one torch thread (``OMP_NUM_THREADS=1`` for the subprocesses,
``torch.set_num_threads(1)`` here): fastest for tiny models on a busy 2-core machine, and it keeps the
CPU arithmetic comparable between processes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import harness.train.loop as loop  # noqa: E402
from harness.cli import app  # noqa: E402
from harness.commands._common import Nodes, launch_command, strip_option  # noqa: E402
from harness.config import DataConfig, OptimConfig, SLDConfig, TrainConfig, save_config  # noqa: E402
from harness.data.synthetic_images import write_image_folder  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.train.distributed import DistContext, check_global_batch  # noqa: E402
from harness.train.loop import train  # noqa: E402

from .train_helpers import (  # noqa: E402
    SLD,
    assert_same_state,
    final_state,
    kill_tree,
    one_thread,  # noqa: F401 (autouse: the in-process runs on one torch thread, like the subprocesses)
    read_metrics,
    run_sld,
    subprocess_env,
    without_timing,
    write_tiny_cifar,
    write_untrained_teacher,
)

CPU = torch.device("cpu")
WORLD = 2
# Float tolerance between 1 and 2 processes: the gradient is summed in another order (per shard, then
# averaged by DDP) and the convolutions see 16-row batches instead of 32-row ones. Measured: weights
# differ by <= 4e-5 after 9 steps (as much as one process with 1 vs 2 threads), metrics by <= 2e-6
# relative in the plain 1-vs-2 run and by up to 2.6e-5 in the 2 -> 1 -> 2 resume chain (kl_teacher,
# epoch 3, since the fused small-problem path rounds differently); a plain single-process run (global
# BatchNorm statistics) is off by 7e-2 and >= 2e-4, which these tolerances still reject.
WEIGHTS_RTOL, WEIGHTS_ATOL = 1e-3, 2e-4
METRICS_RTOL, METRICS_ATOL = 1e-4, 1e-7


class PerRankBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d computing in one process what per-rank BatchNorm computes under DDP with ``WORLD``
    ranks: each rank's rows (``tensor_split``, as the trainer shards) are normalized by their own
    statistics, and the running statistics follow rank 0's rows only, because DDP copies rank 0's
    buffers to every rank before each forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        shards = x.tensor_split(WORLD)
        out = [super().forward(shards[0])]  # rank 0: updates the running statistics
        for shard in shards[1:]:  # the other ranks: their updates are overwritten, so update copies
            mean, var = self.running_mean.clone(), self.running_var.clone()
            out.append(F.batch_norm(shard, mean, var, self.weight, self.bias, True, self.momentum, self.eps))
        return torch.cat(out)


def build_per_rank_bn_model(name: str, num_classes: int = 100) -> torch.nn.Module:
    model = build_model(name, num_classes=num_classes)
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = PerRankBatchNorm
    return model


@dataclasses.dataclass(frozen=True)
class Setup:
    root: Path
    config: TrainConfig  # out_dir is replaced per run
    config_file: Path

    def at(self, name: str) -> TrainConfig:
        return dataclasses.replace(self.config, out_dir=str(self.root / name))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("ddp")
    data = write_tiny_cifar(root / "data", n_train=75, n_test=40)
    teacher = write_untrained_teacher(root / "teacher.pth")
    config = dataclasses.replace(
        setup_config(str(teacher)),
        data=DataConfig(data_dir=str(data), download=False, views=2, eval_batch_size=16),
        out_dir=str(root / "unused"),
    )
    save_config(config, root / "config.json")
    return Setup(root, config, root / "config.json")


def setup_config(teacher: str) -> TrainConfig:
    """The runs' shared config (their data and out_dir are replaced): SLD, resnet8 from resnet8."""
    return TrainConfig(
        student="resnet8",
        teacher="resnet8",
        teacher_checkpoint=teacher,
        method="sld",
        loss=SLDConfig(gamma=1),
        # lr 0.01: at 0.05 this untrained-teacher problem amplifies float noise 20x over 9 steps.
        optim=OptimConfig(epochs=3, batch_size=32, lr=0.01, lr_milestones=(2,)),
        out_dir="unused",
        log_every=1,  # a stop/finite agreement (a collective) after every step
    )


def sld_nproc(setup: Setup, out: str, *extra: str) -> str:
    """``sld train --config ... --out ROOT/OUT --nproc 2 EXTRA`` in a subprocess; returns its output."""
    result = run_sld(
        "train", "--config", setup.config_file, "--out", setup.root / out, "--nproc", WORLD, *extra
    )
    assert result.returncode == 0, result.stdout
    return result.stdout


def in_process(
    config: TrainConfig, *, per_rank_bn: bool, resume: bool = False, stop_after: int | None = None
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if per_rank_bn:
            patch.setattr(loop, "build_model", build_per_rank_bn_model)
        train(config, CPU, resume=resume, stop_after=stop_after)


@pytest.fixture(scope="module")
def two_processes(setup: Setup) -> tuple[Path, str]:
    return setup.root / "ddp", sld_nproc(setup, "ddp")


@pytest.fixture(scope="module")
def emulated(setup: Setup) -> Path:
    in_process(setup.at("emulated"), per_rank_bn=True)
    return setup.root / "emulated"


def assert_same_weights(a: Path, b: Path) -> None:
    assert_same_state(final_state(a), final_state(b), exact=False, rtol=WEIGHTS_RTOL, atol=WEIGHTS_ATOL)


def assert_runs_match(a: Path, b: Path) -> None:
    assert_same_weights(a, b)
    records_a, records_b = without_timing(read_metrics(a)), without_timing(read_metrics(b))
    assert [r["epoch"] for r in records_a] == [r["epoch"] for r in records_b]
    for ra, rb in zip(records_a, records_b):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=METRICS_RTOL, abs=METRICS_ATOL), (ra["epoch"], key)


# ----------------------------------------------------------------------------------------- 1 vs 2 processes


def test_two_processes_match_one_process_with_per_rank_batchnorm(
    two_processes: tuple[Path, str], emulated: Path
) -> None:
    ddp, output = two_processes
    assert_runs_match(ddp, emulated)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (ddp, emulated)]
    for key in ("best_top1", "best_epoch", "last_top1", "last_top5", "teacher_top1", "teacher_train_error"):
        assert summaries[0][key] == pytest.approx(summaries[1][key], rel=METRICS_RTOL, abs=METRICS_ATOL), key
    # Rank 0 alone logs and writes: one line and one record per epoch, and it says how work is split.
    assert "2: global batch 32 = 2 x 16" in output
    assert [output.count(f"epoch {e}/3:") for e in (1, 2, 3)] == [1, 1, 1]
    assert len(read_metrics(ddp)) == 3
    checkpoint = torch.load(ddp / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == WORLD
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # the unwrapped module's state


def test_plain_single_process_differs_so_the_comparison_can_fail(
    setup: Setup, two_processes: tuple[Path, str]
) -> None:
    in_process(setup.at("plain"), per_rank_bn=False)
    ddp, _ = two_processes
    with pytest.raises(AssertionError):
        assert_same_weights(ddp, setup.root / "plain")
    with pytest.raises(AssertionError):
        assert_runs_match(ddp, setup.root / "plain")


# ------------------------------------------------------------------------------------------------- resume


def test_resume_across_world_sizes_2_1_2(setup: Setup) -> None:
    """Epoch 1 on two processes, epoch 2 on one, epoch 3 on two again, against one process doing the
    same three epochs with per-rank BatchNorm emulated where two ranks trained."""
    output = sld_nproc(setup, "chain", "--stop-after", "1")
    chain = setup.root / "chain"
    assert "stopped after epoch 1/3 as asked" in output
    assert [r["epoch"] for r in read_metrics(chain)] == [1] and not (chain / "summary.json").exists()
    shutil.copytree(chain, setup.root / "chain_w2")  # test_resume_with_two_processes continues this copy

    in_process(setup.at("chain"), per_rank_bn=False, resume=True, stop_after=2)
    sld_nproc(setup, "chain", "--resume")

    reference = setup.at("chain_reference")
    in_process(reference, per_rank_bn=True, stop_after=1)
    in_process(reference, per_rank_bn=False, resume=True, stop_after=2)
    in_process(reference, per_rank_bn=True, resume=True)
    assert_runs_match(chain, Path(reference.out_dir))


def test_resume_with_two_processes_equals_uninterrupted(
    setup: Setup, two_processes: tuple[Path, str]
) -> None:
    stopped = setup.root / "chain_w2"
    if not stopped.exists():
        pytest.skip("needs the epoch-1 checkpoint of test_resume_across_world_sizes_2_1_2")
    sld_nproc(setup, "chain_w2", "--resume")
    ddp, _ = two_processes
    assert_same_state(final_state(stopped), final_state(ddp))  # same world size: bit for bit
    assert without_timing(read_metrics(stopped)) == without_timing(read_metrics(ddp))


# ---------------------------------------------------------------------------- streamed data (an image folder)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """The CIFAR setup's run on an ImageNet-layout folder of JPEG files, streamed through DataLoader
    workers (``--workers 0``): 3 classes, 21 training images in global batches of 8 (the last one, 5
    rows, splits 3/2), 6 held-out images, 32-px crops, 2 epochs."""
    root = tmp_path_factory.mktemp("ddp_streamed")
    folder = write_image_folder(
        root / "images", num_classes=3, train_per_class=7, val_per_class=2, size=(40, 36)
    )
    torch.manual_seed(7)
    teacher = root / "teacher.pth"
    torch.save({"model": build_model("resnet8", num_classes=3).state_dict()}, teacher)
    config = dataclasses.replace(
        setup_config(str(teacher)),
        optim=OptimConfig(epochs=2, batch_size=8, lr=0.01, lr_milestones=(2,)),
        data=DataConfig(
            dataset="imagenet", data_dir=str(folder), image_size=32, workers=0, views=2, eval_batch_size=4
        ),
        out_dir=str(root / "unused"),
    )
    save_config(config, root / "config.json")
    return Setup(root, config, root / "config.json")


@pytest.fixture(scope="module")
def streamed_two_processes(streamed: Setup) -> Path:
    sld_nproc(streamed, "ddp")
    return streamed.root / "ddp"


def test_streamed_two_processes_match_one_process_with_per_rank_batchnorm(
    streamed: Setup, streamed_two_processes: Path
) -> None:
    """As for CIFAR: each rank trains on its share of the same global batch, with the same views (seeded
    by seed, epoch, image and view), so two processes give what one process gives with per-rank
    BatchNorm, within the same tolerances; a plain single process is measurably different."""
    ddp = streamed_two_processes
    in_process(streamed.at("emulated"), per_rank_bn=True)
    assert_runs_match(ddp, streamed.root / "emulated")
    records = read_metrics(ddp)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:  # the rates count all 21 images (42 views) per epoch: the 5-row batch trained too
        assert r["train_top1"] * 21 == pytest.approx(round(r["train_top1"] * 21), abs=1e-9)
        assert r["student_swap_rate"] * 42 == pytest.approx(round(r["student_swap_rate"] * 42), abs=1e-9)
    assert json.loads((ddp / "config.json").read_text())["data"]["classes"] == [
        "n00000000", "n00000001", "n00000002"
    ]
    in_process(streamed.at("plain"), per_rank_bn=False)
    with pytest.raises(AssertionError):
        assert_runs_match(ddp, streamed.root / "plain")


def test_streamed_two_processes_with_a_worker_each_equal_the_run_without(
    streamed: Setup, streamed_two_processes: Path
) -> None:
    """``--workers 1`` (a decode process per rank) hands each rank the same images as decoding in the
    rank itself: the same run, bit for bit."""
    sld_nproc(streamed, "ddp_workers", "--workers", "1")
    workers = streamed.root / "ddp_workers"
    assert json.loads((workers / "config.json").read_text())["data"]["workers"] == 1
    assert_same_state(final_state(workers), final_state(streamed_two_processes))
    assert without_timing(read_metrics(workers)) == without_timing(read_metrics(streamed_two_processes))


# ---------------------------------------------------------------------------------------- pieces and errors


@pytest.mark.parametrize("rows", [1, 2, 5, 11, 32])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_partition_the_batch_like_tensor_split(rows: int, world: int) -> None:
    index = torch.arange(rows)
    parts = [DistContext(rank=r, world_size=world).shard_slice(rows) for r in range(world)]
    assert torch.cat([index[s] for s in parts]).tolist() == list(range(rows))
    for rank, part in enumerate(parts):
        assert torch.equal(index[part], DistContext(rank=rank, world_size=world).shard(index))


def test_global_batch_must_split_evenly() -> None:
    assert check_global_batch(64, 4) == 16
    with pytest.raises(ValueError, match=r"--batch-size 30 is the global batch .* processes \(4\); try 28"):
        check_global_batch(30, 4)
    with pytest.raises(ValueError, match="leaves 1 row per process; BatchNorm needs at least 2"):
        check_global_batch(4, 4)


def test_nproc_checks_the_batch_before_launching(setup: Setup) -> None:
    result = CliRunner().invoke(
        app, ["train", "--config", str(setup.config_file), "--batch-size", "31", "--nproc", "2"]
    )
    assert result.exit_code == 1
    assert "--batch-size 31 is the global batch and must be divisible by the number of processes (2)" in (
        result.output
    )


def test_launch_command_reruns_the_same_arguments() -> None:
    args = strip_option(["train", "--pair", "p", "--nproc", "4", "--epochs", "3", "--nproc=2"], "--nproc")
    assert args == ["train", "--pair", "p", "--epochs", "3"]
    command = launch_command(args, 4, executable="python")
    assert command == [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "harness",
        *args,
    ]


# ------------------------------------------------------------------------------------------- several nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sld_two_nodes(setup: Setup, out: str, *extra: str, timeout: float = 120) -> list[str]:
    """Two single-process "nodes" on this machine (one ``sld train --nnodes 2 --node-rank K`` each,
    started together), meeting at a local rendezvous endpoint over gloo; returns both outputs."""
    endpoint = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [SLD, "train", "--config", str(setup.config_file), "--out", str(setup.root / out),
             "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(),
            start_new_session=True,
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    return outputs


def test_two_nodes_train_like_two_processes_on_one(setup: Setup, two_processes: tuple[Path, str]) -> None:
    """The same world of 2 ranks, whether the ranks sit on one machine or on two "nodes" (global rank =
    node rank x processes per node + local rank): bit-identical weights and records."""
    outputs = sld_two_nodes(setup, "nodes")
    ddp, _ = two_processes
    assert_same_state(final_state(setup.root / "nodes"), final_state(ddp))
    assert without_timing(read_metrics(setup.root / "nodes")) == without_timing(read_metrics(ddp))
    assert "epoch 3/3:" in outputs[0] and "epoch 3/3:" not in outputs[1]  # node 0's rank 0 alone logs


def test_resume_across_a_changed_node_count(setup: Setup, two_processes: tuple[Path, str]) -> None:
    """Epoch 1 on two nodes, the rest on one node with two processes (the same world size): the run
    finishes as the uninterrupted two-process run, bit for bit."""
    sld_two_nodes(setup, "nodes_resume", "--stop-after", "1")
    assert [r["epoch"] for r in read_metrics(setup.root / "nodes_resume")] == [1]
    sld_nproc(setup, "nodes_resume", "--resume")
    ddp, _ = two_processes
    assert_same_state(final_state(setup.root / "nodes_resume"), final_state(ddp))
    assert without_timing(read_metrics(setup.root / "nodes_resume")) == without_timing(read_metrics(ddp))


def test_multi_node_flags_are_checked_once_with_one_line() -> None:
    cases = {
        ("--nnodes", "2"): "--nnodes 2 needs --node-rank (0..1) and --rdzv-endpoint HOST:PORT",
        ("--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"):
            "--node-rank 2 must be below --nnodes 2",
        ("--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "nohost"):
            "--rdzv-endpoint must be HOST:PORT",
        ("--node-rank", "1"): "--node-rank and --rdzv-endpoint belong to a multi-node run",
    }
    for flags, message in cases.items():
        result = CliRunner().invoke(app, ["train", "--student", "resnet8", "--method", "ce", *flags])
        assert result.exit_code == 1, (flags, result.output)
        assert message in " ".join(result.output.split()), (flags, result.output)


def test_launch_command_for_several_nodes() -> None:
    nodes = Nodes(count=2, rank=1, endpoint="node0:29500")
    assert launch_command(["train"], 4, nodes, executable="python") == [
        "python", "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1", "--rdzv-backend",
        "static", "--rdzv-endpoint", "node0:29500", "--nproc_per_node", "4", "-m", "harness", "train",
    ]
