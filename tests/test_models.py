"""The CIFAR model zoo: checkpoint layout against the manifest, forward shapes, and ``load_weights``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from harness.models import (  # noqa: E402
    MODELS,
    CheckpointError,
    build_model,
    count_parameters,
    load_weights,
    model_info,
)
from harness.models.layers import channel_shuffle  # noqa: E402
from tests.manifests import load_manifest  # noqa: E402

from .train_helpers import randomized  # noqa: E402

# The CIFAR-100 zoo only; the ImageNet models are checked in test_imagenet_models.py.
NAMES = sorted(name for name in MODELS if model_info(name).dataset == "cifar100")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest("cifar")  # tests/data/cifar_checkpoint_manifest.json; missing is a failure


def test_registry_names_are_the_manifest_keys(manifest: dict) -> None:
    assert sorted(manifest) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_manifest(name: str, manifest: dict) -> None:
    model = build_model(name)
    got = [[key, list(t.shape)] for key, t in model.state_dict().items()]
    expected = manifest[name]["state_dict"]
    # Compare the first differing entry first: a 300-entry list diff hides where the layouts diverge.
    first_bad = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
    assert first_bad is None, f"entry {first_bad}: model {got[first_bad]} vs checkpoint {expected[first_bad]}"
    assert len(got) == len(expected)
    assert count_parameters(model) == manifest[name]["parameters"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_finite_per_sample_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        first_alone = model(x[:1])
    assert logits.shape == (2, 100)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # In eval mode a sample's logits must not depend on its batch mates (catches reshapes that mix samples).
    torch.testing.assert_close(first_alone[0], logits[0], rtol=1e-4, atol=1e-5)


def test_num_classes_sets_the_head() -> None:
    model = build_model("resnet8", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*resnet8x4.*wrn_40_2"):
        build_model("resnet9")


def test_count_parameters_by_hand() -> None:
    # conv 3*4*3*3 (no bias) + BN 2*4 = 116
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4))
    assert count_parameters(model) == 3 * 4 * 3 * 3 + 2 * 4


def test_checkpoint_round_trip_reproduces_outputs(tmp_path: Path) -> None:
    source = randomized(build_model("resnet8"), seed=1)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": source.state_dict(), "epoch": 240, "best_acc": 73.1}, path)

    target = build_model("resnet8").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = source(x)
        assert not torch.allclose(target(x), expected)  # else the test below could not fail
        assert load_weights(target, path) is target
        torch.testing.assert_close(target(x), expected, rtol=0, atol=0)


def test_raw_and_data_parallel_state_dicts_load() -> None:
    source = randomized(build_model("wrn_16_1"), seed=3)
    x = torch.randn(1, 3, 32, 32)
    for state in (source.state_dict(), {f"module.{k}": v for k, v in source.state_dict().items()}):
        target = load_weights(build_model("wrn_16_1"), state).eval()
        with torch.no_grad():
            torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    state = build_model("resnet8").state_dict()
    del state["layer2.0.downsample.0.weight"]
    state["layer4.0.conv1.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(10, 64)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)

    with pytest.raises(CheckpointError) as info:
        load_weights(build_model("resnet8"), path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(r"missing keys \(1\): layer2\.0\.downsample\.0\.weight", message)
    assert re.search(r"unexpected keys \(1\): layer4\.0\.conv1\.weight", message)
    assert re.search(
        r"shape mismatches \(1\): fc\.weight: checkpoint \(10, 64\) vs model \(100, 64\)", message
    )


def test_corrupt_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\x80\x02 this is not a torch checkpoint")
    expected = (
        rf"{re.escape(str(path))}: not a readable torch checkpoint "
        r"\(corrupt, truncated or another kind of file; UnpicklingError\)"
    )
    with pytest.raises(CheckpointError, match=expected):
        load_weights(build_model("resnet8"), path)
    directory = tmp_path / "a_directory.pth"
    directory.mkdir()
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(directory))} is a directory, not a checkpoint"
    ):
        load_weights(build_model("resnet8"), directory)


def test_missing_file_and_non_state_dict(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nowhere.pth"):
        load_weights(build_model("resnet8"), tmp_path / "nowhere.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="neither a state_dict"):
        load_weights(build_model("resnet8"), path)


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).reshape(1, 6, 1, 1)  # groups of 3: [0 1 2] [3 4 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert torch.equal(channel_shuffle(x, 1), x)
