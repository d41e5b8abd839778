"""The community checkpoints' layouts (key, shape and parameter count of every tensor), kept in the
repository as test data: ``tests/data/cifar_checkpoint_manifest.json`` and
``tests/data/imagenet_checkpoint_manifest.json``, byte-identical copies of the project spec's files
(``test_manifests_are_the_spec_files`` holds them to the spec's SHA-256). A missing file fails the
tests that need it; it never skips them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
SHA256 = {
    "cifar": "ec8aaba4def32d8f51cb9bc96373b1fb1d7bc93b5454eab229216d0133ee3984",
    "imagenet": "b09c2141dc2562f0e6f8c71d954d1d616552ae0740959a6081c759896f90b46c",
}


def manifest_path(kind: str) -> Path:
    """``tests/data/<kind>_checkpoint_manifest.json``; ``kind`` is ``"cifar"`` or ``"imagenet"``."""
    if kind not in SHA256:
        raise ValueError(f"kind must be one of {sorted(SHA256)}, got {kind!r}")
    return DATA / f"{kind}_checkpoint_manifest.json"


def load_manifest(kind: str) -> dict:
    """The parsed manifest; a test failure (not a skip) naming the path when the file is missing."""
    path = manifest_path(kind)
    if not path.is_file():
        pytest.fail(f"checkpoint manifest not found at {path}: it is test data kept in the repository")
    return json.loads(path.read_text())
