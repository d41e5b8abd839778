"""The layout manifests under tests/data are the project spec's files, unedited, and well formed."""

from __future__ import annotations

import hashlib

import pytest

from tests.manifests import SHA256, load_manifest, manifest_path


@pytest.mark.parametrize("kind", sorted(SHA256))
def test_manifests_are_the_spec_files(kind: str) -> None:
    assert hashlib.sha256(manifest_path(kind).read_bytes()).hexdigest() == SHA256[kind]


def test_cifar_manifest_lists_keys_shapes_and_parameter_counts() -> None:
    manifest = load_manifest("cifar")
    assert len(manifest) == 23 and {"wrn_40_2", "resnet8x4", "ShuffleV2", "MobileNetV2"} <= set(manifest)
    for name, entry in manifest.items():
        shapes = entry["state_dict"]
        assert shapes and all(isinstance(k, str) and isinstance(s, list) for k, s in shapes), name
        weights = sum(
            _numel(s)
            for k, s in shapes
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        assert weights == entry["parameters"], name


def test_imagenet_manifest_lists_models() -> None:
    manifest = load_manifest("imagenet")
    assert isinstance(manifest["source"], str) and manifest["models"]


def test_a_missing_manifest_fails_with_its_path(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import tests.manifests as manifests

    monkeypatch.setattr(manifests, "DATA", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"checkpoint manifest not found at .*cifar_checkpoint"):
        manifests.load_manifest("cifar")


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
