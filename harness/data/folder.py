"""Image-folder datasets: ImageNet's ``train/<wnid>/*.JPEG`` + ``val/<wnid>/*.JPEG`` and any folder of class
sub-folders, scanned into file lists and labels (nothing is decoded here).

The mapping is torchvision's ``ImageFolder`` rule, so a user's own torchvision pipeline agrees with it:
classes are the sub-folder names of the training folder, sorted (code-point order), indexed from 0;
each class folder is walked recursively (symbolic links followed), directories and files in sorted
order, keeping files whose lower-cased name ends in one of :data:`IMAGE_EXTENSIONS`. The held-out split
is labelled with the *training* split's mapping.

Layouts
-------
``scan_imagenet(root)``
    ``root/train/<class>/...`` and ``root/val/<class>/...``, both required (the raw ILSVRC ``val/`` is
    one flat folder of 50,000 files: sort it into class folders first).
``scan_folder(root)``
    The same layout, or ``root/<class>/...`` with ``val_fraction`` of every class held out by a seeded
    split (also usable on ``root/train/`` when there is no ``val/``).

A run records ``classes`` (a tuple of str: JSON as a list) and passes it back on resume or evaluation;
a scan that finds other classes then refuses to go on instead of silently relabelling.

Example
-------
>>> data = scan_imagenet("/data/imagenet")            # doctest: +SKIP
>>> data.num_classes, len(data.train), len(data.val)  # doctest: +SKIP
(1000, 1281167, 50000)
>>> scan_imagenet("/data/imagenet", classes=data.classes)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.cifar import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderData",
    "ImageSplit",
    "find_classes",
    "scan_folder",
    "scan_imagenet",
    "scan_split",
]

# torchvision's list; matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SPLIT_STREAM = 0x5EED_5911  # tags the held-out split's random stream (numpy SeedSequence entropy)
_LISTED = 8  # names shown in an error message before "..."


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split's files and labels.

    ``files`` holds the paths relative to ``root`` as one ``numpy`` bytes array (``os.fsencode``), not a
    list of ``str``: data-loader workers share it after a fork without touching a reference count per
    file, which would copy the whole list into every worker.
    """

    root: Path
    files: np.ndarray  # dtype S (bytes), (N,)
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, index: int) -> Path:
        """Absolute path of image ``index``."""
        return self.root / os.fsdecode(self.files[index])

    def take(self, indices: np.ndarray) -> ImageSplit:
        """The images at ``indices``, in that order (a new split over the same root)."""
        return ImageSplit(self.root, self.files[indices], self.labels[indices])


@dataclass(frozen=True, eq=False)
class ImageFolderData:
    """A scanned dataset: the class names (index = label) and the two splits."""

    root: Path
    classes: tuple[str, ...]
    train: ImageSplit
    val: ImageSplit

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "") if names else "nothing"


def _require_dir(folder: Path, what: str) -> None:
    if folder.is_dir():
        return
    parent = folder.parent
    if not parent.is_dir():
        raise DatasetError(f"no {what} folder: {parent} does not exist or is not a directory")
    found = sorted(entry.name for entry in os.scandir(parent))
    raise DatasetError(f"no {folder.name}/ folder in {parent} (found: {_listing(found)}); expected {what}")


def find_classes(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """Sorted names of the sub-folders of ``folder`` (symbolic links to folders count), torchvision's rule.

    Raises
    ------
    DatasetError
        ``folder`` is missing, or holds no sub-folder (the message says what it holds instead).
    """
    folder = Path(folder)
    _require_dir(folder, "class sub-folders")
    entries = list(os.scandir(folder))
    classes = tuple(sorted(entry.name for entry in entries if entry.is_dir()))  # is_dir() follows links
    if not classes:
        images = [e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)]
        hint = (
            f"; it holds {len(images)} images directly: put each class's images in their own "
            "sub-folder (for ImageNet's flat val/, sort them into val/<wnid>/)"
            if images
            else f" (found: {_listing(sorted(e.name for e in entries))})"
        )
        raise DatasetError(f"{folder} has no class sub-folders{hint}")
    return classes


def scan_split(
    folder: str | os.PathLike[str],
    classes: Sequence[str],
    *,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> ImageSplit:
    """Image files under ``folder/<class>/`` for each class folder present, labelled by ``classes``.

    Every sub-folder of ``folder`` must be one of ``classes`` (which fixes the labels: the training
    split's list); classes without a folder here are allowed (a small held-out split may lack some).

    Raises
    ------
    DatasetError
        ``folder`` is missing or has no class folders, has class folders ``classes`` lacks, or a class
        folder holds no image.
    """
    folder = Path(folder)
    present = find_classes(folder)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in present if name not in index]
    if unknown:
        raise DatasetError(
            f"{folder.name}/ has classes that the training classes lack: {_listing(unknown)} (in {folder})"
        )
    files: list[bytes] = []
    labels: list[int] = []
    for name in present:
        class_dir = folder / name
        before = len(files)
        for root, _, names in sorted(os.walk(class_dir, followlinks=True)):
            rel = Path(root).relative_to(folder)
            for file in sorted(names):
                if file.lower().endswith(extensions):
                    files.append(os.fsencode(rel / file))
        if len(files) == before:
            raise DatasetError(
                f"class folder {folder.name}/{name} has no images (in {folder}; looked for files ending "
                f"in {', '.join(extensions)}, case-insensitive)"
            )
        labels.extend([index[name]] * (len(files) - before))
    return ImageSplit(folder, np.array(files, dtype=np.bytes_), np.array(labels, dtype=np.int64))


