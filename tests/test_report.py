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
    total: bool = True,
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
            **loss_record(config.method, epoch, total=total),
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


def loss_record(base: str, epoch: int, *, total: bool = True) -> dict[str, float]:
    """The loss keys the trainer's methods log (harness.train.methods), with made-up values; ``total``:
    also the trainer's ``loss`` (runs from before it was recorded lack it)."""
    terms = {
        "ce": {"loss_ce": 2.0 / epoch},
        "kd": {"loss_kd": 1.0 / epoch, "ce": 2.0 / epoch, "kl_teacher": 0.5 / epoch},
        "sld": {"loss_sld": 1.5 / epoch, "ce": 4.0 / epoch, "kl_teacher": 1.0 / epoch, "kl_pseudo": 0.1},
        "dkd": {"loss_ce": 2.0 / epoch, "loss_dkd": 0.5, "tckd": 0.1, "nckd": 0.2},
        "mlkd": {"loss_ce": 0.2, "loss_kd": 0.5, "loss_cc": 0.01, "loss_bc": 0.02},
    }[base]
    weighted = sum(v for k, v in terms.items() if k.startswith("loss_"))
    return {**terms, "loss": weighted} if total else terms


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
    assert loss_keys(runs) == ["loss", "ce", "kl_teacher", "loss_kd"]
    for r in runs:
        for record in r.records:
            del record["loss"]
    assert loss_keys(runs) == ["ce", "kl_teacher", "loss_kd"]


def test_write_report_writes_markdown_table_and_valid_pngs(three_seeds: Path, tmp_path: Path) -> None:
    from PIL import Image
    from rich.console import Console

    console = Console(record=True, width=200)
    out = tmp_path / "report"
    write_report(load_runs([three_seeds]), out, console)
    text = (out / "REPORT.md").read_text()
    assert (
        f"| {PAIR} | kd | 1 | 3 | 3* | 35.00 ± 5.00 | 33.33 ± 7.64 | 70.66 | -35.66 | 71.00 | 72.34 |" in text
    )
    assert "**Epochs run:** 3 (the published runs train 240: 240 for kd)" in text
    assert f"{PAIR} kd: short: 3/240 epochs" in text
    printed = console.export_text()
    assert "35.00 ± 5.00" in printed and "-35.66" in printed and "Δ best−pub" in printed
    assert "views" in printed
    for name in ("accuracy", "losses", "swap_rates", "methods"):
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


# ----------------------------------------------------------------------------------------------- figures


@pytest.fixture
def kd_and_sld(tmp_path: Path) -> list:
    """Two kd seeds and one sld run of four epochs, the lr decaying after epoch 2, sld's gamma 1."""
    schedule = {"optim.lr_milestones": (2,)}
    make_run(tmp_path, "kd0", [0.10, 0.30, 0.25, 0.20], seed=0, teacher_top1=0.70, overrides=schedule)
    make_run(tmp_path, "kd1", [0.20, 0.22, 0.40, 0.30], seed=1, teacher_top1=0.72, overrides=schedule)
    make_run(
        tmp_path,
        "sld",
        [0.10, 0.20, 0.30, 0.35],
        method="sld",
        teacher_top1=0.71,
        overrides={**schedule, "loss.gamma": 1},
    )
    return summarize(load_runs([tmp_path]))


def visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def horizontal_lines(ax) -> dict[float, str]:
    """y -> colour of the axhline()s of ``ax`` (lines spanning the axes at one height)."""
    from matplotlib.colors import to_hex

    return {
        round(float(line.get_ydata()[0]), 6): to_hex(line.get_color())
        for line in ax.get_lines()
        if list(line.get_xdata()) == [0, 1] and len(set(line.get_ydata())) == 1
    }


def vertical_lines(ax) -> dict[float, str]:
    return {
        float(line.get_xdata()[0]): line.get_linestyle()
        for line in ax.get_lines()
        if list(line.get_ydata()) == [0, 1] and len(set(line.get_xdata())) == 1
    }


def legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_accuracy_figure_has_the_references_best_epoch_and_schedule(kd_and_sld) -> None:
    from matplotlib.colors import to_hex

    from harness.report import figures

    fig = figures(kd_and_sld)["accuracy.png"]
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == [
        "test top-1",
        "test top-1, from the first lr decay on",
        "test top-5",
        "train top-1 (weak view)",
    ]
    (row,) = fig.subfigs
    assert row.get_suptitle() == f"{PAIR}: teacher 71.00% (measured)"  # mean of 70, 72, 71
    full, zoom = axes[:2]
    for ax in (full, zoom):
        # kd's published number (in kd's colour, the first) and the teacher (grey); sld has none here
        assert horizontal_lines(ax) == {70.66: to_hex("C0"), 71.0: to_hex("0.3")}
        # lr x0.1 after epoch 2 (dotted) and the pseudo-teacher after gamma = 1 (dash-dot), between epochs
        expected = {2.5: ":", 1.5: "-."} if ax is full else {2.5: ":"}  # the zoom starts after gamma
        assert vertical_lines(ax) == expected
    stars = {
        (float(line.get_xdata()[0]), round(float(line.get_ydata()[0]), 6))
        for line in full.get_lines()
        if line.get_marker() == "*"
    }
    # kd's mean curve: 15, 26, 32.5, 25 (best: epoch 3); sld's: 10, 20, 30, 35 (epoch 4)
    assert stars == {(3.0, 32.5), (4.0, 35.0)}
    assert zoom.get_xlim()[0] < 2.5 < 3.0 and zoom.get_xlim()[1] == 4.5
    labels = legend_texts(fig)
    assert "kd · 1 view (n=2)" in labels and "sld · 2 views (n=1)" in labels
    assert {"teacher's test top-1", "lr ×0.1 after this epoch"} <= set(labels)
    assert any(t.startswith("γ") for t in labels) and any(t.startswith("★ best epoch") for t in labels)


def test_loss_panels_are_readable_and_the_total_appears_once(kd_and_sld) -> None:
    from harness.report import figures

    fig = figures(kd_and_sld)["losses.png"]
    axes = visible_axes(fig)
    # kd logs loss_kd (= loss), ce, kl_teacher; sld loss_sld (= loss), ce, kl_teacher, kl_pseudo
    assert [ax.get_title() for ax in axes] == [
        "total loss",
        "cross-entropy with the labels",
        "KL to the teacher",
        "KL to the pseudo-teacher",
    ]
    units = [" ".join(t.get_text().split()) for ax in axes for t in ax.texts]
    units = [u for u in units if "per image" in u]  # the unit line under each title
    assert len(units) == 4 and all("summed over the views" in u for u in units)
    assert "Σ_T T²·KL(teacher ‖ student), before kd_weight" in units[2]
    total = axes[0]
    curves = [line for line in total.get_lines() if line.get_marker() == "o"]
    # kd's total is the mean of the two seeds' loss = 1/epoch, sld's loss = 1.5/epoch
    assert sorted(tuple(round(y, 6) for y in line.get_ydata()) for line in curves) == [
        (1.0, 0.5, 0.333333, 0.25),
        (1.5, 0.75, 0.5, 0.375),
    ]
    assert vertical_lines(axes[3]) == {2.5: ":", 1.5: "-."}  # sld's panel: its gamma and lr decay
    assert vertical_lines(axes[0])[1.5] == "-."


def test_runs_without_the_recorded_total_take_it_from_their_one_loss_term(tmp_path: Path) -> None:
    from harness.report import figures, loss_terms

    make_run(tmp_path, "kd", [0.1, 0.2], total=False)
    make_run(tmp_path, "dkd", [0.1, 0.2], method="dkd", total=False)
    kd, dkd = summarize(load_runs([tmp_path]))
    assert loss_terms(kd.runs) == {"loss": "loss_kd", "ce": "ce", "kl_teacher": "kl_teacher"}
    # two weighted terms and no total recorded: both stay, no total is made up
    assert loss_terms(dkd.runs) == {
        "loss_ce": "loss_ce",
        "loss_dkd": "loss_dkd",
        "nckd": "nckd",
        "tckd": "tckd",
    }
    titles = [ax.get_title() for ax in visible_axes(figures([kd, dkd])["losses.png"])]
    assert titles == [
        "total loss",
        "cross-entropy term",
        "DKD term",
        "cross-entropy with the labels",
        "KL to the teacher",
        "DKD: target-class KL (TCKD)",
        "DKD: non-target KL (NCKD)",
    ]


def test_swap_rates_are_fractions_on_a_unit_axis_with_gamma(kd_and_sld) -> None:
    from harness.report import figures

    axes = visible_axes(figures(kd_and_sld)["swap_rates.png"])
    assert [ax.get_title() for ax in axes] == [
        "teacher wrong: rows the swap corrects",
        "student wrong: rows the pseudo-teacher swaps",
    ]
    for ax in axes:
        assert ax.get_ylim() == (0.0, 1.0) and ax.get_ylabel() == "fraction of rows"
        assert vertical_lines(ax)[1.5] == "-."
        for line in ax.get_lines():
            if line.get_marker() == "o":
                assert all(0.0 <= y <= 1.0 for y in line.get_ydata())


