"""Image-folder scanning: torchvision's class and file order, the recorded class list, the seeded held-out
split, and one clear error for every missing or malformed folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.cifar import DatasetError
from harness.data.folder import IMAGE_EXTENSIONS, scan_folder, scan_imagenet, scan_split

pytest.importorskip("PIL")
from harness.data.synthetic_images import write_image_folder  # noqa: E402


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _listing(split) -> list[tuple[str, int]]:
    return [(os.fsdecode(f), int(y)) for f, y in zip(split.files, split.labels)]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An ImageNet-layout tree with the awkward cases: unsorted creation, mixed-case extensions,
    non-images, nested folders, a symlinked class folder and a symlinked file."""
    root = tmp_path / "imagenet"
    for name in ("n03/b.JPEG", "n03/a.jpg", "n03/notes.txt", "n03/sub/c.PNG", "n01/z.jpeg", "B/x.webp"):
        _touch(root / "train" / name)
    outside = tmp_path / "elsewhere"
    _touch(outside / "linked_class" / "q.bmp")
    os.symlink(outside / "linked_class", root / "train" / "n02")
    _touch(outside / "lone.tif")
    os.symlink(outside / "lone.tif", root / "train" / "n01" / "y_link.tif")
    for name in ("n01/v1.JPEG", "n03/v3.JPEG"):  # val lacks B and n02
        _touch(root / "val" / name)
    return root


# -------------------------------------------------------------------------------------------- the mapping


def test_classes_and_files_follow_torchvisions_rule(tree: Path) -> None:
    data = scan_imagenet(tree)
    # Code-point order: upper case before lower case, as Python's sorted() (and torchvision).
    assert data.classes == ("B", "n01", "n02", "n03")
    assert _listing(data.train) == [
        ("B/x.webp", 0),
        ("n01/y_link.tif", 1),  # a symlinked file counts
        ("n01/z.jpeg", 1),
        ("n02/q.bmp", 2),  # a symlinked class folder is followed
        ("n03/a.jpg", 3),
        ("n03/b.JPEG", 3),  # extensions are case-insensitive; notes.txt is not an image
        ("n03/sub/c.PNG", 3),  # nested folders are walked, after the class folder's own files
    ]
    # val/ is labelled with train/'s mapping even though it lacks some classes.
    assert _listing(data.val) == [("n01/v1.JPEG", 1), ("n03/v3.JPEG", 3)]
    assert data.train.path(0) == tree / "train" / "B" / "x.webp"
    assert data.num_classes == 4 and data.train.labels.dtype == np.int64


def test_class_list_is_plain_json_and_refuses_a_mismatch(tree: Path) -> None:
    data = scan_imagenet(tree)
    recorded = json.loads(json.dumps(data.classes))  # what a run's config stores and reads back
    assert scan_imagenet(tree, classes=recorded).classes == data.classes
    with pytest.raises(DatasetError, match=r"differ from the run's recorded 5 classes \(missing n04\)"):
        scan_imagenet(tree, classes=[*recorded, "n04"])
    with pytest.raises(DatasetError, match=r"recorded 3 classes \(new n03\)"):
        scan_imagenet(tree, classes=recorded[:3])
    with pytest.raises(DatasetError, match=r"the same names in another order"):
        scan_imagenet(tree, classes=recorded[::-1])


def test_generated_folder_round_trips(tmp_path: Path) -> None:
    root = write_image_folder(
        tmp_path / "gen", num_classes=3, train_per_class=2, val_per_class=1, size=(20, 15)
    )
    data = scan_imagenet(root)
    assert data.classes == ("n00000000", "n00000001", "n00000002")
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2] and data.val.labels.tolist() == [0, 1, 2]
    assert all(os.fsdecode(f).endswith(".JPEG") for f in data.train.files)


def test_extensions_are_torchvisions() -> None:
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------------ errors


def test_missing_train_folder_says_what_was_found(tmp_path: Path) -> None:
    _touch(tmp_path / "data" / "a" / "x.jpg")
    _touch(tmp_path / "data" / "b.txt")
    with pytest.raises(DatasetError, match=r"no train/ folder in .*data \(found: a, b\.txt\); expected"):
        scan_imagenet(tmp_path / "data")
    with pytest.raises(DatasetError, match=r"does not exist"):
        scan_imagenet(tmp_path / "nowhere" / "data")


def test_missing_val_folder(tree: Path) -> None:
    os.rename(tree / "val", tree / "validation")
    with pytest.raises(DatasetError, match=r"no val/ folder in .* \(found: train, validation\)"):
        scan_imagenet(tree)


def test_class_folder_without_images(tree: Path) -> None:
    (tree / "train" / "n04").mkdir()
    _touch(tree / "train" / "n04" / "readme.txt")
    with pytest.raises(DatasetError, match=r"class folder train/n04 has no images .*\.jpg, \.jpeg"):
        scan_imagenet(tree)


