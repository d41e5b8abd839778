"""``sld demo``: the offline digits comparison end to end, its JSON, its schedule, and its errors."""

from __future__ import annotations

import json
import math
import re

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.data.cifar import CIFAR100_URL
from harness.demo import DEMO_METHODS, DemoConfig, run_digits_demo, scaled_schedule
from sld_core import SLDConfig

runner = CliRunner()


def test_tiny_demo_prints_the_table_and_writes_finite_json(tmp_path) -> None:
    out = tmp_path / "nested" / "demo.json"
    result = runner.invoke(app, ["demo", "--seeds", "1", "--epochs", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^\s*(ce|kd|sld)\s+2\s+(\d+\.\d\d)\s", result.output, re.MULTILINE)
    assert [name for name, _ in rows] == ["ce", "kd", "sld"], result.output  # 2 views each
    assert "of the strong training views" in result.output and "seeds 0" in result.output
    assert "SLD gamma = 1" in result.output  # round(2 * 150 / 240): stated, not hidden
    assert "lr 0.025" in result.output

    data = json.loads(out.read_text())
    assert data["seeds"] == [0] and data["epochs"] == 2 and data["sld_gamma"] == 1
    assert set(data["methods"]) == set(DEMO_METHODS)
    for name, method in data["methods"].items():
        assert len(method["test_accuracy"]) == 1
        for value in (*method["test_accuracy"], method["mean"]):
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (name, method)
        assert method["std"] is None  # undefined for one seed, not a made-up 0
        table_value = float(dict(rows)[name])
        assert table_value == pytest.approx(100 * method["mean"], abs=0.006)
    for key in ("teacher_test_accuracy", "teacher_train_error", "wall_time_s"):
        assert math.isfinite(data[key]) and data[key] >= 0, key
    # two epochs x two views of every training image, each labelled by the teacher once
    assert data["teacher_rows"] == 2 * 2 * 1198
    assert 0 <= data["swapped_rows"] <= data["teacher_rows"] and len(data["teacher_view_errors"]) == 2
    for name, method in data["methods"].items():
        assert method["views"] == 2
        for key in ("teacher_wrong_rows_right", "teacher_wrong_rows_repeated"):
            (value,) = method[key]
            assert 0.0 <= value <= 1.0, (name, key)
        # the label and the teacher's (wrong) class differ, so a row cannot be both
        assert method["teacher_wrong_rows_right"][0] + method["teacher_wrong_rows_repeated"][0] <= 1.0


def test_teacher_epochs_sets_how_briefly_the_teacher_trains(tmp_path) -> None:
    out = tmp_path / "demo.json"
    args = ["demo", "--seeds", "1", "--epochs", "1", "--json", str(out)]
    result = runner.invoke(app, [*args, "--teacher-epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "teacher (CNN, 1 epochs of CE)" in result.output
    assert json.loads(out.read_text())["teacher_epochs"] == 1


def test_sld_goes_through_backends_with_the_scaled_gamma(monkeypatch) -> None:
    """The demo's losses are the trainer's methods, and SLD's reaches ``backends.sld_loss`` with the
    official config except for gamma, scaled to the run."""
    import backends

    seen = []
    original = backends.sld_loss

    def spy(*args, **kwargs):
        seen.append((kwargs["config"], kwargs["epoch"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(backends, "sld_loss", spy)
    result = run_digits_demo(DemoConfig(seeds=1, epochs=4, teacher_epochs=1))
    sld_calls = [(config, epoch) for config, epoch in seen if config.pseudo_teacher]  # kd's has none
    assert sld_calls, "SLD never reached backends.sld_loss"
    assert {config for config, _ in sld_calls} == {SLDConfig(gamma=3)}  # 150/240 of 4 epochs = 2.5 -> 3
    assert {epoch for _, epoch in sld_calls} == {1, 2, 3, 4}  # epochs count from 1
    assert result.gamma == 3 and len(result.methods["sld"].accuracies) == 1


@pytest.mark.parametrize(
    ("epochs", "gamma", "milestones"),
    [
        (240, 150, (150, 180, 210)),  # the official recipe, unchanged
        (40, 25, (25, 30, 35)),
        (7, 4, (4, 5, 6)),  # 4.375, 5.25, 6.125
        (4, 3, (3, 4)),  # 2.5 rounds up (not to even); 3.0 and 3.5 -> 3, 4: duplicates merge
        (2, 1, (1, 2)),  # 1.25 | 1.25, 1.5, 1.75
        (1, 1, (1,)),  # never below epoch 1
    ],
)
def test_scaled_schedule_keeps_the_official_proportions(epochs: int, gamma: int, milestones: tuple) -> None:
    assert scaled_schedule(epochs) == (gamma, milestones)


@pytest.mark.parametrize("field", ["seeds", "epochs", "teacher_epochs", "student_hidden"])
def test_config_rejects_non_positive_counts(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be an integer >= 1"):
        DemoConfig(**{field: 0})


def test_cifar_without_data_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLD_DATA_DIR", str(tmp_path / "default-cache"))
    for extra in ([], ["--data-dir", str(tmp_path / "empty")]):
        result = runner.invoke(app, ["demo", "--cifar", "--seeds", "1", "--epochs", "1", *extra])
        assert result.exit_code == 1, result.output
        assert "CIFAR-100 not found" in result.output and CIFAR100_URL in result.output
        assert "never the network" in result.output
        assert "Traceback" not in result.output


def test_cifar_only_flags_are_refused_without_cifar() -> None:
    result = runner.invoke(app, ["demo", "--pair", "resnet56-resnet20"])
    assert result.exit_code == 1
    assert "--pair applies to --cifar only" in result.output


def test_cifar_unknown_pair_is_named(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "--cifar", "--pair", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown pair 'nope'" in result.output


def test_cifar_demo_runs_through_the_trainer_on_a_synthetic_archive(tmp_path, request) -> None:
    """The --cifar path end to end (teacher, then ce/kd/sld students via harness.train.loop.train) on
    a tiny archive in the real CIFAR-100 format; a few seconds on one CPU thread."""
    import torch

    from harness.data import load_cifar100, write_cifar100_archive
    from harness.demo import run_cifar_demo

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: extra threads only add contention on a busy 2-core machine
    request.addfinalizer(lambda: torch.set_num_threads(previous))
    archive = tmp_path / "src" / "cifar-100-python.tar.gz"
    md5 = write_cifar100_archive(archive, n_train=16, n_test=8)
    load_cifar100(tmp_path / "cache", url=archive.as_uri(), md5=md5)  # extracts into the cache
    result = run_cifar_demo(
        DemoConfig(seeds=1, epochs=1, teacher_epochs=1),
        torch.device("cpu"),
        data_dir=tmp_path / "cache",
        out_dir=tmp_path / "runs",
        limit_train=16,
        limit_test=8,
    )
    assert set(result.methods) == set(DEMO_METHODS)
    assert all(0.0 <= a <= 1.0 for r in result.methods.values() for a in r.accuracies)
    assert 0.0 <= result.teacher_train_error <= 1.0
    assert (tmp_path / "runs" / "teacher" / "best.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "ce-seed0",
        "kd-seed0",
        "sld-seed0",
        "teacher",
    ]


# ------------------------------------------------------------------------------- the mechanism it shows


def test_default_teacher_is_wrong_on_a_real_fraction_of_the_strong_views() -> None:
    """The point of the default: the teacher is right on the clean training images but wrong on a real
    share of their strong views (as CIFAR teachers are), so the swap has rows to correct."""
    result = run_digits_demo(DemoConfig(seeds=1, epochs=1))
    clean, strong = result.swaps.view_errors
    assert clean < 0.02 and strong > 0.15, result.swaps
    assert result.swaps.swapped_rows == pytest.approx(1198 * (clean + strong), abs=0.5)
    assert result.swaps.wrong_rows == result.swaps.swapped_rows  # one epoch: the last one is all of it
    assert result.methods["sld"].views == 2


def test_strong_digits_view_is_seeded_per_image_and_keeps_the_range() -> None:
    import torch

    from harness.demo import strong_digits_view

    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    before = images.clone()
    a = strong_digits_view(images, torch.Generator().manual_seed(5))
    b = strong_digits_view(images, torch.Generator().manual_seed(5))
    c = strong_digits_view(images, torch.Generator().manual_seed(6))
    assert torch.equal(images, before)  # the caller's images are not written to
    assert a.shape == images.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)  # the generator alone decides
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    changed = (a - images).abs().flatten(1).amax(dim=1) > 1 / 255
    assert changed.float().mean() > 0.5  # most images change (an identity op can leave one as it was)


def test_swap_counts_and_the_rows_where_the_teacher_is_wrong() -> None:
    """``_swap_stats`` and ``_on_teacher_wrong_rows`` against counts written out by hand."""
    import torch
    from torch import nn

    from harness.demo import _on_teacher_wrong_rows, _swap_stats

    labels = torch.tensor([0, 1, 2, 0])
    # teacher top-1 per row: right, wrong (-> 0), wrong (-> 0; a tie goes to the first index), right
    teacher = torch.tensor([[3.0, 1, 0], [2.0, 1, 0], [1.0, 0, 1], [5.0, 0, 0]])
    perfect = nn.functional.one_hot(labels, 3).float() * 9  # every label's logit on top
    epoch_views = [((torch.zeros(4, 1), perfect),), ((torch.zeros(4, 1), teacher),)]
    stats = _swap_stats(epoch_views, labels)
    assert (stats.swapped_rows, stats.teacher_rows, stats.wrong_rows) == (2, 8, 2)
    assert stats.view_errors == (pytest.approx(0.25),) and stats.rate == 0.25

    class Fixed(nn.Module):  # the "student": predicts class 1 for rows 0-1 and class 0 for rows 2-3
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 1, 0], [0.0, 1, 0], [1.0, 0, 0], [1.0, 0, 0]])[x[:, 0].long()]

    images = torch.arange(4.0).view(4, 1)
    right, repeated = _on_teacher_wrong_rows(Fixed(), ((images, teacher),), labels)
    # wrong rows 1 (label 1, teacher 0) and 2 (label 2, teacher 0): the student says 1 and 0
    assert (right, repeated) == (0.5, 0.5)
    nan = _on_teacher_wrong_rows(Fixed(), ((images, perfect),), labels)
    assert all(math.isnan(v) for v in nan)  # no teacher-wrong rows: undefined, not 0


def test_one_view_trains_on_the_clean_images_alone(tmp_path) -> None:
    out = tmp_path / "demo.json"
    result = runner.invoke(app, ["demo", "--seeds", "1", "--epochs", "1", "--views", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "one view: every method trains on the clean images alone" in result.output
    data = json.loads(out.read_text())
    assert data["teacher_rows"] == 1198 and len(data["teacher_view_errors"]) == 1
    assert {m["views"] for m in data["methods"].values()} == {1}
    refused = runner.invoke(app, ["demo", "--cifar", "--views", "1"])
    assert refused.exit_code == 1 and "--views applies to the digits demo" in refused.output
