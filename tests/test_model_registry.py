"""Model specs: built-in names, plug-ins by import path and by ``sld.models`` entry point, their errors, and a
model rebuilt in a new process from nothing but its spec string."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from harness.models import MODELS, ModelSpecError, build_model, model_info, resolve_model  # noqa: E402
from harness.models.registry import ENTRY_POINT_GROUP, plugin_models  # noqa: E402

REPO = Path(__file__).parents[1]

PLUGIN_SOURCE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))

def build_student(num_classes=5):
    return Tiny(num_classes)

class Zoo:
    @staticmethod
    def small(num_classes=5):
        return Tiny(num_classes)

NOT_CALLABLE = 42

def returns_a_list(num_classes=5):
    return [Tiny(num_classes)]
"""


def _write_package(root: Path, package: str, source: str = PLUGIN_SOURCE) -> Path:
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "models.py").write_text(textwrap.dedent(source))
    return root


def _write_dist_info(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution: what importlib.metadata reads from a folder on sys.path."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh package (unique name per test, so no module cache leaks between tests) on sys.path."""
    package = f"sld_plugin_{uuid.uuid4().hex[:12]}"
    monkeypatch.syspath_prepend(str(_write_package(tmp_path / "src", package)))
    return package


# ----------------------------------------------------------------------------------------------- built-ins


def test_builtins_resolve_to_their_registry_entry() -> None:
    for name in ("resnet8x4", "ResNet18", "resnet18", "mobilenet_v1"):
        make = resolve_model(name)
        assert make.factory is MODELS[name] and make.source == "built-in"
    assert model_info("wrn_40_2").dataset == "cifar100" and model_info("resnet34").dataset == "imagenet"


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(
        ModelSpecError,
        match=r"unknown model 'resnet9'; valid names: .*resnet18.*wrn_40_2.*"
        r"or an import path 'package\.module:callable'",
    ):
        build_model("resnet9")
    assert issubclass(ModelSpecError, ValueError)  # callers that caught ValueError still do


# ------------------------------------------------------------------------------------------ by import path


def test_import_path_builds_the_users_model(plugin: str) -> None:
    model = build_model(f"{plugin}.models:build_student", num_classes=7)
    assert type(model).__name__ == "Tiny" and model.head.out_features == 7
    assert build_model(f"{plugin}.models:build_student").head.out_features == 5  # its own default
    assert build_model(f"{plugin}.models:Zoo.small", 3).head.out_features == 3  # dotted attribute
    info = model_info(f"{plugin}.models:build_student")
    assert (info.dataset, info.num_classes) == ("plugin", None)


@pytest.mark.parametrize(
    ("attribute", "match"),
    [
        ("missing", r"'{p}\.models' has no attribute 'missing'"),
        ("Zoo.absent", r"'{p}\.models\.Zoo' has no attribute 'absent'"),
        ("NOT_CALLABLE", r"'NOT_CALLABLE' is not callable \(type int\)"),
    ],
)
def test_bad_attribute_is_one_clear_error(plugin: str, attribute: str, match: str) -> None:
    spec = f"{plugin}.models:{attribute}"
    with pytest.raises(ModelSpecError, match=rf"model '{spec}': " + match.format(p=plugin)):
        build_model(spec)


def test_a_callable_that_returns_no_module_is_refused(plugin: str) -> None:
    with pytest.raises(ModelSpecError, match=r"returned a list, expected a torch\.nn\.Module"):
        build_model(f"{plugin}.models:returns_a_list")


def test_unimportable_module_names_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelSpecError, match=r"cannot import module 'no_such_pkg_xyz\.models' .*PYTHONPATH"):
        build_model("no_such_pkg_xyz.models:build")
    broken = _write_package(tmp_path, "sld_broken_plugin", "raise RuntimeError('boom')")
    monkeypatch.syspath_prepend(str(broken))
    with pytest.raises(ModelSpecError, match=r"module 'sld_broken_plugin\.models' raised RuntimeError: boom"):
        build_model("sld_broken_plugin.models:build")


@pytest.mark.parametrize("spec", [":build", "pkg.models:", ""])
def test_malformed_specs(spec: str) -> None:
    with pytest.raises(ModelSpecError, match="must"):
        resolve_model(spec)


# ----------------------------------------------------------------------------------------- by entry point


def test_entry_point_builds_the_users_model(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    entry_points = {"tiny_student": f"{plugin}.models:build_student", "tiny_broken": f"{plugin}.models:nope"}
    _write_dist_info(site, "sld_tiny_dist", entry_points)
    monkeypatch.syspath_prepend(str(site))
    assert plugin_models()["tiny_student"] == f"{plugin}.models:build_student"

    make = resolve_model("tiny_student")
    assert make.source == f"entry point tiny_student = {plugin}.models:build_student (sld_tiny_dist)"
    assert build_model("tiny_student", num_classes=4).head.out_features == 4
    with pytest.raises(ModelSpecError, match=r"'tiny_broken': loading entry point .* \(AttributeError"):
        build_model("tiny_broken")
    with pytest.raises(ModelSpecError, match=r"entry points \(sld\.models\): .*tiny_student"):
        build_model("tiny_studnet")  # a typo lists the installed plug-ins too


def test_builtin_names_win_over_entry_points(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_dist_info(tmp_path / "site", "sld_shadow", {"resnet8": f"{plugin}.models:build_student"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_model("resnet8").source == "built-in"


# ------------------------------------------------------------------------------ a new process, from the spec


def test_a_new_process_rebuilds_the_plugin_from_its_spec(tmp_path: Path) -> None:
    src = _write_package(tmp_path / "src", "sld_subprocess_plugin")
    site = tmp_path / "site"
    _write_dist_info(site, "sld_subprocess_dist", {"sub_tiny": "sld_subprocess_plugin.models:build_student"})
    # What a run's config records is just the string; the child process has only that and its path.
    script = textwrap.dedent(
        """
        import json, sys, torch
        from harness.models import build_model
        out = {}
        for spec in sys.argv[1:]:
            torch.manual_seed(0)
            model = build_model(spec, num_classes=6)
            out[spec] = {"type": type(model).__name__, "weight": model.head.weight.tolist()}
        print(json.dumps(out))
        """
    )
    specs = ["sld_subprocess_plugin.models:build_student", "sub_tiny"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(site), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", script, *specs], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)

    sys.path[:0] = [str(src)]
    try:
        torch.manual_seed(0)
        here = build_model("sld_subprocess_plugin.models:build_student", num_classes=6)
    finally:
        sys.path.remove(str(src))
    for spec in specs:  # the same architecture and, under the same seed, the same weights
        assert built[spec]["type"] == "Tiny"
        assert built[spec]["weight"] == here.head.weight.tolist()