def test_val_classes_that_train_lacks(tree: Path) -> None:
    _touch(tree / "val" / "n09" / "v.JPEG")
    _touch(tree / "val" / "n08" / "v.JPEG")
    with pytest.raises(DatasetError, match=r"val/ has classes that the training classes lack: n08, n09"):
        scan_imagenet(tree)


def test_flat_val_folder_gets_a_hint(tmp_path: Path) -> None:
    _touch(tmp_path / "train" / "n01" / "a.JPEG")
    for i in range(3):
        _touch(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(
        DatasetError, match=r"val has no class sub-folders; it holds 3 images directly.*val/<wnid>/"
    ):
        scan_imagenet(tmp_path)


def test_train_folder_of_files_only(tmp_path: Path) -> None:
    _touch(tmp_path / "train" / "readme.md")
    _touch(tmp_path / "val" / "n01" / "a.jpg")
    with pytest.raises(DatasetError, match=r"train has no class sub-folders \(found: readme\.md\)"):
        scan_imagenet(tmp_path)


def test_scan_split_alone(tree: Path) -> None:
    split = scan_split(tree / "val", ("n01", "n02", "n03"))
    assert split.labels.tolist() == [0, 2]


# ------------------------------------------------------------------------------------------- folder layout


@pytest.fixture
def classes_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    counts = {"cat": 10, "dog": 7, "emu": 1}
    for name, count in counts.items():
        for i in range(count):
            _touch(root / name / f"{i:02d}.jpg")
    return root


def test_seeded_split_per_class(classes_tree: Path) -> None:
    data = scan_folder(classes_tree, val_fraction=0.25, split_seed=3)
    assert data.classes == ("cat", "dog", "emu")
    # floor(0.25 n + 0.5) per class, at least one image left for training: 3 of 10, 2 of 7, 0 of 1.
    assert np.bincount(data.val.labels, minlength=3).tolist() == [3, 2, 0]
    assert np.bincount(data.train.labels, minlength=3).tolist() == [7, 5, 1]
    train, val = set(_listing(data.train)), set(_listing(data.val))
    assert not train & val
    assert train | val == set(_listing(scan_split(classes_tree, data.classes)))
    # Both splits stay in scan order.
    assert _listing(data.train) == sorted(_listing(data.train), key=lambda fy: (fy[1], fy[0]))

    again = scan_folder(classes_tree, val_fraction=0.25, split_seed=3)
    assert _listing(again.val) == _listing(data.val)
    others = [_listing(scan_folder(classes_tree, val_fraction=0.25, split_seed=s).val) for s in range(4, 9)]
    assert any(o != _listing(data.val) for o in others)


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_split_counts_property(fraction: float, seed: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("split")
    for c, count in enumerate((5, 2, 9)):
        for i in range(count):
            _touch(root / f"c{c}" / f"{i}.png")
    try:
        data = scan_folder(root, val_fraction=fraction, split_seed=seed)
    except DatasetError as exc:
        assert "holds out no image" in str(exc)
        assert all(min(int(np.floor(fraction * n + 0.5)), n - 1) == 0 for n in (5, 2, 9))
        return
    for c, n in enumerate((5, 2, 9)):
        held = int((data.val.labels == c).sum())
        assert held == min(int(np.floor(fraction * n + 0.5)), n - 1)
        assert held + int((data.train.labels == c).sum()) == n


def test_folder_with_train_and_val(tree: Path) -> None:
    data = scan_folder(tree)
    assert _listing(data.val) == _listing(scan_imagenet(tree).val)


def test_folder_train_only_with_fraction(tree: Path) -> None:
    os.rename(tree / "val", tree.parent / "val_elsewhere")
    data = scan_folder(tree, val_fraction=0.5)
    assert data.classes == ("B", "n01", "n02", "n03") and len(data.train) + len(data.val) == 7


def test_folder_errors(classes_tree: Path, tree: Path, tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"no val/ folder in .*photos \(found: cat, dog, emu\).*val_fraction"
    ):
        scan_folder(classes_tree)
    with pytest.raises(DatasetError, match=r"has a val/ folder and val_fraction=0\.1 was given"):
        scan_folder(tree, val_fraction=0.1)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(DatasetError, match="strictly between 0 and 1"):
            scan_folder(classes_tree, val_fraction=bad)
    with pytest.raises(DatasetError, match=r"val_fraction=0\.01 holds out no image .*at most 10 per class"):
        scan_folder(classes_tree, val_fraction=0.01)
    _touch(tmp_path / "odd" / "val" / "a" / "x.jpg")
    _touch(tmp_path / "odd" / "a" / "y.jpg")
    with pytest.raises(DatasetError, match=r"has a val/ folder but no train/ folder"):
        scan_folder(tmp_path / "odd")
    with pytest.raises(DatasetError, match=r"recorded 2 classes"):
        scan_folder(classes_tree, val_fraction=0.5, classes=("cat", "dog"))