def _check_expected(found: tuple[str, ...], expected: Sequence[str] | None, where: Path) -> None:
    if expected is None or tuple(expected) == found:
        return
    expected = tuple(expected)
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if missing or extra:
        parts = [f"missing {_listing(missing)}" if missing else "", f"new {_listing(extra)}" if extra else ""]
        detail = "; ".join(p for p in parts if p)
    else:
        detail = "the same names in another order (the run's labels would change)"
    raise DatasetError(
        f"the classes in {where} differ from the run's recorded {len(expected)} classes ({detail}); "
        "point --data-dir at the dataset the run was trained on"
    )


def scan_imagenet(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None) -> ImageFolderData:
    """Scan an ImageNet-layout folder: ``root/train/<wnid>/*`` and ``root/val/<wnid>/*``.

    Parameters
    ----------
    root
        The folder holding ``train/`` and ``val/``.
    classes
        The class list a run recorded; a scan that finds another list (missing, new or reordered
        names) raises instead of relabelling.

    Returns
    -------
    ImageFolderData
        ``classes`` sorted, ``train`` and ``val`` labelled by it.

    Raises
    ------
    DatasetError
        A missing ``train/`` or ``val/``, a class folder without images, ``val/`` classes that
        ``train/`` lacks, or ``classes`` not matching what was found; the message says what was
        expected and what was found.
    """
    root = Path(root).expanduser()
    _require_dir(root / "train", "the training images as train/<class>/*")
    _require_dir(root / "val", "the validation images as val/<class>/*")
    found = find_classes(root / "train")
    _check_expected(found, classes, root / "train")
    return ImageFolderData(root, found, scan_split(root / "train", found), scan_split(root / "val", found))


def scan_folder(
    root: str | os.PathLike[str],
    *,
    val_fraction: float | None = None,
    split_seed: int = 0,
    classes: Sequence[str] | None = None,
) -> ImageFolderData:
    """Scan a folder dataset: ``root/train/`` + ``root/val/`` (as ImageNet), or class folders with a
    seeded held-out split.

    Parameters
    ----------
    root
        Either holds ``train/`` (and ``val/``, unless ``val_fraction`` is given) or is itself the folder
        of class sub-folders.
    val_fraction
        Hold out this fraction of every class (rounded half up; at least one image stays in training)
        when there is no ``val/`` folder. ``None``: a ``val/`` folder is required.
    split_seed
        Seed of the held-out draw; the same seed and files give the same split.
    classes
        The class list a run recorded (see :func:`scan_imagenet`).

    Returns
    -------
    ImageFolderData

    Raises
    ------
    DatasetError
        As :func:`scan_imagenet`; also no ``val/`` and no ``val_fraction``, both at once, a fraction
        outside (0, 1), or a fraction that holds out no image.

    Examples
    --------
    >>> data = scan_folder("photos/", val_fraction=0.1, split_seed=0)   # doctest: +SKIP
    """
    root = Path(root).expanduser()
    _require_dir(root, "class sub-folders or train/")
    train_dir = root / "train" if (root / "train").is_dir() else root
    has_val = (root / "val").is_dir()
    if has_val and train_dir == root:
        raise DatasetError(
            f"{root} has a val/ folder but no train/ folder (found: "
            f"{_listing(sorted(e.name for e in os.scandir(root)))}); put the training class folders in train/"
        )
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if has_val and val_fraction is not None:
        raise DatasetError(
            f"{root} has a val/ folder and val_fraction={val_fraction} was given: use one held-out split "
            "(drop val_fraction to evaluate on val/, or move val/ away)"
        )
    if not has_val and val_fraction is None:
        raise DatasetError(
            f"no val/ folder in {root} (found: {_listing(sorted(e.name for e in os.scandir(root)))}); "
            "add one with the same class folders, or pass val_fraction to hold out part of every class"
        )
    found = find_classes(train_dir)
    _check_expected(found, classes, train_dir)
    everything = scan_split(train_dir, found)
    if has_val:
        return ImageFolderData(root, found, everything, scan_split(root / "val", found))
    assert val_fraction is not None
    held_out = _held_out(everything.labels, len(found), val_fraction, split_seed)
    if not held_out.any():
        raise DatasetError(
            f"val_fraction={val_fraction} holds out no image of {root} (at most "
            f"{int(np.bincount(everything.labels).max())} per class); raise it or add a val/ folder"
        )
    return ImageFolderData(
        root, found, everything.take(np.flatnonzero(~held_out)), everything.take(np.flatnonzero(held_out))
    )


def _held_out(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask: ``floor(fraction * n + 0.5)`` images of each class of ``n`` (at most ``n - 1``), drawn
    without replacement from a generator seeded by ``seed``, class by class in label order."""
    if seed < 0:
        raise DatasetError(f"split_seed must be >= 0, got {seed}")
    rng = np.random.default_rng([_SPLIT_STREAM, seed])
    mask = np.zeros(labels.shape[0], dtype=bool)
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        count = min(int(np.floor(fraction * members.size + 0.5)), members.size - 1)
        if count > 0:
            mask[rng.choice(members, size=count, replace=False)] = True
    return mask
