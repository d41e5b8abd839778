"""harness.report and ``sld report``: aggregation over seeds against hand-computed numbers, grouping,
flags, plots, and the errors for unreadable run directories. Runs are written by hand (no training)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import save_config, with_overrides
from harness.recipes import pair_config
from harness.report import loss_keys, summarize, write_report
from harness.runs import RunDir, find_run_dirs, load_runs, read_metrics
from harness.runs import RunDirError as ReportError

PAIR = "resnet56-resnet20"  # published: KD 70.66, teacher 72.34, student alone 69.06


def make_run(
    root: Path,
    name: str,
    top1: list[float],
    *,
    method: str = "kd",
    seed: int = 0,
    epochs: int | None = None,
    teacher_top1: float | None = None,
    pair: str = PAIR,
    overrides: dict | None = None,
) -> Path:
    """A run directory as the trainer leaves it: config.json, one metrics record per epoch, teacher.json."""
    run = root / name
    run.mkdir(parents=True)
    config = with_overrides(
        pair_config(pair, method, out_dir=str(run)),
        {"seed": seed, "optim.epochs": epochs or len(top1), **(overrides or {})},
    )
    save_config(config, run / "config.json")
    lines = []
    for epoch, acc in enumerate(top1, start=1):
        record = {
            "epoch": epoch,
            "lr": 0.05,
            "loss_ce": 2.0 / epoch,
            f"loss_{method}": 1.0 / epoch,
            "kl_teacher": 0.5 / epoch,
            "teacher_swap_rate": 0.2,
            "student_swap_rate": 0.9 / epoch,
            "train_top1": acc / 2,
            "test_top1": acc,
            "test_top5": min(1.0, 2 * acc),
            "best_test_top1": max(top1[:epoch]),
            "epoch_time_s": 1.0,
            "images_per_s": 64.0,
        }
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if teacher_top1 is not None:
        teacher = {"teacher": "resnet56", "teacher_top1": teacher_top1, "teacher_train_error": 0.1}
        (run / "teacher.json").write_text(json.dumps(teacher))
    return run


@pytest.fixture
def three_seeds(tmp_path: Path) -> Path:
    make_run(tmp_path, "s0", [0.10, 0.30, 0.25], seed=0, teacher_top1=0.70)
    make_run(tmp_path, "s1", [0.20, 0.22, 0.40], seed=1, teacher_top1=0.72)
    make_run(tmp_path, "s2", [0.05, 0.35, 0.35], seed=2)  # no teacher.json: teacher unknown for this one
    return tmp_path


def sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_aggregation_matches_hand_computed_mean_and_std(three_seeds: Path) -> None:
    (group,) = summarize(load_runs([three_seeds]))
    best, last = [30.0, 40.0, 35.0], [25.0, 40.0, 35.0]  # percent: max over epochs, final epoch
    assert (group.label, group.method, group.variant, group.seeds) == (PAIR, "kd", "", (0, 1, 2))
    assert group.best.mean == pytest.approx(35.0, abs=1e-12)
    assert group.best.std == pytest.approx(5.0, abs=1e-12)  # sqrt((25 + 25 + 0) / 2)
    assert group.last.mean == pytest.approx(sum(last) / 3, abs=1e-12)
    assert group.last.std == pytest.approx(sample_std(last), abs=1e-12)
    assert group.best.std == pytest.approx(sample_std(best), abs=1e-12)
    assert group.published == 70.66 and group.delta == pytest.approx(35.0 - 70.66, abs=1e-12)
    assert group.teacher is not None and group.teacher.mean == pytest.approx(71.0) and group.teacher.n == 2
    assert group.published_teacher == 72.34
    assert group.epochs_done == (3, 3, 3) and group.short and not group.unfinished
    assert str(group.best) == "35.00 ± 5.00"


def test_teacher_accuracy_of_runs_from_before_teacher_json(tmp_path: Path) -> None:
    old = make_run(tmp_path, "old", [0.1, 0.2])
    (old / "summary.json").write_text(json.dumps({"teacher_top1": 0.7, "best_top1": 0.2}))
    assert RunDir(old).load().teacher_top1 == 0.7
    (old / "teacher.json").write_text(json.dumps({"teacher_top1": 0.6}))  # teacher.json wins
    assert RunDir(old).load().teacher_top1 == 0.6
    (old / "teacher.json").write_text("[0.6]")
    with pytest.raises(ReportError, match=rf"{re.escape(str(old / 'teacher.json'))}: not a JSON object"):
        RunDir(old).load()


def test_single_seed_has_no_std_and_ce_compares_with_the_student_alone(tmp_path: Path) -> None:
    make_run(tmp_path, "ce", [0.5, 0.6], method="ce")
    (group,) = summarize(load_runs([tmp_path]))
    assert group.best.std is None and str(group.best) == "60.00"
    assert group.published == 69.06 and group.delta == pytest.approx(60.0 - 69.06)


def test_runs_differing_beyond_seed_and_paths_are_not_averaged(tmp_path: Path) -> None:
    make_run(tmp_path, "a", [0.1, 0.2, 0.3], epochs=3, overrides={"data.data_dir": "/x"})
    make_run(
        tmp_path, "b", [0.4, 0.5, 0.6], epochs=3, seed=1, overrides={"data.data_dir": "/y"}
    )  # same experiment
    make_run(tmp_path, "c", [0.7, 0.8, 0.9, 0.95, 0.9], epochs=5)
    make_run(tmp_path, "sld", [0.3], method="sld")
    make_run(tmp_path, "other", [0.3], pair="resnet32x4-resnet8x4", method="dkd")
    groups = summarize(load_runs([tmp_path]))
    assert [(g.label, g.method, g.variant, len(g.runs)) for g in groups] == [
        (PAIR, "kd", "optim.epochs=3", 2),
        (PAIR, "kd", "optim.epochs=5", 1),
        (PAIR, "sld", "", 1),
        ("resnet32x4-resnet8x4", "dkd", "", 1),
    ]
    assert groups[0].best.mean == pytest.approx(45.0) and groups[1].best.mean == pytest.approx(95.0)
    assert groups[2].published is None and groups[2].delta is None  # no published SLD number for this pair
    assert groups[3].published == 76.32


def test_flags_short_unfinished_and_subset_runs(tmp_path: Path) -> None:
    make_run(tmp_path, "r", [0.1, 0.2], epochs=240, overrides={"data.limit_train": 64})
    (group,) = summarize(load_runs([tmp_path]))
    assert group.unfinished and group.short and group.limited_data
    assert group.flags() == [
        "short: 2/240 epochs",
        "unfinished: configured for 240 epochs",
        "subset: 64 train / all test images",
    ]


def test_loss_keys_are_every_loss_term_total_first(three_seeds: Path) -> None:
    runs = load_runs([three_seeds])
    assert loss_keys(runs) == ["kl_teacher", "loss_ce", "loss_kd"]
    for r in runs:
        r.records[0]["loss"] = 1.0
    assert loss_keys(runs)[0] == "loss"


def test_write_report_writes_markdown_table_and_valid_pngs(three_seeds: Path, tmp_path: Path) -> None:
    from PIL import Image
    from rich.console import Console

    console = Console(record=True, width=200)
    out = tmp_path / "report"
    write_report(load_runs([three_seeds]), out, console)
    text = (out / "REPORT.md").read_text()
    assert f"| {PAIR} | kd | 3 | 3* | 35.00 ± 5.00 | 33.33 ± 7.64 | 70.66 | -35.66 | 71.00 | 72.34 |" in text
    assert "**Epochs run:** 3 (the published runs train 240: 240 for kd)" in text
    assert f"{PAIR} kd: short: 3/240 epochs" in text
    printed = console.export_text()
    assert "35.00 ± 5.00" in printed and "-35.66" in printed and "Δ best−pub" in printed
    for name in ("accuracy", "losses", "swap_rates"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            image.verify()
        assert f"![{name}]({name}.png)" in text


# ------------------------------------------------------------------------------------------------ errors


def test_corrupt_metrics_line_names_file_and_line(three_seeds: Path) -> None:
    metrics = three_seeds / "s1" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n" + lines[1][:25] + "\n")
    with pytest.raises(ReportError, match=rf"{re.escape(str(metrics))} line 2: not valid JSON"):
        load_runs([three_seeds])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"epoch": 1}\n', r"line 1: 'test_top1' must be a number; got None"),
        ('{"epoch": 1, "test_top1": "0.3"}\n', r"line 1: 'test_top1' must be a number; got '0.3'"),
        ("[1, 2]\n", "line 1: expected a JSON object, got list"),
        (
            '{"epoch": 1, "test_top1": 0.1}\n{"epoch": 3, "test_top1": 0.1}\n',
            "line 2: expected epoch 2, got 3",
        ),
    ],
)
def test_bad_metrics_records_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(content)
    with pytest.raises(ReportError, match=rf"{re.escape(str(path))} {message}"):
        read_metrics(path)


def test_run_without_metrics_or_config(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", [0.1])
    (run / "metrics.jsonl").unlink()
    with pytest.raises(ReportError, match=rf"{re.escape(str(run / 'metrics.jsonl'))}: no such metrics file"):
        RunDir(run).load()
    (run / "metrics.jsonl").write_text("\n")
    with pytest.raises(ReportError, match="no epoch recorded yet"):
        RunDir(run).load()
    (run / "config.json").unlink()
    with pytest.raises(ReportError, match=rf"{re.escape(str(run / 'config.json'))}: no such config file"):
        RunDir(run).load()


def test_paths_that_hold_no_run(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=rf"{re.escape(str(tmp_path / 'nope'))}: no such directory"):
        find_run_dirs([tmp_path / "nope"])
    with pytest.raises(
        ReportError, match="not a run directory \\(no metrics.jsonl\\) and no run directory below"
    ):
        find_run_dirs([tmp_path])


def test_report_command(three_seeds: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        app, ["report", str(three_seeds / "s0"), str(three_seeds / "s1"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "| 2 | 3* | 35.00 ± 7.07 |" in (out / "REPORT.md").read_text()  # s0 and s1 only: best 30, 40
    (three_seeds / "s2" / "metrics.jsonl").write_text("{oops\n")
    failed = CliRunner().invoke(app, ["report", str(three_seeds)])
    assert failed.exit_code == 1
    assert "metrics.jsonl line 1: not valid JSON" in failed.output and "Traceback" not in failed.output


def test_method_names_group_rows_and_find_their_published_numbers(tmp_path: Path) -> None:
    make_run(tmp_path, "ls-mlkd", [0.30, 0.40, 0.35], method="ls-mlkd")
    make_run(tmp_path, "mlkd", [0.20, 0.25, 0.30], method="mlkd")
    make_run(tmp_path, "sld-dkd", [0.10, 0.20, 0.30], method="sld-dkd")
    make_run(tmp_path, "kd", [0.10, 0.20, 0.25], method="kd")
    make_run(tmp_path, "kd+pt", [0.10, 0.20, 0.40], method="kd+pt")
    groups = summarize(load_runs([tmp_path]))
    # the named order: the main table (kd, mlkd, ls-mlkd), then the ablations (kd+pt, sld-dkd)
    assert [(g.method, g.published, g.paper_epochs) for g in groups] == [
        ("kd", 70.66, 240),
        ("mlkd", 72.19, 480),
        ("ls-mlkd", 72.33, 480),  # the LS README; MLKD's recipe trains 480 epochs
        ("kd+pt", None, 240),
        ("sld-dkd", None, 240),
    ]
    assert groups[2].flags() == ["short: 3/480 epochs"]
    write_report(load_runs([tmp_path]), tmp_path / "report", None)
    text = (tmp_path / "report" / "REPORT.md").read_text()
    assert f"| {PAIR} | 25.00* (70.66) | 30.00* (72.19) | 40.00* (72.33) |" in text  # side by side
    assert "| pair | kd | mlkd | ls-mlkd |" in text
    assert "240 for kd, kd+pt, sld-dkd; 480 for mlkd, ls-mlkd" in text
    assert "- ls-mlkd (MLKD on standardized logits (the LS repository's rewrite)): " in text
    assert "- kd+pt (KD + the pseudo-teacher): none published" in text


def test_one_broken_run_does_not_hide_the_good_ones(three_seeds: Path, tmp_path: Path) -> None:
    (three_seeds / "s1" / "metrics.jsonl").write_text("{oops\n")
    broken_config = make_run(three_seeds, "s3", [0.5], seed=3)
    (broken_config / "config.json").write_text('{"student": "resnet8", "optim": {"epochs": "3"}}')
    out = tmp_path / "rep"
    paths = [str(three_seeds), str(tmp_path / "nope")]
    result = CliRunner().invoke(app, ["report", *paths, "--out", str(out)])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "error: 3 run(s) could not be read and are not in the report:" in output
    assert f"{three_seeds / 's1'}: {three_seeds / 's1' / 'metrics.jsonl'} line 1: not valid JSON" in output
    assert f"{broken_config}: {broken_config / 'config.json'}: optim.epochs must be an integer" in output
    assert f"{tmp_path / 'nope'}: {tmp_path / 'nope'}: no such directory" in output
    assert "Traceback" not in result.output
    report = (out / "REPORT.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(f"| {three_seeds}")]
    runs = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert runs == [str(three_seeds / "s0"), str(three_seeds / "s2")]  # the good ones, reported
    assert f"| 2 | 3* | 32.50 ± {sample_std([30.0, 35.0]):.2f} |" in report  # s0 and s2: best 30 and 35
    assert "## Runs that could not be read (not in the table)" in report
    assert f"- `{three_seeds / 's1'}`: " in report and f"- `{broken_config}`: " in report
