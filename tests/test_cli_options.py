"""The command line a researcher tunes runs with: ``--set KEY=VALUE``, ``--print-config``, the loss flags,
choices and defaults in ``--help``, the views in the config table and ``sld pairs``, ``sld eval --json``,
and the progress bar (loss from the first step, time left)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rich.console import Console  # noqa: E402

from harness.commands._common import apply_set  # noqa: E402
from harness.config import ConfigError, train_config_from_dict, with_overrides  # noqa: E402
from harness.recipes import LS_DKD_BY_PAIR, pair_config, teacher_config  # noqa: E402
from harness.train import step as step_module  # noqa: E402
from harness.train.console import RunEta, duration, print_config  # noqa: E402
from harness.train.distributed import DistContext  # noqa: E402

from .train_helpers import (  # noqa: E402
    invoke,
    one_thread,  # noqa: F401 (autouse: tiny models train faster on one thread)
    read_metrics,
    write_tiny_cifar,
)

PAIR = "wrn40_2-wrn16_2"
TINY = ["--epochs", "1", "--batch-size", "16", "--limit-train", "64", "--limit-test", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=64, n_test=32, seed=3)


def printed(*args: str | Path) -> dict:
    """``sld ARGS --print-config`` (exit code 0) as the config dict it prints on stdout."""
    result = invoke(*args, "--print-config")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ----------------------------------------------------------------------------------------------- --set


def test_set_reads_json_values_and_the_methods_section_by_its_name() -> None:
    base = pair_config(PAIR)  # sld
    cfg = apply_set(
        base,
        [
            "sld.gamma=120",  # the method's section by its name ...
            "loss.ce_weight=0.25",  # ... or as loss.
            "optim.weight_decay=1e-4",
            "optim.lr_milestones=[100, 200]",
            "sld.temperatures=[1, 4]",
            "optim.nesterov=true",
            "data.image_size=null",
            "data.dataset=cifar100",  # not JSON: a string
            'pair="wrn40_2-wrn16_2"',  # JSON string
            "seed=7",
        ],
    )
    assert (cfg.loss.gamma, cfg.loss.ce_weight, cfg.loss.temperatures) == (120, 0.25, (1.0, 4.0))
    assert (cfg.optim.weight_decay, cfg.optim.lr_milestones, cfg.optim.nesterov) == (1e-4, (100, 200), True)
    assert (cfg.data.image_size, cfg.data.dataset, cfg.pair, cfg.seed) == (None, "cifar100", PAIR, 7)
    kd = apply_set(pair_config(PAIR, "kd@cswap-lt0.5"), ["kd.temperature=2", "kd.swap_threshold=inf"])
    assert (kd.loss.temperature, kd.loss.swap_threshold) == (2, math.inf)
    assert apply_set(base, None) == base and apply_set(base, []) == base


@pytest.mark.parametrize(
    ("items", "flags", "message"),
    [
        (["gamma"], {}, "--set takes KEY=VALUE"),
        (["=3"], {}, "--set takes KEY=VALUE"),
        (["kd.temperature=2"], {}, "this run's method is 'sld', so its loss settings are sld.* (or loss.*)"),
        (["sld.temprature=2"], {}, "--set 'sld.temprature=2': loss.temprature: SLDConfig has no field"),
        (["optim.epochs=1.5"], {}, "--set 'optim.epochs=1.5': optim.epochs must be an integer; got 1.5"),
        (["optim.epochs=0"], {}, "optim.epochs must be an integer >= 1"),
        (["optim.lr=fast"], {}, "optim.lr must be a finite number; got 'fast'"),
        (["sld.pseudo_teacher=yes"], {}, "loss.pseudo_teacher must be true or false; got 'yes'"),
        (["seed=1", "seed=2"], {}, "both set seed; give it once"),
        (["sld.gamma=3"], {"loss.gamma": 5.0}, "sets loss.gamma, which a flag of this command sets too"),
    ],
)
def test_set_refuses_what_a_config_file_would_refuse(items: list[str], flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_set(pair_config(PAIR), items, flags=flags)


def test_set_and_print_config_on_the_command_line(tmp_path: Path) -> None:
    result = invoke(
        "train", "--pair", PAIR, "--method", "kd", "--set", "optim.weight_decay=1e-4",
        "--set", "kd.temperature=2", "--data-dir", tmp_path / "no-data-here", "--runs-dir", tmp_path,
        "--print-config",
    )
    assert result.exit_code == 0, result.output
    config = train_config_from_dict(json.loads(result.stdout))  # what --config takes back
    expected = pair_config(PAIR, "kd")
    assert (config.optim.weight_decay, config.loss.temperature) == (1e-4, 2)
    assert (config.optim.lr, config.data.views, config.method) == (expected.optim.lr, 1, "kd")
    assert config.data.data_dir == str(tmp_path / "no-data-here")  # never opened: no data is loaded
    assert config.teacher_checkpoint is None and "note: teacher_checkpoint stays null" in result.stderr
    assert not (tmp_path / "no-data-here").exists() and not Path(config.out_dir).exists()

    teacher = printed("train-teacher", "--model", "resnet8", "--set", "optim.lr=0.02",
                      "--weight-decay", "1e-3")
    assert (teacher["optim"]["lr"], teacher["optim"]["weight_decay"], teacher["method"]) == (0.02, 1e-3, "ce")

    refused = invoke("train", "--pair", PAIR, "--set", "dkd.beta=2", "--print-config")
    assert refused.exit_code == 1 and "its loss settings are sld.*" in refused.output
    assert "Traceback" not in refused.output


def test_wrn_batch_norm_flags_land_in_the_config(tmp_path: Path, data_dir: Path) -> None:
    student = ["train", "--pair", PAIR, "--runs-dir", tmp_path]
    assert printed(*student)["official_wrn_bn"] is True  # a student's default: the official forward
    assert printed(*student, "--clean-wrn-bn")["official_wrn_bn"] is False
    assert printed("train-teacher", "--model", "wrn_40_2")["official_wrn_bn"] is False  # a teacher's default
    assert printed("train-teacher", "--model", "wrn_40_2", "--official-wrn-bn")["official_wrn_bn"] is True

    out = tmp_path / "teacher"  # a real run: the field in config.json, and the model trained with it
    result = invoke(
        "train-teacher", "--model", "wrn_16_1", "--official-wrn-bn", "--data-dir", data_dir, "--out", out,
        "--epochs", "1", "--batch-size", "16", "--limit-train", "32", "--limit-test", "16", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["official_wrn_bn"] is True
    model = torch.load(out / "last.pt", weights_only=True)["model"]
    steps = 32 // 16
    assert int(model["block1.layer.0.bn1.num_batches_tracked"]) == steps
    assert int(model["block2.layer.0.bn1.num_batches_tracked"]) == 2 * steps  # run twice per forward


# ------------------------------------------------------------------------------------------ loss flags


@pytest.mark.parametrize(
    ("method", "flags", "expected"),
    [
        ("kd", ["--ce-weight", "0.5", "--kd-weight", "0.7", "--kd-temperature", "2"],
         {"ce_weight": 0.5, "kd_weight": 0.7, "temperature": 2.0}),
        ("dkd", ["--ce-weight", "2", "--dkd-alpha", "0.5", "--dkd-beta", "3", "--dkd-warmup", "5",
                 "--kd-temperature", "1"],
         {"ce_weight": 2.0, "alpha": 0.5, "beta": 3.0, "warmup_epochs": 5, "temperature": 1.0}),
        ("mlkd", ["--kd-temperature", "3", "--kd-weight", "0.5"], {"temperature": 3.0, "kd_weight": 0.5}),
        ("sld", ["--ce-weight", "0.2", "--kd-weight", "0.8", "--temperatures", "1,2"],
         {"ce_weight": 0.2, "kd_weight": 0.8, "temperatures": [1.0, 2.0]}),
        # logit standardization: --kd-weight is the rewrite's weight (CE 1 as published, then the flag)
        ("ls-kd", ["--kd-weight", "3"], {"kd_weight": 3.0, "ce_weight": 1.0, "logit_stand": True}),
        ("ls-kd", ["--kd-weight", "3", "--ce-weight", "0.5"], {"kd_weight": 3.0, "ce_weight": 0.5}),
        ("ls-dkd", ["--kd-weight", "3"], {"alpha": 3.0, "beta": LS_DKD_BY_PAIR[PAIR][2] * 3.0}),
    ],
)
def test_loss_flags_set_their_fields(tmp_path: Path, method: str, flags: list[str], expected: dict) -> None:
    config = printed("train", "--pair", PAIR, "--method", method, *flags, "--runs-dir", tmp_path)
    assert {key: config["loss"][key] for key in expected} == expected


@pytest.mark.parametrize(("method", "views"), [("sld", 2), ("mlkd", 2), ("kd", 1), ("dkd", 1), ("ls-kd", 1)])
def test_student_runs_take_the_views_of_their_methods_recipe(tmp_path: Path, method: str, views: int) -> None:
    # the published recipes: SLD and MLKD read a weak and a strong view, KD and DKD one weak view
    by_pair = printed("train", "--pair", PAIR, "--method", method, "--runs-dir", tmp_path)
    by_student = printed("train", "--student", "resnet8", "--teacher-model", "resnet14", "--method", method,
                         "--runs-dir", tmp_path)
    assert by_pair["data"]["views"] == by_student["data"]["views"] == views


@pytest.mark.parametrize(
    ("method", "flags", "message"),
    [
        ("kd", ["--dkd-alpha", "2"], "--dkd-alpha applies to method dkd, not 'kd'"),
        ("sld", ["--dkd-warmup", "2"], "--dkd-warmup applies to method dkd, not 'sld'"),
        ("sld", ["--kd-temperature", "2"], "--kd-temperature applies to method kd / dkd / mlkd, not 'sld'"),
        ("dkd", ["--kd-weight", "2"], "--kd-weight applies to method kd / mlkd / sld, not 'dkd'"),
        ("ce", ["--ce-weight", "2"], "--ce-weight applies to method kd / dkd / mlkd / sld, not 'ce'"),
        ("mlkd", ["--temperatures", "1,2"], "--temperatures applies to method sld, not 'mlkd'"),
        ("ls-kd", ["--kd-temperature", "2", "--base-temp", "3"], "--kd-temperature and --base-temp"),
        ("kd", ["--kd-temperature", "0"], "kd.temperature must be > 0; got 0.0"),
    ],
)
def test_a_flag_that_does_not_fit_the_method_names_the_methods_it_fits(
    method: str, flags: list[str], message: str
) -> None:
    result = invoke("train", "--pair", PAIR, "--method", method, *flags, "--print-config")
    assert result.exit_code == 1
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_weight_decay_and_the_trackers_are_shared_flags() -> None:
    config = printed("train-teacher", "--model", "resnet8", "--weight-decay", "0", "--log", "csv",
                     "--log-every", "7")
    assert (config["optim"]["weight_decay"], config["trackers"], config["log_every"]) == (0.0, ["csv"], 7)
    assert teacher_config("resnet8").trackers == ()  # nothing tracked unless asked


# ---------------------------------------------------------------------------------------------- --help


def _help(*command: str) -> str:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.output


def test_help_shows_choices_and_defaults_and_no_bool_type_on_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping inside the rendered table
    for command in ("train", "train-teacher", "eval", "reproduce", "pairs", "demo", "bench", "report"):
        assert "<bool>" not in _help(command), command
    text = _help("train")
    assert "<off|bf16|fp16>" in text and "<cifar100|imagenet|folder>" in text
    assert "<none|swap|conditional_swap|soft_addition" in text
    assert "[default: runs]" in text  # --runs-dir: a default that is not the recipe's is shown
    for name in ("ls-mlkd", "sld-dkd", "kd+pt", "sld@max-add"):
        assert name in text  # --method lists the named methods
    assert "ls-kd@swap+pt" in text  # ... and says other compositions are names too
    for flag in ("--ce-weight", "--kd-weight", "--kd-temperature", "--dkd-alpha", "--dkd-beta",
                 "--dkd-warmup", "--weight-decay", "--set", "--print-config", "--log", "--log-every"):
        assert flag in text, flag
    assert "<off|bf16|fp16>" in _help("eval")


def test_a_value_outside_the_choices_is_refused_with_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # the error box on one line
    result = invoke("train", "--pair", PAIR, "--amp", "fp8")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "'fp8' is not one of 'off', 'bf16', 'fp16'" in text
    result = invoke("train", "--pair", PAIR, "--teacher-processing", "flip")
    assert result.exit_code == 2 and "'flip' is not one of" in " ".join(result.output.split())
    assert printed("train", "--pair", PAIR, "--amp", "bf16")["amp"] == "bf16"  # a plain string in the config


# --------------------------------------------------------------------------------------------- views


@pytest.mark.parametrize(
    ("method", "views"), [("kd", "1 (weak only)"), ("sld", "2 (weak + strong, losses summed)")]
)
def test_the_config_table_says_how_many_views_the_run_compares(method: str, views: str) -> None:
    console = Console(record=True, width=200)
    print_config(console, pair_config(PAIR, method), torch.device("cpu"), DistContext(), resume_from=None)
    lines = console.export_text().splitlines()
    assert any(line.split() == ["views", *views.split()] for line in lines)
    assert any(line.split()[:1] == ["run"] and method in line and PAIR in line for line in lines)
    assert any(line.split()[:1] == ["device"] and "cpu (" in line for line in lines)


def test_sld_pairs_shows_the_views_of_each_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = invoke("pairs")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if "kd/dkd/ce" in line)
    assert lines[header].split()[-3:] == ["sld", "kd/dkd/ce", "mlkd"]
    assert lines[header + 1].split()[-6:] == ["2", "views", "1", "view", "2", "views"]
    published = next(i for i, line in enumerate(lines) if line.split()[:3] == ["KD", "DKD", "MLKD"])
    assert lines[published + 1].split() == ["pair", "1v", "1v", "2v", "2v", "2v", "1v", "1v"]
    assert any("1v / 2v:" in line for line in lines)


# -------------------------------------------------------------------------------------------- sld eval


def test_eval_reads_the_recorded_data_and_writes_json(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "teacher"
    trained = invoke("train-teacher", "--model", "resnet8", "--out", out, "--data-dir", data_dir, *TINY)
    assert trained.exit_code == 0, trained.output
    (record,) = read_metrics(out)

    result = invoke("eval", out / "last.pt", "--json", "-", "--device", "cpu")  # no --data-dir
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["data_dir"] == str(data_dir) and got["images"] == 32 and got["model"] == "resnet8"
    assert got["top1"] == record["test_top1"] and got["top5"] == record["test_top5"]
    assert got["loss"] == pytest.approx(record["test_loss"], rel=1e-6)

    path = tmp_path / "eval.json"
    written = invoke("eval", out / "last.pt", "--json", path, "--device", "cpu")
    assert written.exit_code == 0 and "test top-1" in written.output
    assert f"loss {got['loss']:.4f}" in written.output
    assert json.loads(path.read_text()) == got

    other = write_tiny_cifar(tmp_path / "other", n_train=16, n_test=16, seed=9)
    elsewhere = invoke("eval", out / "last.pt", "--json", "-", "--device", "cpu", "--data-dir", other)
    assert elsewhere.exit_code == 0, elsewhere.output
    there = json.loads(elsewhere.stdout)
    assert (there["data_dir"], there["images"]) == (str(other), 16)


# ---------------------------------------------------------------------------------------------- progress


def test_the_bar_shows_a_loss_from_the_first_step_and_the_time_left(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    real = step_module.progress

    def spy(console):
        bar = real(console)
        add, update = bar.add_task, bar.update
        bar.add_task = lambda *a, **kw: (calls.append({"add": True, **kw}), add(*a, **kw))[1]
        bar.update = lambda task, **kw: (calls.append(kw), update(task, **kw))[1]
        return bar

    monkeypatch.setattr(step_module, "progress", spy)
    from harness.train.loop import train

    changes = {"optim.epochs": 2, "optim.batch_size": 16, "data.data_dir": str(data_dir),
               "data.download": False, "out_dir": str(tmp_path / "r"), "log_every": 3, "trackers": ["csv"]}
    train(with_overrides(teacher_config("resnet8"), changes), "cpu")  # 64 images: 4 steps per epoch
    adds = [c for c in calls if c.get("add")]
    assert [(c["loss"], c["run_eta"]) for c in adds] == [("–", "–")] * 2  # a dash, never "nan", until read
    updates = [c for c in calls if not c.get("add")]
    assert [c["completed"] for c in updates] == [1, 3, 1, 3]  # the first step, then every 3rd of 4
    assert all(float(c["loss"]) > 0 for c in updates) and not any("nan" in str(c) for c in calls)
    assert all(re.fullmatch(r"\d+:\d\d:\d\d", c["run_eta"]) for c in updates)
    steps = (tmp_path / "r" / "steps.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in steps[1:]] == [["1", "1"], ["3", "1"], ["5", "2"], ["7", "2"]]


def test_run_eta_is_the_epochs_left_times_the_mean_epoch() -> None:
    eta = RunEta(last_epoch=5)
    assert eta.remaining(epoch=1, done=0.0, elapsed=1.0) is None
    assert eta.remaining(epoch=1, done=0.25, elapsed=10.0) == pytest.approx(30.0 + 4 * 40.0)
    eta.epoch_finished(50.0)
    eta.epoch_finished(70.0)
    assert eta.remaining(epoch=2, done=1.0, elapsed=0.0) == pytest.approx(3 * 60.0)
    assert eta.remaining(epoch=3, done=0.5, elapsed=20.0) == pytest.approx(20.0 + 2 * 60.0)
    assert [duration(s) for s in (0, 59.6, 3600, 90061, None, math.inf)] == [
        "0:00:00", "0:01:00", "1:00:00", "1 day, 1:01:01", "–", "–",
    ]
