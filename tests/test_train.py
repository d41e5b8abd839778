"""harness.train: configs, methods against float64 references, checkpoints, and tiny CPU training runs
on a synthetic CIFAR-format archive (64 train / 32 test images, resnet8)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness.config import (  # noqa: E402
    CEConfig,
    ConfigError,
    DataConfig,
    DKDConfig,
    KDConfig,
    OptimConfig,
    SLDConfig,
    TrainConfig,
    load_config,
    resume_conflicts,
    save_config,
    with_overrides,
)
from harness.config import train_config_from_dict as config_from_dict  # noqa: E402
from harness.config import train_config_to_dict as config_to_dict  # noqa: E402
from harness.data.cifar import DatasetError  # noqa: E402
from harness.models import CheckpointError  # noqa: E402
from harness.recipes import pair_config, teacher_config  # noqa: E402
from harness.train import methods  # noqa: E402
from harness.train.checkpoint import (  # noqa: E402
    capture_rng,
    checkpoint_model_name,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from harness.train.errors import NonFiniteLossError  # noqa: E402
from harness.train.loop import train  # noqa: E402

from .train_helpers import (  # noqa: E402
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    read_metrics,
    without_timing,
    write_tiny_cifar,
    write_untrained_teacher,
)

CPU = torch.device("cpu")


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32, seed=0)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet8 teacher in mdistiller's file layout ({"model": state_dict}); untrained is enough here."""
    return write_untrained_teacher(tmp_path_factory.mktemp("teacher") / "ckpt_epoch_240.pth", seed=123)


def tiny(
    tmp_path: Path,
    data_dir: Path,
    teacher_ckpt: Path,
    method: str = "ce",
    loss=None,
    *,
    views: int = 1,
    out: str = "run",
    **top,
) -> TrainConfig:
    loss = (
        loss
        if loss is not None
        else {"ce": CEConfig, "kd": KDConfig, "dkd": DKDConfig, "sld": SLDConfig}[method]()
    )
    return TrainConfig(
        student="resnet8",
        method=method,
        loss=loss,
        teacher=None if method == "ce" else "resnet8",
        teacher_checkpoint=None if method == "ce" else str(teacher_ckpt),
        optim=OptimConfig(epochs=2, batch_size=32, lr=0.05, lr_milestones=(1,)),
        data=DataConfig(data_dir=str(data_dir), download=False, views=views, eval_batch_size=64),
        out_dir=str(tmp_path / out),
        log_every=1,
        **top,
    )


# ------------------------------------------------------------------------------------------------- config


def test_config_json_round_trip(tmp_path: Path) -> None:
    config = with_overrides(pair_config("resnet32x4-resnet8x4"), {"loss.gamma": 3.0, "optim.epochs": 5})
    save_config(config, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == config
    assert config_from_dict(config_to_dict(config)) == config


def test_pair_config_is_the_official_recipe() -> None:
    sld = pair_config("resnet32x4-resnet8x4")
    assert (sld.student, sld.teacher, sld.optim.lr, sld.data.views) == ("resnet8x4", "resnet32x4", 0.025, 2)
    assert sld.loss == SLDConfig()  # T 1..6, gamma 150, ce 0.1, kd 0.9, swap on, pseudo on, not detached
    assert sld.optim == OptimConfig(lr=0.025)  # 240 epochs, batch 64, momentum 0.9, wd 5e-4, 150/180/210
    kd = pair_config("resnet32x4-resnet8x4", "kd")
    assert (kd.optim.lr, kd.data.views, kd.loss) == (
        0.05,
        1,
        KDConfig(temperature=4.0, ce_weight=0.1, kd_weight=0.9),
    )
    assert pair_config("wrn40_2-wrn16_2", "dkd").loss.beta == 6.0
    assert pair_config("resnet56-resnet20", "dkd").loss.beta == 2.0
    assert pair_config("resnet32x4-resnet8x4", "dkd").loss.beta == 8.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optim.epochs": 0}, "optim.epochs must be an integer >= 1"),
        ({"method": "kd"}, "loss must be a KDConfig"),
        ({"method": "bogus"}, "method must be one of"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"data.views": 3}, "data.views must be 1"),
        ({"optim.lr_milestones": (180, 150)}, "optim.lr_milestones must be strictly increasing"),
        ({"loss.gamma": 1.0}, "CEConfig has no field 'gamma'"),
    ],
)
def test_config_validation_names_the_field(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_overrides(TrainConfig(student="resnet8", method="ce", loss=CEConfig()), change)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"student": "resnet8", "method": "ce", "lr": 0.1}))
    with pytest.raises(ConfigError, match=r"bad.json: config: unknown key\(s\) \['lr'\]"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        OptimConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="teacher is required by method 'kd'"):
        TrainConfig(student="resnet8", method="kd", loss=KDConfig())