def test_a_panel_with_nothing_recorded_says_so(kd_and_sld, tmp_path: Path) -> None:
    from harness.report import figures

    run = make_run(tmp_path / "alone", "ce", [0.1, 0.2], method="ce", pair="resnet110-resnet32")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        del record["teacher_swap_rate"]  # no teacher: no teacher swap rate
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = figures([*kd_and_sld, *summarize(load_runs([run]))])["swap_rates.png"]
    said = "not recorded by these runs"
    panels = [(ax.get_title(), any(t.get_text() == said for t in ax.texts), len(ax.lines))
              for ax in visible_axes(fig)]
    assert len(panels) == 4  # two rows (pairs), two swap rates each
    # only the ce row's teacher panel is empty, and says so; every other panel has its curves
    empty = [(title, lines) for title, is_empty, lines in panels if is_empty]
    assert empty == [("teacher wrong: rows the swap corrects", 0)]
    assert all(lines > 0 for _, is_empty, lines in panels if not is_empty)


def test_methods_figure_bars_are_mean_and_std_beside_the_published_number(kd_and_sld) -> None:
    from harness.report import figures

    (ax,) = visible_axes(figures(kd_and_sld)["methods.png"])
    bars = [p for p in ax.patches if p.get_width() == pytest.approx(0.65)]
    # best epochs: kd 30 and 40 (mean 35, std 7.07), sld 35
    assert [round(b.get_height(), 6) for b in bars] == [35.0, 35.0]
    assert all(b.get_hatch() == "//" for b in bars)  # 4 of 240 epochs: not comparable
    from matplotlib.container import ErrorbarContainer

    (errorbar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]  # sld has one seed
    (low, high) = errorbar.lines[2][0].get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((35.0 - sample_std([30.0, 40.0]), 35.0 + sample_std([30.0, 40.0])))
    assert list(horizontal_lines(ax)) == [71.0]  # the teacher
    marks = [tuple(line.get_ydata()) for line in ax.get_lines() if line.get_linewidth() == pytest.approx(2.6)]
    assert marks == [(70.66, 70.66)]  # kd's published number; sld has none for this pair
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "kd\n1 view, n=2\npublished 70.66",
        "sld\n2 views, n=1\npublished –",
    ]


def test_methods_figure_legend_lies_inside_a_narrow_figure(kd_and_sld) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from harness.report import figures

    fig = figures(kd_and_sld)["methods.png"]
    assert fig.get_figwidth() < 9  # one pair of two methods: a narrow figure
    FigureCanvasAgg(fig).draw()
    (legend,) = fig.legends
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1


def test_every_term_a_method_logs_has_a_readable_panel() -> None:
    """Run each trainer method (pseudo-teacher on where it exists) on tiny logits: every key it returns,
    and the trainer's own, gets a title and a unit line of its own, not the raw key."""
    torch = pytest.importorskip("torch")
    from harness.recipes import method_config
    from harness.report import term_panel
    from harness.train.methods import METHODS, StepLogits

    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, 5, generator=generator) for _ in range(4)]
    step = StepLogits(tuple(logits[:2]), tuple(logits[2:]), torch.arange(8) % 5)
    keys = {"loss", "test_loss"}
    for name in ("ce", "kd+pt", "dkd+pt", "mlkd+pt", "sld"):
        base, loss = method_config(name)
        terms = set(METHODS[base](step, epoch=300, config=loss))
        weighted = {k for k in terms if k.startswith("loss_")}
        keys |= terms - weighted if len(weighted) == 1 else terms  # a method's one loss_* is the total
    for key in sorted(keys):
        panel = term_panel(key)
        assert panel.title != key and panel.unit, key


def test_several_pairs_get_a_loss_figure_each(tmp_path: Path) -> None:
    make_run(tmp_path, "a", [0.1, 0.2], teacher_top1=0.7)
    make_run(tmp_path, "b", [0.1, 0.3], pair="resnet32x4-resnet8x4", teacher_top1=0.79)
    out = tmp_path / "report"
    write_report(load_runs([tmp_path]), out, None)
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "accuracy.png",
        "losses_resnet32x4-resnet8x4.png",
        f"losses_{PAIR}.png",
        "methods.png",
        "swap_rates.png",
    ]
    from PIL import Image

    from harness.report import figures

    figs = figures(summarize(load_runs([tmp_path])))
    assert [sub.get_suptitle() for sub in figs["accuracy.png"].subfigs] == [
        f"{PAIR}: teacher 70.00% (measured)",
        "resnet32x4-resnet8x4: teacher 79.00% (measured)",
    ]
    for name, fig in figs.items():  # each PNG is its figure at 100 dpi
        with Image.open(out / name) as image:
            assert image.size == tuple(round(100 * v) for v in fig.get_size_inches()), name
