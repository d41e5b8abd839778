"""``sld reproduce`` and harness.reproduce on a synthetic archive (64 train / 32 test images).

The grid is one pair x {kd, sld} x 2 seeds, 2 epochs. To stay fast on two CPU cores every model is
swapped for resnet8 (``pair_config`` patched where harness.reproduce reads it); the pair's recipe,
published numbers and the whole command path are otherwise the real ones. The shared ``grid`` fixture
interrupts the last run after its first epoch (as Ctrl-C would) and then runs the command again."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import harness.reproduce  # noqa: E402
import harness.train.loop  # noqa: E402
from harness.config import (  # noqa: E402
    CEConfig,
    ConfigError,
    OptimConfig,
    TrainConfig,
    load_config,
    save_config,
    with_overrides,
)
from harness.recipes import pair_config, teacher_config  # noqa: E402
from harness.report import summarize  # noqa: E402
from harness.reproduce import ensure_teacher, grid_configs, teacher_trainer  # noqa: E402
from harness.runs import RunDir, RunState, load_runs, read_metrics  # noqa: E402
from harness.runs import RunDirError as ReportError  # noqa: E402

from .train_helpers import (  # noqa: E402
    invoke,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    write_tiny_cifar,
    write_untrained_teacher,
)

PAIR = "resnet56-resnet20"  # published KD 70.66, SLD none, teacher 72.34
TINY = ["--epochs", "2", "--batch-size", "32", "--limit-train", "64", "--limit-test", "32", "--device", "cpu"]


_REAL_TRAIN = harness.train.loop.train  # spies wrap this, never each other


class _Interrupt(Exception):
    pass


def tiny_pair_config(pair: str, method: str = "sld", *, out_dir: str | None = None) -> TrainConfig:
    """The pair's recipe with resnet8 for both models (the real ones take minutes on a CPU)."""
    config = pair_config(pair, method, out_dir=out_dir)
    return with_overrides(config, {"student": "resnet8", "teacher": "resnet8" if method != "ce" else None})


@dataclass
class Grid:
    out: Path
    runs: Path
    data: Path
    first: object  # CliRunner results
    second: object
    first_calls: list[tuple[str, bool]]  # (out_dir, resume) of every trainer call
    second_calls: list[tuple[str, bool]]
    mtimes_after_first: dict[str, int]  # last.pt of the runs the first invocation finished
    interrupted_metrics: list[dict]


def spy_train(monkeypatch: pytest.MonkeyPatch, calls: list, interrupt: str | None = None) -> None:
    """Record every call of the trainer; stop the run in ``interrupt`` after epoch 1."""

    def train(config, device, *, resume=False, **kwargs):
        calls.append((config.out_dir, resume))
        if interrupt is not None and config.out_dir.endswith(interrupt):

            def stop(record: dict) -> None:
                if record["epoch"] == 1:
                    raise _Interrupt

            kwargs["on_epoch_end"] = stop
        return _REAL_TRAIN(config, device, resume=resume, **kwargs)

    monkeypatch.setattr(harness.train.loop, "train", train)


def reproduce_args(grid_out: Path, runs: Path, data: Path, *extra: str) -> list:
    return [
        "reproduce",
        "--pairs",
        PAIR,
        "--methods",
        "kd,sld",
        "--seeds",
        "2",
        "--out",
        grid_out,
        "--runs-dir",
        runs,
        "--data-dir",
        data,
        *TINY,
        *extra,
    ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32, seed=2)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Grid:
    root = tmp_path_factory.mktemp("grid")
    out, runs = root / "out", root / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness.reproduce, "pair_config", tiny_pair_config)
        first_calls: list = []
        spy_train(mp, first_calls, interrupt="sld/seed1")
        first = invoke(*reproduce_args(out, runs, data_dir))
        mtimes = {
            d: (out / PAIR / d / "last.pt").stat().st_mtime_ns for d in ("kd/seed0", "kd/seed1", "sld/seed0")
        }
        interrupted = read_metrics(out / PAIR / "sld/seed1/metrics.jsonl")
        second_calls: list = []
        spy_train(mp, second_calls)
        second = invoke(*reproduce_args(out, runs, data_dir))
    return Grid(out, runs, data_dir, first, second, first_calls, second_calls, mtimes, interrupted)