def test_resume_conflicts_skip_where_and_how_fast_fields_only() -> None:
    saved = pair_config("resnet32x4-resnet8x4")
    moved = with_overrides(
        saved,
        {"out_dir": "x", "log_every": 7, "compile": True, "data.data_dir": "/d", "data.eval_batch_size": 8},
    )
    assert resume_conflicts(saved, moved) == []
    changed = with_overrides(moved, {"seed": 4, "loss.gamma": 3.0, "teacher_checkpoint": "t.pt"})
    assert resume_conflicts(saved, changed) == [
        "loss.gamma: 150 -> 3.0",
        "seed: 0 -> 4",
        "teacher_checkpoint: None -> 't.pt'",
    ]
    assert resume_conflicts(saved, changed, ignore={"teacher_checkpoint"}) == [
        "loss.gamma: 150 -> 3.0",
        "seed: 0 -> 4",
    ]
    assert resume_conflicts(saved, with_overrides(saved, {"sync_bn": True})) == ["sync_bn: False -> True"]


def test_sync_bn_is_recorded_and_needs_cuda(tmp_path: Path, data_dir: Path, teacher_ckpt: Path) -> None:
    config = tiny(tmp_path, data_dir, teacher_ckpt, "ce", sync_bn=True)
    assert config_to_dict(config)["sync_bn"] is True  # so config.json records it
    with pytest.raises(ConfigError, match=r"sync_bn \(--sync-bn\) needs CUDA devices"):
        train(config, CPU)
    with pytest.raises(ConfigError, match="sync_bn must be true or false; got 1"):
        with_overrides(config, {"sync_bn": 1})


# ------------------------------------------------------------------------------------------------ methods


def _ref_log_softmax(z: np.ndarray, t: float) -> np.ndarray:
    z = z / t
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _ref_swap(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = z.copy()
    for b in range(len(y)):
        m = int(np.argmax(z[b]))
        z[b, m], z[b, y[b]] = z[b, y[b]], z[b, m]
    return z


def _ref_kd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float, ce_w: float, kd_w: float) -> float:
    log_q, log_p = _ref_log_softmax(s, temp), _ref_log_softmax(t, temp)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean() * temp**2
    ce = -_ref_log_softmax(s, 1.0)[np.arange(len(y)), y].mean()
    return ce_w * ce + kd_w * kl


def _ref_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float, alpha: float, beta: float) -> float:
    """mdistiller's formulation, written out per row in float64."""
    total_t = total_n = 0.0
    for b in range(len(y)):
        p = np.exp(_ref_log_softmax(t[b : b + 1], temp))[0]
        q = np.exp(_ref_log_softmax(s[b : b + 1], temp))[0]
        pb, qb = np.array([p[y[b]], 1 - p[y[b]]]), np.array([q[y[b]], 1 - q[y[b]]])
        total_t += (pb * np.log(pb / qb)).sum()
        others = np.arange(len(p)) != y[b]
        pn, qn = p[others] / p[others].sum(), q[others] / q[others].sum()
        total_n += (pn * np.log(pn / qn)).sum()
    return temp**2 * (alpha * total_t + beta * total_n) / len(y)


@pytest.fixture
def logits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(8, 10)) * 3, rng.normal(size=(8, 10)) * 3
    return s, t, rng.integers(0, 10, size=8)


def _torch(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.tensor(a) if a.dtype.kind == "i" else torch.tensor(a, dtype=torch.float32) for a in arrays]


@pytest.mark.parametrize("swap", [False, True], ids=["plain", "swap-teacher"])
def test_kd_matches_float64_reference(logits, swap: bool) -> None:
    s, t, y = logits
    config = KDConfig(teacher_processing="swap" if swap else "none")
    terms = methods.kd(*_torch(s, t, y), epoch=1, config=config)
    reference = _ref_kd(s, _ref_swap(t, y) if swap else t, y, 4.0, 0.1, 0.9)
    assert terms["loss_kd"].dtype == torch.float32
    assert terms["loss_kd"].item() == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("swap", [False, True], ids=["plain", "swap-teacher"])
def test_dkd_matches_float64_reference(logits, swap: bool) -> None:
    s, t, y = logits
    config = DKDConfig(beta=6.0, warmup_epochs=20, teacher_processing="swap" if swap else "none")
    terms = methods.dkd(*_torch(s, t, y), epoch=5, config=config)
    reference = _ref_dkd(s, _ref_swap(t, y) if swap else t, y, 4.0, 1.0, 6.0) * 5 / 20
    assert terms["loss_dkd"].item() == pytest.approx(reference, rel=1e-4)
    ce = -_ref_log_softmax(s, 1.0)[np.arange(len(y)), y].mean()
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-5)


