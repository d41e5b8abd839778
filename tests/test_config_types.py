"""Config values are checked for their type and range, with the field named: hand-edited ``--config``
files, CLI lists, ``with_overrides``, configs built in Python, and ``sld_core.SLDConfig`` itself. The
check is driven by the dataclass annotations, so a config class added later is covered too (the
``Probe`` class below stands in for one)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import sld_core
from harness.cli import app
from harness.config import (
    METHOD_CONFIGS,
    CEConfig,
    ConfigError,
    DataConfig,
    DKDConfig,
    KDConfig,
    MethodConfig,
    OptimConfig,
    TrainConfig,
    check_field_types,
    load_config,
    save_config,
    train_config_from_dict,
    train_config_to_dict,
    with_overrides,
)

BASE = TrainConfig(student="resnet8", teacher="resnet8", teacher_checkpoint="teacher.pth", method="sld")


def invoke(*args: str | Path):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])


def squash(text: str) -> str:
    return " ".join(text.split())


# (dotted field, value written into config.json, the error after "PATH: ")
HAND_EDITS = {
    # a config written before the swap became a teacher processing: its bool is checked all the same
    "teacher_swap-no": ("loss.teacher_swap", "no", "loss.teacher_swap must be true or false; got 'no'"),
    "pseudo_teacher-no": ("loss.pseudo_teacher", "no", "loss.pseudo_teacher must be true or false; got 'no'"),
    "temperatures-string": (
        "loss.temperatures",
        "123",
        "loss.temperatures must be a list of finite numbers; got '123'",
    ),
    "temperatures-bool": (
        "loss.temperatures",
        [True, 2],
        "loss.temperatures[0] must be a finite number; got True",
    ),
    "temperatures-nan": ("loss.temperatures", [1, math.nan], "loss.temperatures[1] must be a finite number"),
    "gamma-string": ("loss.gamma", "150", "loss.gamma must be a finite number; got '150'"),
    "epochs-float": ("optim.epochs", 2.5, "optim.epochs must be an integer; got 2.5"),
    "epochs-bool": ("optim.epochs", True, "optim.epochs must be an integer; got True"),
    "lr-string": ("optim.lr", "0.1", "optim.lr must be a finite number; got '0.1'"),
    "nesterov-int": ("optim.nesterov", 1, "optim.nesterov must be true or false; got 1"),
    "milestones-string": (
        "optim.lr_milestones",
        "150",
        "optim.lr_milestones must be a list of integers; got '150'",
    ),
    "milestones-item": ("optim.lr_milestones", [150, "180"], "optim.lr_milestones[1] must be an integer"),
    "download-string": ("data.download", "yes", "data.download must be true or false; got 'yes'"),
    "limit-string": ("data.limit_train", "64", "data.limit_train must be an integer or null; got '64'"),
    "seed-bool": ("seed", True, "seed must be an integer; got True"),
    "amp-int": ("amp", 16, "amp must be a string; got 16"),
    "channels_last-string": ("channels_last", "false", "channels_last must be true or false; got 'false'"),
    "teacher_checkpoint-int": ("teacher_checkpoint", 5, "teacher_checkpoint must be a string or null; got 5"),
    "optim-list": ("optim", [], "optim must be a JSON object (OptimConfig); got []"),
    "range-after-type": ("optim.momentum", 1.5, "optim.momentum must lie in [0, 1); got 1.5"),
}


def edited(path: Path, field: str, value: object) -> Path:
    data = train_config_to_dict(BASE)
    *parents, name = field.split(".")
    target = data
    for part in parents:
        target = target[part]
    target[name] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case", list(HAND_EDITS))
def test_a_hand_edited_config_is_refused_with_the_field_named(case: str, tmp_path: Path) -> None:
    field, value, expected = HAND_EDITS[case]
    path = edited(tmp_path / "config.json", field, value)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: {expected}"), str(raised.value)
    result = invoke("train", "--config", path, "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1
    assert f"error: {path}: {expected}" in squash(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_valid_config_round_trips_and_ints_are_numbers(tmp_path: Path) -> None:
    save_config(BASE, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == BASE
    data = train_config_to_dict(BASE)
    data["optim"]["lr"] = 1  # JSON has no int/float split that a user should have to care about
    data["loss"]["temperatures"] = [1, 2]
    config = train_config_from_dict(data)
    assert config.optim.lr == 1 and config.loss.temperatures == (1.0, 2.0)


# CLI list options: an empty item is an error, never skipped.
CLI_LISTS = {
    "temperatures-empty-item": (["--temperatures", "1,,2"], "--temperatures takes comma-separated numbers"),
    "temperatures-trailing-comma": (["--temperatures", "1,2,"], "with no empty item; got '1,2,'"),
    "temperatures-word": (["--temperatures", "1,two"], "--temperatures takes comma-separated numbers"),
    "milestones-fraction": (["--lr-milestones", "1.5"], "--lr-milestones takes comma-separated integers"),
    "milestones-empty-item": (["--lr-milestones", "2,,3"], "with no empty item; got '2,,3'"),
}


@pytest.mark.parametrize("case", list(CLI_LISTS))
def test_cli_lists_refuse_empty_and_bad_items(case: str, tmp_path: Path) -> None:
    flags, expected = CLI_LISTS[case]
    result = invoke(
        "train", "--student", "resnet8", "--teacher-model", "resnet8", "--teacher", tmp_path / "t.pth",
        "--out", tmp_path / "out", "--device", "cpu", *flags,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert expected in squash(result.output) and "Traceback" not in result.output


def test_overrides_are_type_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^loss.pseudo_teacher must be true or false; got 'no'$"):
        with_overrides(BASE, {"loss.pseudo_teacher": "no"})
    with pytest.raises(ConfigError, match=r"^optim.epochs must be an integer; got 2.0$"):
        with_overrides(BASE, {"optim.epochs": 2.0})
    assert with_overrides(BASE, {"loss.temperatures": [3, 4]}).loss.temperatures == (3.0, 4.0)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: OptimConfig(lr="0.1"), "optim.lr must be a finite number; got '0.1'"),
        (lambda: OptimConfig(lr_milestones=[150]), "optim.lr_milestones must be a list of integers"),
        (lambda: DataConfig(views=2.0), "data.views must be an integer; got 2.0"),
        (lambda: KDConfig(temperature="4"), "kd.temperature must be a finite number; got '4'"),
        (lambda: DKDConfig(warmup_epochs=True), "dkd.warmup_epochs must be an integer; got True"),
    ],
    ids=["optim-lr", "optim-milestones-list", "data-views", "kd-temperature", "dkd-warmup"],
)
def test_a_section_built_in_python_names_the_field(build, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        build()


def test_a_config_built_in_python_is_checked_down_to_its_nested_sections() -> None:
    data = DataConfig()
    object.__setattr__(data, "download", "no")  # a section class that does not check itself
    with pytest.raises(ConfigError, match=r"^data.download must be true or false; got 'no'$"):
        TrainConfig(student="resnet8", method="ce", loss=CEConfig(), data=data)


def test_every_method_config_is_in_the_loss_annotation() -> None:
    # The type check takes TrainConfig.loss's annotation at its word: a method config registered in
    # METHOD_CONFIGS but missing from MethodConfig would be refused.
    assert set(typing.get_args(MethodConfig)) == set(METHOD_CONFIGS.values())


@dataclass(frozen=True)
class Probe:
    """A config section as a later change might add one, with annotations the existing ones lack."""

    mode: Literal["mean", "median"] = "mean"
    window: tuple[int, int] = (1, 2)
    limit: int | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    scale: float = 1.0


PROBES = {
    "literal": ({"mode": "max"}, 'mode must be one of "mean", "median"; got \'max\''),
    "fixed-tuple-length": (
        {"window": (1, 2, 3)},
        "window must be a list of 2 (an integer, an integer); got (1, 2, 3)",
    ),
    "fixed-tuple-item": ({"window": (1, 2.5)}, "window[1] must be an integer; got 2.5"),
    "optional": ({"limit": "3"}, "limit must be an integer or null; got '3'"),
    "list-item": ({"names": ["a", 3]}, "names[1] must be a string; got 3"),
    "inf": ({"scale": math.inf}, "scale must be a finite number; got inf"),
}


@pytest.mark.parametrize("case", list(PROBES))
def test_the_check_follows_the_annotations_of_any_config_class(case: str) -> None:
    bad, expected = PROBES[case]
    with pytest.raises(ConfigError, match=f"^probe.{_escape(expected)}$"):
        check_field_types(Probe(**bad), "probe")
    name, value = next(iter(bad.items()))
    with pytest.raises(ConfigError, match=f"^{_escape(expected)}$"):
        with_overrides(Probe(), {name: value})  # type: ignore[arg-type]
    check_field_types(Probe(mode="median", window=(3, 4), limit=2, names=["x"], scale=2))


def _escape(text: str) -> str:
    return re.escape(text)


# sld_core's own config: strict for users of the core who never see harness.config.
SLD_CONFIG_ERRORS = {
    "temperatures-string": ({"temperatures": "123"}, TypeError, "temperatures must be numbers; got '123'"),
    "temperatures-bool": ({"temperatures": (True, 2)}, TypeError, "temperatures must be numbers"),
    "temperatures-empty": ({"temperatures": ()}, ValueError, "at least one temperature"),
    "temperatures-negative": ({"temperatures": (1, -2)}, ValueError, "finite and positive; got [-2.0]"),
    "teacher_swap-string": ({"teacher_swap": "no"}, TypeError, "teacher_swap must be True or False"),
    "pseudo_teacher-int": ({"pseudo_teacher": 0}, TypeError, "pseudo_teacher must be True or False; got 0"),
    "detach-none": ({"detach_pseudo_teacher": None}, TypeError, "detach_pseudo_teacher must be True or"),
    "gamma-bool": ({"gamma": True}, ValueError, "gamma must be a number (epochs); got True"),
    "gamma-nan": ({"gamma": math.nan}, ValueError, "gamma must be a number (epochs); got nan"),
    "ce_weight-bool": ({"ce_weight": True}, ValueError, "ce_weight must be a finite non-negative number"),
    "kd_weight-inf": ({"kd_weight": math.inf}, ValueError, "kd_weight must be a finite non-negative number"),
    "kd_weight-string": ({"kd_weight": "0.9"}, ValueError, "kd_weight must be a finite non-negative number"),
}


@pytest.mark.parametrize("case", list(SLD_CONFIG_ERRORS))
def test_sld_config_is_strict(case: str) -> None:
    kwargs, error, expected = SLD_CONFIG_ERRORS[case]
    with pytest.raises(error) as raised:
        sld_core.SLDConfig(**kwargs)
    assert expected in str(raised.value)


def test_sld_config_keeps_reading_numbers_as_floats() -> None:
    assert sld_core.SLDConfig(temperatures=[1, 2.5]).temperatures == (1.0, 2.5)
    assert sld_core.SLDConfig(gamma=0, ce_weight=0, kd_weight=1).gamma == 0
