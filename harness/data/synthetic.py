"""A small, learnable stand-in for CIFAR-100, written in the real archive format.

Tests and offline demos point :func:`harness.data.cifar.load_cifar100` at it (``url="file://..."`` plus the
md5 this returns), so the whole download-verify-extract-load path runs without the 161 MiB original.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

__all__ = ["write_cifar100_archive"]

_SIDE = 32
_NOISE_STD = 24.0  # enough that single pixels are unreliable, little enough that a tiny CNN learns in seconds


def write_cifar100_archive(
    path: str | os.PathLike[str],
    n_train: int = 500,
    n_test: int = 100,
    seed: int = 0,
    num_classes: int = 100,
) -> str:
    """Write a ``cifar-100-python.tar.gz`` look-alike and return its md5 (hex).

    The archive holds ``cifar-100-python/{train,test,meta}`` pickles with the official keys and types:
    ``b"data"`` ``uint8 (N, 3072)`` rows in CHW order, ``b"fine_labels"``/``b"coarse_labels"`` lists of
    int, ``b"filenames"`` list of bytes, ``b"batch_label"`` bytes; ``meta`` has ``b"fine_label_names"`` and
    ``b"coarse_label_names"`` lists of bytes. Each class is a fixed colour plus an oriented sinusoidal
    stripe pattern; each image is its class pattern, randomly shifted by up to 3 pixels, plus Gaussian
    noise. Labels cycle through the classes (balanced) in a shuffled order. The same arguments always
    give the same bytes (gzip and tar timestamps are zero), hence the same md5.

    Parameters
    ----------
    path
        Output file; parent folders are created.
    n_train, n_test
        Number of images per split (>= 1 each).
    seed
        Seed for the class patterns, labels and noise.
    num_classes
        Number of fine classes (``fine_label_names`` has this many entries).

    Returns
    -------
    str
        The md5 of the written archive, to pass to ``load_cifar100(md5=...)``.

    Example
    -------
    >>> md5 = write_cifar100_archive("demo/cifar-100-python.tar.gz", n_train=200)  # doctest: +SKIP
    >>> data = load_cifar100("demo", download=False, md5=md5)  # doctest: +SKIP
    """
    if n_train < 1 or n_test < 1 or num_classes < 1:
        raise ValueError(
            f"n_train, n_test and num_classes must be >= 1, got {n_train}, {n_test}, {num_classes}"
        )
    rng = np.random.default_rng(seed)
    prototypes = _class_prototypes(rng, num_classes)
    fine_names = [f"synthetic_{i:03d}".encode() for i in range(num_classes)]
    coarse_count = max(1, num_classes // 5)  # CIFAR-100 groups its 100 classes into 20 superclasses of 5
    coarse_names = [f"synthetic_super_{i:02d}".encode() for i in range(coarse_count)]

    members = {"meta": {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names}}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % num_classes)
        members[split] = {
            b"filenames": [f"synthetic_{split}_{i:05d}.png".encode() for i in range(n)],
            b"batch_label": f"{'training' if split == 'train' else 'testing'} batch 1 of 1".encode(),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": np.minimum(labels // 5, coarse_count - 1).tolist(),
            b"data": _render(rng, prototypes, labels).reshape(n, -1),  # (N, 3, 32, 32) -> CHW rows
        }

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name in ("train", "test", "meta"):
            # Protocol 2 is what Python 2 wrote the official files with.
            payload = pickle.dumps(members[name], protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size, info.mode = len(payload), 0o644
            tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def _class_prototypes(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """``float32 (num_classes, 3, 40, 40)``: colour + stripes, 4 pixels wider on each side for shifting."""
    side = _SIDE + 8
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    colour = rng.uniform(50, 205, size=(num_classes, 3, 1, 1))
    angle = rng.uniform(0, np.pi, size=(num_classes, 1, 1))
    freq = rng.uniform(1.5, 4.0, size=(num_classes, 1, 1)) / _SIDE
    phase = rng.uniform(0, 2 * np.pi, size=(num_classes, 1, 1))
    wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    # Each channel sees the stripes with its own sign and strength, so colour and pattern both carry class.
    gain = rng.uniform(-50, 50, size=(num_classes, 3, 1, 1))
    return (colour + gain * wave[:, None]).astype(np.float32)


def _render(rng: np.random.Generator, prototypes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``uint8 (N, 3, 32, 32)``: each image is a random 32x32 window of its class prototype plus noise."""
    n = labels.shape[0]
    offsets = rng.integers(1, 8, size=(n, 2))  # windows start 1..7 of 0..8: shifts of up to 3 px about centre
    # (classes, 3, 9, 9, 32, 32) view: every 32x32 window of every prototype, no copy.
    all_windows = np.lib.stride_tricks.sliding_window_view(prototypes, (_SIDE, _SIDE), axis=(2, 3))
    windows = all_windows[labels, :, offsets[:, 0], offsets[:, 1]]  # (N, 3, 32, 32)
    noisy = windows + _NOISE_STD * rng.standard_normal(windows.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