def test_methods_return_differentiable_loss_terms(logits) -> None:
    s, t, y = _torch(*logits)
    for name, config in (
        ("ce", CEConfig()),
        ("kd", KDConfig()),
        ("dkd", DKDConfig()),
        ("sld", SLDConfig(gamma=0)),
    ):
        student = s.clone().requires_grad_(True)
        terms = methods.METHODS[name](methods.StepLogits((student,), (t,), y), epoch=1, config=config)
        loss = sum(v for k, v in terms.items() if k.startswith("loss"))
        loss.backward()
        assert student.grad is not None and torch.isfinite(student.grad).all(), name
        assert all(not v.requires_grad for k, v in terms.items() if not k.startswith("loss")), name


# --------------------------------------------------------------------------------------------- checkpoints


def test_rng_capture_restore_replays_every_stream() -> None:
    generator = torch.Generator().manual_seed(7)
    state = capture_rng(generator)
    draws = (
        random.random(),
        np.random.rand(),  # noqa: NPY002
        torch.rand(1).item(),
        torch.rand(1, generator=generator).item(),
    )  # noqa: NPY002
    restore_rng(state, generator)
    assert (
        random.random(),
        np.random.rand(),  # noqa: NPY002
        torch.rand(1).item(),
        torch.rand(1, generator=generator).item(),
    ) == draws


def test_checkpoint_errors_name_the_path(tmp_path: Path, teacher_ckpt: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="not an `sld train` checkpoint"):
        load_checkpoint(teacher_ckpt)
    assert checkpoint_model_name(teacher_ckpt) is None
    save_checkpoint(tmp_path / "partial.pt", {"model": {}})
    with pytest.raises(CheckpointError, match=r"partial.pt: checkpoint lacks \['optimizer'"):
        load_checkpoint(tmp_path / "partial.pt")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # atomic: no leftovers


# ---------------------------------------------------------------------------------------------- training


RUNS = {
    "ce": ("ce", None, 1),
    "kd": ("kd", None, 1),
    "kd-swap-teacher": ("kd", KDConfig(teacher_processing="swap"), 1),
    "dkd": ("dkd", DKDConfig(warmup_epochs=2), 1),
    "sld": ("sld", SLDConfig(gamma=1), 2),
    "sld-no-teacher-swap": ("sld", SLDConfig(gamma=1, teacher_processing="none"), 1),
    "sld-no-pseudo-teacher": ("sld", SLDConfig(gamma=1, pseudo_teacher=False), 1),
    "sld-detach-pseudo-teacher": ("sld", SLDConfig(gamma=1, detach_pseudo_teacher=True), 1),
}
TERMS = {
    "ce": {"loss_ce"},
    "kd": {"loss_kd", "ce", "kl_teacher"},
    "dkd": {"loss_ce", "loss_dkd", "tckd", "nckd"},
    "sld": {"loss_sld", "ce", "kl_teacher", "kl_pseudo"},
}


