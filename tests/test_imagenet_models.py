"""The ImageNet models: layouts against the checkpoint manifest, forwards against plain functional
references written here (torchvision's definitions), initialisation, and raw torchvision-style weight
files as teachers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from harness.models import (  # noqa: E402
    MODELS,
    build_model,
    count_parameters,
    load_weights,
    model_info,
)
from harness.models.imagenet import IMAGENET_MODELS  # noqa: E402
from tests.manifests import load_manifest  # noqa: E402

from .train_helpers import (  # noqa: E402
    one_thread,  # noqa: F401 (autouse: one intra-op thread; on a loaded 2-core CPU the pool stalls)
    randomized,
)

NAMES = sorted(IMAGENET_MODELS)


@pytest.fixture(scope="module")
def manifest() -> dict:
    # A missing manifest is a failure: without it nothing here checks the layouts.
    return load_manifest("imagenet")["models"]  # tests/data/; missing is a failure


# ------------------------------------------------------------------------------------------ layout, registry


def test_every_manifest_model_is_registered_as_imagenet(manifest: dict) -> None:
    assert sorted(manifest) == NAMES
    for name in NAMES:
        assert name in MODELS
        info = model_info(name)
        assert (info.dataset, info.input_size, info.num_classes) == ("imagenet", 224, 1000)
    # The CIFAR zoo's namesakes are other networks, and are tagged so.
    assert model_info("ResNet18").dataset == "cifar100" and model_info("MobileNetV2").dataset == "cifar100"
    assert count_parameters(build_model("ResNet18")) != count_parameters(build_model("resnet18"))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_manifest(name: str, manifest: dict) -> None:
    model = build_model(name)
    got = [[key, list(t.shape)] for key, t in model.state_dict().items()]
    expected = manifest[name]["state_dict"]
    first_bad = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
    assert first_bad is None, f"entry {first_bad}: model {got[first_bad]} vs checkpoint {expected[first_bad]}"
    assert len(got) == len(expected)
    assert count_parameters(model) == manifest[name]["num_parameters"]


def test_default_and_explicit_class_counts() -> None:
    assert build_model("resnet18").fc.out_features == 1000
    assert build_model("mobilenet_v2").classifier[1].out_features == 1000
    assert build_model("mobilenet_v1", num_classes=10).fc.out_features == 10
    assert build_model("resnet8").fc.out_features == 100  # the CIFAR default is unchanged
    assert build_model("resnet8", 7).fc.out_features == 7
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        build_model("resnet18", num_classes=0)


# ------------------------------------------------------------------------------ forward vs a plain reference


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _reference_resnet(x: torch.Tensor, sd: dict, bottleneck: bool, depths: tuple[int, ...]) -> torch.Tensor:
    """torchvision's ResNet written out with functional ops (eval mode)."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, depth in enumerate(depths):
        for block in range(depth):
            p = f"layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            w = [sd[f"{p}.conv{i}.weight"] for i in (1, 2, 3) if f"{p}.conv{i}.weight" in sd]
            if bottleneck:  # 1x1, 3x3 (strided), 1x1
                out = F.relu(_bn(F.conv2d(x, w[0]), sd, f"{p}.bn1"))
                out = F.relu(_bn(F.conv2d(out, w[1], stride=stride, padding=1), sd, f"{p}.bn2"))
                out = _bn(F.conv2d(out, w[2]), sd, f"{p}.bn3")
            else:
                out = F.relu(_bn(F.conv2d(x, w[0], stride=stride, padding=1), sd, f"{p}.bn1"))
                out = _bn(F.conv2d(out, w[1], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def _reference_mobilenet_v1(x: torch.Tensor, sd: dict) -> torch.Tensor:
    """The official student: stem, 13 x (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), pool, fc."""
    x = F.relu(_bn(F.conv2d(x, sd["model.0.0.weight"], stride=2, padding=1), sd, "model.0.1"))
    strides = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
    for k, stride in enumerate(strides, start=1):
        dw = sd[f"model.{k}.0.weight"]
        x = F.relu(_bn(F.conv2d(x, dw, stride=stride, padding=1, groups=dw.shape[0]), sd, f"model.{k}.1"))
        x = F.relu(_bn(F.conv2d(x, sd[f"model.{k}.3.weight"]), sd, f"model.{k}.4"))
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def _reference_mobilenet_v2(x: torch.Tensor, sd: dict) -> torch.Tensor:
    """torchvision's MobileNetV2 (eval mode: dropout off) written out with functional ops."""
    relu6 = lambda t: t.clamp(0, 6)  # noqa: E731
    x = relu6(_bn(F.conv2d(x, sd["features.0.0.weight"], stride=2, padding=1), sd, "features.0.1"))
    repeats_and_strides = [(1, 1), (2, 2), (3, 2), (4, 2), (3, 1), (3, 2), (1, 1)]  # torchvision's (n, s)
    strides = [s for n, s0 in repeats_and_strides for s in [s0] + [1] * (n - 1)]
    for k, stride in enumerate(strides, start=1):
        p = f"features.{k}.conv"
        h, i = x, 0
        if f"{p}.0.0.weight" in sd and sd[f"{p}.0.0.weight"].shape[-1] == 1:  # expansion 1x1
            h = relu6(_bn(F.conv2d(h, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
            i = 1
        dw = sd[f"{p}.{i}.0.weight"]
        h = relu6(_bn(F.conv2d(h, dw, stride=stride, padding=1, groups=dw.shape[0]), sd, f"{p}.{i}.1"))
        h = _bn(F.conv2d(h, sd[f"{p}.{i + 1}.weight"]), sd, f"{p}.{i + 2}")
        x = x + h if stride == 1 and x.shape[1] == h.shape[1] else h
    x = relu6(_bn(F.conv2d(x, sd["features.18.0.weight"]), sd, "features.18.1"))
    return F.linear(x.mean(dim=(2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


REFERENCES = {
    "resnet18": lambda x, sd: _reference_resnet(x, sd, False, (2, 2, 2, 2)),
    "resnet34": lambda x, sd: _reference_resnet(x, sd, False, (3, 4, 6, 3)),
    "resnet50": lambda x, sd: _reference_resnet(x, sd, True, (3, 4, 6, 3)),
    "mobilenet_v1": _reference_mobilenet_v1,
    "mobilenet_v2": _reference_mobilenet_v2,
}


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_the_functional_reference_in_float64(name: str) -> None:
    model = randomized(build_model(name, num_classes=11), seed=5).double()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
        expected = REFERENCES[name](x, model.state_dict())
        alone = model(x[:1])
    assert got.shape == (2, 11) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alone[0], got[0], rtol=1e-10, atol=1e-10)  # no mixing across samples


def test_mobilenet_v1_pools_globally_like_the_official_avgpool7_at_224() -> None:
    model = randomized(build_model("mobilenet_v1"), seed=2)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = model.model[:14](x)
        assert features.shape == (1, 1024, 7, 7)
        official = model.fc(F.avg_pool2d(features, 7).reshape(-1, 1024))
        torch.testing.assert_close(model(x), official, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ initialisation


def _fan_out(conv: torch.nn.Conv2d) -> int:
    """torch's fan-out of a conv weight (out, in / groups, kh, kw): out * kh * kw (groups not divided out)."""
    return conv.weight.shape[0] * conv.weight.shape[2] * conv.weight.shape[3]


def _fan_in(conv: torch.nn.Conv2d) -> int:
    return conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
@torch.no_grad()
def test_torchvision_init(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.weight.numel() >= 4096:
            # He normal, fan-out: std sqrt(2 / fan_out); 4096+ draws pin the std to within ~5%.
            std = float(module.weight.std())
            assert abs(std / math.sqrt(2.0 / _fan_out(module)) - 1) < 0.08
            assert abs(float(module.weight.mean())) < 0.1 * std
        elif isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    head = model.fc if name == "resnet50" else model.classifier[1]
    if name == "resnet50":  # torch's default Linear: uniform within 1/sqrt(fan_in)
        assert float(head.weight.abs().max()) <= 1 / math.sqrt(2048)
    else:  # torchvision's MobileNetV2: N(0, 0.01), zero bias
        assert abs(float(head.weight.std()) / 0.01 - 1) < 0.02
        assert torch.equal(head.bias, torch.zeros_like(head.bias))


@torch.no_grad()
def test_mobilenet_v1_keeps_torch_default_init() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v1")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 27
    for conv in convs:  # kaiming_uniform(a=sqrt(5)): uniform within 1/sqrt(fan_in), std bound/sqrt(3)
        bound = 1 / math.sqrt(_fan_in(conv))
        assert float(conv.weight.abs().max()) <= bound
        if conv.weight.numel() >= 4096:
            assert abs(float(conv.weight.std()) / (bound / math.sqrt(3)) - 1) < 0.08


# ------------------------------------------------------------------------------------- teachers from files


@pytest.mark.parametrize("legacy_file", [False, True], ids=["zip", "legacy-format"])
def test_raw_torchvision_state_dict_loads_as_teacher(tmp_path: Path, legacy_file: bool) -> None:
    source = randomized(build_model("resnet18"), seed=7)
    state = source.state_dict()
    if legacy_file:
        # torchvision's 2017 weight files: saved by torch < 0.4.1 (no BN step counters), pre-zip format.
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-raw.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy_file)
    assert isinstance(torch.load(path, weights_only=True), dict)  # raw: no {"model": ...} wrapper

    teacher = build_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = source(x)
        assert not torch.allclose(teacher(x), expected)  # else the comparison below could not fail
        assert load_weights(teacher, path) is teacher
        torch.testing.assert_close(teacher(x), expected, rtol=0, atol=0)
    assert int(teacher.bn1.num_batches_tracked) == (0 if legacy_file else int(source.bn1.num_batches_tracked))


def test_a_missing_weight_is_still_refused(tmp_path: Path) -> None:
    state = build_model("resnet18").state_dict()
    del state["layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer1\.0\.bn1\.running_var"):
        load_weights(build_model("resnet18"), state)