def test_first_invocation_trains_the_teacher_first_then_the_grid(grid: Grid) -> None:
    assert isinstance(grid.first.exception, _Interrupt)
    run = lambda m, s: str(grid.out / PAIR / m / f"seed{s}")  # noqa: E731
    assert grid.first_calls == [
        (str(grid.runs / "teachers" / "resnet8"), False),
        (run("kd", 0), False),
        (run("kd", 1), False),
        (run("sld", 0), False),
        (run("sld", 1), False),
    ]
    assert [r["epoch"] for r in grid.interrupted_metrics] == [1]
    config = json.loads((grid.out / PAIR / "sld/seed1/config.json").read_text())
    assert (config["seed"], config["optim"]["lr"], config["data"]["views"]) == (1, 0.025, 2)  # SLD recipe
    assert config["teacher_checkpoint"] == str(grid.runs / "teachers/resnet8/best.pt")
    teacher = load_config(grid.runs / "teachers/resnet8/config.json")  # sld train-teacher's recipe
    assert teacher == with_overrides(
        teacher_config("resnet8", grid.runs),
        {
            "optim.epochs": 2,
            "optim.batch_size": 32,
            "data.data_dir": str(grid.data),
            "data.limit_train": 64,
            "data.limit_test": 32,
        },
    )