@pytest.mark.parametrize("run_id", list(RUNS))
def test_two_epoch_run_writes_sane_metrics(
    run_id: str, tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    method, loss, views = RUNS[run_id]
    config = tiny(tmp_path, data_dir, teacher_ckpt, method, loss, views=views)
    result = train(config, CPU)
    records = read_metrics(config.out_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["lr"] for r in records] == pytest.approx([0.05, 0.005])  # x0.1 after milestone epoch 1
    expected = TERMS[method] | {
        "loss",
        "lr",
        "student_swap_rate",
        "train_top1",
        "test_top1",
        "test_top5",
        "test_loss",
        "best_test_top1",
        "epoch_time_s",
        "images_per_s",
    }
    if method != "ce":
        expected.add("teacher_swap_rate")
    for record in records:
        assert set(record) == expected | {"epoch"}
        assert all(math.isfinite(v) for v in record.values())
        for key in ("student_swap_rate", "teacher_swap_rate", "train_top1", "test_top1", "test_top5"):
            assert 0.0 <= record.get(key, 0.0) <= 1.0
        assert record["test_top1"] <= record["test_top5"]
        assert record["loss"] == pytest.approx(
            sum(v for k, v in record.items() if k.startswith("loss_")), rel=1e-5
        )
    if method == "sld":
        pseudo = [r["kl_pseudo"] for r in records]
        assert pseudo[0] == 0.0  # epoch 1 is not > gamma = 1
        assert (pseudo[1] > 0) == loss.pseudo_teacher
    assert load_config(Path(config.out_dir) / "config.json") == config
    assert result.best_top1 == max(r["test_top1"] for r in records)
    assert (result.last_top1, result.epochs) == (records[-1]["test_top1"], 2)
    assert load_checkpoint(Path(config.out_dir) / "last.pt")["epoch"] == 2
    assert checkpoint_model_name(Path(config.out_dir) / "best.pt") == "resnet8"
    teacher_file = Path(config.out_dir) / "teacher.json"
    if method != "ce":
        assert result.teacher_top1 is not None and 0.0 <= result.teacher_train_error <= 1.0
        assert json.loads(teacher_file.read_text()) == {
            "teacher": "resnet8",
            "teacher_checkpoint": str(teacher_ckpt),
            "teacher_sha256": hashlib.sha256(teacher_ckpt.read_bytes()).hexdigest(),
            "teacher_top1": result.teacher_top1,
            "teacher_train_error": result.teacher_train_error,
        }
    else:
        assert not teacher_file.exists()


def test_resume_after_interruption_is_bit_identical(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    """Also the determinism test: two seeded CPU runs of the same config end with equal weights."""
    whole = tiny(tmp_path, data_dir, teacher_ckpt, "sld", SLDConfig(gamma=1), views=2, out="whole")
    whole_result = train(whole, CPU)
    parts = dataclasses.replace(whole, out_dir=str(tmp_path / "parts"))

    def stop_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(parts, CPU, on_epoch_end=stop_after_first)
    assert len(read_metrics(parts.out_dir)) == 1
    # The teacher's accuracy is on disk from the start, not only in summary.json at the end.
    assert not (Path(parts.out_dir) / "summary.json").exists()
    teacher = json.loads((Path(parts.out_dir) / "teacher.json").read_text())
    assert teacher["teacher_top1"] == whole_result.teacher_top1
    with pytest.raises(ConfigError, match="already holds a run"):
        train(parts, CPU)  # never silently overwrites a run
    differs = r"config differs from the one the run was started with \(optim.lr: 0.05 -> 0.1\)"
    with pytest.raises(ConfigError, match=differs):
        train(with_overrides(parts, {"optim.lr": 0.1}), CPU, resume=True)
    train(parts, CPU, resume=True)

    final_whole = load_checkpoint(Path(whole.out_dir) / "last.pt")
    final_parts = load_checkpoint(Path(parts.out_dir) / "last.pt")
    for key, value in final_whole["model"].items():
        assert torch.equal(value, final_parts["model"][key]), key
    assert without_timing(read_metrics(whole.out_dir)) == without_timing(read_metrics(parts.out_dir))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_ce = methods.METHODS["ce"]

    def nan_in_epoch_2(logits, *, epoch, config):
        terms = real_ce(logits, epoch=epoch, config=config)
        return {"loss_ce": terms["loss_ce"] * (float("nan") if epoch == 2 else 1.0)}

    monkeypatch.setitem(methods.METHODS, "ce", nan_in_epoch_2)
    config = tiny(tmp_path, data_dir, teacher_ckpt, "ce")
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss .* at epoch 2, step 1/2; .*last.pt \(epoch 1\) is kept"
    ):
        train(config, CPU)
    kept = load_checkpoint(Path(config.out_dir) / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_metrics(config.out_dir)] == [1]


def test_mismatched_teacher_checkpoint_is_a_clear_error(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path
) -> None:
    config = dataclasses.replace(tiny(tmp_path, data_dir, teacher_ckpt, "kd"), teacher="resnet14")
    with pytest.raises(CheckpointError, match=r"(?s)ckpt_epoch_240.pth does not fit ResNet:.*missing keys"):
        train(config, CPU)


def test_missing_data_is_a_clear_error(tmp_path: Path, teacher_ckpt: Path) -> None:
    config = tiny(tmp_path, tmp_path / "empty", teacher_ckpt, "ce")
    with pytest.raises(DatasetError, match="CIFAR-100 not found in .*empty"):
        train(config, CPU)


@pytest.mark.parametrize("official", [True, False], ids=["official-double-bn", "clean"])
def test_wrn_students_update_batchnorm_twice_per_step_unless_asked(
    tmp_path: Path, data_dir: Path, teacher_ckpt: Path, official: bool
) -> None:
    """config.official_wrn_bn reaches the WRN model: its first block's bn1 counts two updates per step
    (the official forward's second pass), a layer without the second pass one; the teacher recipe is
    the clean one (CRD's code trained the community teachers)."""
    config = dataclasses.replace(
        tiny(tmp_path, data_dir, teacher_ckpt, "ce"),
        student="wrn_16_1",
        official_wrn_bn=official,
        optim=OptimConfig(epochs=1, batch_size=32, lr=0.05, lr_milestones=(1,)),
    )
    train(config, CPU)
    state = load_checkpoint(Path(config.out_dir) / "last.pt")["model"]
    steps = int(state["block1.layer.0.bn2.num_batches_tracked"])
    assert steps >= 1
    assert int(state["block2.layer.0.bn1.num_batches_tracked"]) == (2 if official else 1) * steps
    assert teacher_config("wrn_16_1").official_wrn_bn is False
    assert TrainConfig(student="wrn_16_1", method="ce", loss=CEConfig()).official_wrn_bn is True