def test_rerun_resumes_the_interrupted_run_and_skips_finished_ones(grid: Grid) -> None:
    assert grid.second.exit_code == 0, grid.second.output
    assert grid.second_calls == [(str(grid.out / PAIR / "sld/seed1"), True)]  # no teacher, no other run
    for d, mtime in grid.mtimes_after_first.items():
        assert (grid.out / PAIR / d / "last.pt").stat().st_mtime_ns == mtime, d
    resumed = read_metrics(grid.out / PAIR / "sld/seed1/metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert resumed[0] == grid.interrupted_metrics[0]  # epoch 1 kept, not retrained
    assert "resuming 1/1" in grid.second.output and "skipped" in grid.second.output


def test_report_has_published_numbers_deltas_and_the_short_run_flag(grid: Grid) -> None:
    best = {
        method: [
            100
            * max(r["test_top1"] for r in read_metrics(grid.out / PAIR / method / f"seed{s}/metrics.jsonl"))
            for s in (0, 1)
        ]
        for method in ("kd", "sld")
    }
    kd_mean = sum(best["kd"]) / 2
    report = (grid.out / "REPORT.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(f"| {PAIR} |")]
    assert len(rows) == 3  # kd and sld in the main table, then the pair's side-by-side row
    kd, sld = (row.split(" | ") for row in rows[:2])
    assert rows[2] == f"| {PAIR} | {kd_mean:.2f}* (70.66) | {sum(best['sld']) / 2:.2f}* (–) |"
    # method, views (the recipes': kd one, sld weak + strong), seeds, epochs
    assert kd[1:5] == ["kd", "1", "2", "2*"] and sld[1:5] == ["sld", "2", "2", "2*"]
    assert kd[5].startswith(f"{kd_mean:.2f} ± ") and sld[5].startswith(f"{sum(best['sld']) / 2:.2f} ± ")
    assert kd[7:9] == ["70.66", f"{kd_mean - 70.66:+.2f}"]
    assert sld[7:9] == ["–", "–"]  # no published SLD number for this pair
    assert kd[10] == "72.34 |"
    assert "**Epochs run:** 2 (the published runs train 240: 240 for kd, sld)" in report
    assert f"{PAIR} kd: short: 2/240 epochs; subset: 64 train / 32 test images" in report
    for png in ("accuracy.png", "losses.png", "swap_rates.png", "methods.png"):
        assert (grid.out / png).read_bytes()[:4] == b"\x89PNG"
    assert "Δ best−pub" in grid.second.output and f"{kd_mean - 70.66:+.2f}" in grid.second.output


def test_report_command_gives_the_same_numbers(grid: Grid, tmp_path: Path) -> None:
    result = invoke("report", grid.out, "--out", tmp_path)
    assert result.exit_code == 0, result.output

    def table(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if line.startswith("| ")]

    assert table(tmp_path / "REPORT.md") == table(grid.out / "REPORT.md")
    ours = summarize(load_runs([grid.out]))
    assert [(g.method, g.best, g.last) for g in ours] == [
        (g.method, g.best, g.last) for g in summarize(load_runs(sorted((grid.out / PAIR).glob("*/seed*"))))
    ]


def test_third_invocation_trains_nothing(grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.reproduce, "pair_config", tiny_pair_config)
    calls: list = []
    spy_train(monkeypatch, calls)
    before = {p: p.stat().st_mtime_ns for p in grid.out.rglob("*.pt")}
    result = invoke(*reproduce_args(grid.out, grid.runs, grid.data))
    assert result.exit_code == 0, result.output
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in grid.out.rglob("*.pt")} == before


def test_finished_run_with_another_config_is_refused(grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.reproduce, "pair_config", tiny_pair_config)
    args = reproduce_args(grid.out, grid.runs, grid.data)
    args[args.index("--epochs") + 1] = "3"
    result = invoke(*args)
    assert result.exit_code == 1
    assert "holds a finished run with another config (optim.epochs: 2 -> 3)" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ cheap pieces


def test_grid_configs_follow_each_methods_recipe(tmp_path: Path) -> None:
    configs = grid_configs([PAIR], ["kd", "sld"], 2, tmp_path, {"optim.epochs": 3, "data.limit_train": None})
    assert [c.out_dir for c in configs] == [
        str(tmp_path / PAIR / m / f"seed{s}") for m in ("kd", "sld") for s in (0, 1)
    ]
    assert [c.seed for c in configs] == [0, 1, 0, 1]
    assert [(c.optim.lr, c.data.views, c.optim.epochs) for c in configs[::2]] == [(0.05, 1, 3), (0.025, 2, 3)]
    assert all(c.teacher_checkpoint is None and c.pair == PAIR for c in configs)
    with pytest.raises(ConfigError, match="seeds must be an integer >= 1; got 0"):
        grid_configs([PAIR], ["kd"], 0, tmp_path)


def fake_run(directory: Path, epochs: int, recorded: int, *, checkpoint: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(student="resnet8", method="ce", loss=CEConfig(), optim=OptimConfig(epochs=epochs))
    save_config(config, directory / "config.json")
    lines = [json.dumps({"epoch": e, "test_top1": 0.1}) for e in range(1, recorded + 1)]
    (directory / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if checkpoint:
        (directory / "last.pt").write_bytes(b"")
        (directory / "best.pt").write_bytes(b"")
    if checkpoint and recorded >= epochs:  # what a finished run leaves last
        (directory / "summary.json").write_text("{}\n")
    return directory


def test_run_state(tmp_path: Path) -> None:
    assert RunDir(tmp_path / "absent").state() is RunState.NEW
    assert RunDir(fake_run(tmp_path / "a", 3, 1, checkpoint=False)).state() is RunState.NEW
    assert RunDir(fake_run(tmp_path / "b", 3, 2)).state() is RunState.PARTIAL
    assert RunDir(fake_run(tmp_path / "c", 3, 3)).state() is RunState.DONE
    (tmp_path / "c" / "summary.json").unlink()  # killed after its last checkpoint, before its summary
    assert RunDir(tmp_path / "c").state() is RunState.PARTIAL  # resuming repairs and finishes it
    torn = fake_run(tmp_path / "d", 3, 2)
    with (torn / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "test_to')  # cut short while written (no newline): not a record, no error
    assert RunDir(torn).state() is RunState.PARTIAL
    (tmp_path / "c" / "metrics.jsonl").write_text('{"epoch": 1, "test_top1": 0.1}\nnot json\n')
    with pytest.raises(
        ReportError, match=re.escape(f"{tmp_path / 'c' / 'metrics.jsonl'} line 2: not valid JSON")
    ):
        RunDir(tmp_path / "c").state()


@pytest.mark.parametrize(
    ("recorded", "expected_calls"),
    [(None, [("resnet8", False)]), (1, [("resnet8", True)]), (3, [])],
    ids=["missing-trains", "interrupted-resumes", "finished-reused"],
)
def test_ensure_teacher(tmp_path: Path, recorded: int | None, expected_calls: list) -> None:
    teacher_dir = tmp_path / "teachers" / "resnet8"
    if recorded is not None:
        fake_run(teacher_dir, 3, recorded)
    calls: list = []

    def train_teacher(model: str, resume: bool) -> None:
        calls.append((model, resume))
        fake_run(teacher_dir, 3, 3)  # what the real command leaves behind

    path = ensure_teacher("resnet8", tmp_path, train_teacher, min_epochs=3)
    assert calls == expected_calls and path == teacher_dir / "best.pt"


def test_short_teacher_does_not_teach_a_longer_reproduction(tmp_path: Path) -> None:
    fake_run(tmp_path / "teachers" / "resnet8", 2, 2)
    with pytest.raises(ConfigError, match=r"trained for 2 epochs, fewer than the 240 this reproduction runs"):
        ensure_teacher("resnet8", tmp_path, lambda m, r: None, min_epochs=240)


def test_teacher_trainer_raises_python_errors_not_cli_exits(tmp_path: Path) -> None:
    train_teacher = teacher_trainer(tmp_path, torch.device("cpu"))
    missing = f"cannot resume: {tmp_path / 'teachers/resnet8/config.json'} does not exist"
    with pytest.raises(ConfigError, match=re.escape(missing)):
        train_teacher("resnet8", True)  # resume a teacher run that does not exist


def test_bad_pair_or_method_is_one_line() -> None:
    result = invoke("reproduce", "--pairs", "resnet56-resnet9")
    assert result.exit_code == 1 and "unknown pair 'resnet56-resnet9'" in result.output
    result = invoke("reproduce", "--pairs", PAIR, "--methods", "kd,mlkd2")
    assert result.exit_code == 1 and "unknown method 'mlkd2'" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------ --teacher MODEL=PATH


def test_a_given_teacher_file_teaches_the_grid_and_nothing_is_trained_for_it(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.reproduce, "pair_config", tiny_pair_config)
    calls: list = []
    spy_train(monkeypatch, calls)
    teacher = write_untrained_teacher(tmp_path / "mine" / "resnet8.pt")
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = reproduce_args(out, runs, data_dir, "--teacher", f"resnet8={teacher}")
    args[args.index("--seeds") + 1], args[args.index("--epochs") + 1] = "1", "1"
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert calls == [(str(out / PAIR / m / "seed0"), False) for m in ("kd", "sld")]  # no teacher run
    assert not (runs / "teachers").exists()
    for method in ("kd", "sld"):
        recorded = json.loads((out / PAIR / method / "seed0" / "config.json").read_text())
        assert recorded["teacher_checkpoint"] == str(teacher.resolve())


def test_run_grid_jobs_gives_each_run_the_given_teacher_file(tmp_path: Path) -> None:
    from harness.jobs import JobOutcome

    configs = [
        with_overrides(tiny_pair_config(PAIR, m), {"out_dir": str(tmp_path / m)}) for m in ("kd", "sld")
    ]
    teacher = write_untrained_teacher(tmp_path / "resnet8.pt")
    launched: list = []

    def launch(jobs):
        launched.append([load_config(job.run_dir / "job.json") for job in jobs])
        return [JobOutcome(job, "done") for job in jobs]

    outcomes = harness.reproduce.run_grid_jobs(
        configs, launch, runs_dir=tmp_path / "runs", teacher_paths={"resnet8": teacher}
    )
    assert [o.ok for o in outcomes] == [True, True]
    (students,) = launched  # one batch: no teacher job before it
    assert [c.teacher_checkpoint for c in students] == [str(teacher)] * 2


def test_ensure_teacher_takes_a_given_file_before_any_lookup(tmp_path: Path) -> None:
    fake_run(tmp_path / "teachers" / "resnet8", 3, 1)  # an interrupted own run: not resumed
    given = write_untrained_teacher(tmp_path / "given.pt")
    never = lambda model, resume: pytest.fail("trained a teacher that was given")  # noqa: E731
    assert ensure_teacher("resnet8", tmp_path, never, min_epochs=240, given=given) == given
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ConfigError, match=re.escape(f"teacher 'resnet8': no checkpoint file {missing}")):
        ensure_teacher("resnet8", tmp_path, never, given=missing)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("resnet56", "--teacher takes MODEL=PATH (e.g. --teacher resnet34=resnet34-333f7ec4.pth); "
         "got 'resnet56'"),
        ("=t.pt", "--teacher takes MODEL=PATH"),
        ("resnet56=", "--teacher takes MODEL=PATH"),
        ("resnet110=t.pt", "--teacher resnet110=t.pt: 'resnet110' teaches none of this grid's runs "
         "(its teachers: resnet56)"),
        ("resnet56=nowhere.pt", "--teacher resnet56=nowhere.pt: no such file nowhere.pt"),
    ],
    ids=["no-equals", "no-model", "no-path", "not-a-teacher-of-the-grid", "missing-file"],
)
def test_a_bad_teacher_value_is_one_line(
    value: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({}, tmp_path / "t.pt")
    result = invoke("reproduce", "--pairs", PAIR, "--methods", "kd", "--teacher", value, "--out", tmp_path)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / PAIR).exists()


def test_a_teacher_given_twice_is_refused(tmp_path: Path) -> None:
    teacher = tmp_path / "t.pt"
    torch.save({}, teacher)
    given = ["--teacher", f"resnet56={teacher}"] * 2
    result = invoke("reproduce", "--pairs", PAIR, "--methods", "kd", *given, "--out", tmp_path)
    assert result.exit_code == 1 and "--teacher resnet56=... is given twice" in result.output, result.output


def test_a_missing_teacher_names_both_ways_to_pass_one_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.runs import TeacherNotFoundError, find_teacher

    monkeypatch.chdir(tmp_path)  # no download_ckpts/ here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for model in ("resnet56", "resnet34"):  # a CIFAR teacher (trained here), an ImageNet one (fetched)
        with pytest.raises(TeacherNotFoundError) as error:
            find_teacher(model, tmp_path / "runs")
        assert f"sld train --teacher PATH, sld reproduce --teacher {model}=PATH" in str(error.value)
