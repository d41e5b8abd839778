"""harness.data: the CIFAR-100 cache (download, md5, extraction, loading), the synthetic archive, and the
batched augmentation, each op checked against a plain reference written here (and against Pillow when
it is installed)."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from harness.data import cifar
from harness.data.cifar import CIFAR100_FILENAME, DatasetError, default_data_dir, load_cifar100
from harness.data.synthetic import write_cifar100_archive

torch = pytest.importorskip("torch")
from harness.data import augment  # noqa: E402  (needs torch)
from harness.data.augment import (  # noqa: E402
    CUTOUT_FILL,
    RANDAUGMENT_OPS,
    cutout,
    eval_view,
    rand_augment,
    random_crop_flip,
    strong_view,
    to_float_normalized,
    weak_and_strong_views,
    weak_view,
)

OPS = {op.name: op for op in RANDAUGMENT_OPS}
SMALL = {"n_train": 30, "n_test": 20, "num_classes": 10}


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, str]:
    """A synthetic archive in its own folder (the "server"), and its md5."""
    path = tmp_path / "server" / CIFAR100_FILENAME
    return path, write_cifar100_archive(path, seed=3, **SMALL)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _decode_member(path: Path, name: str) -> dict:
    with tarfile.open(path) as tar, tar.extractfile(f"cifar-100-python/{name}") as f:
        return pickle.load(f, encoding="bytes")


def _pixel(row: np.ndarray, y: int, x: int, c: int) -> int:
    """The official layout: 1024 red bytes, then green, then blue, each row-major."""
    return int(row[c * 1024 + y * 32 + x])


# ------------------------------------------------------------------------------------- loading the archive


def test_load_matches_what_was_written(tmp_path: Path, archive: tuple[Path, str], no_network: None) -> None:
    src, md5 = archive
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CIFAR100_FILENAME).write_bytes(src.read_bytes())

    data = load_cifar100(cache, download=False, md5=md5)

    assert data.train_images.shape == (30, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 32, 32, 3) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert data.num_classes == 10 and data.class_names[0] == "synthetic_000"
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        raw = _decode_member(src, split)
        assert labels.tolist() == raw[b"fine_labels"]
        for n in (0, len(labels) - 1):
            for y, x, c in ((0, 0, 0), (5, 17, 1), (31, 30, 2), (12, 0, 2)):
                assert images[n, y, x, c] == _pixel(raw[b"data"][n], y, x, c)
    assert sorted(p.name for p in (cache / "cifar-100-python").iterdir()) == ["meta", "test", "train"]


def test_synthetic_archive_has_the_official_format(archive: tuple[Path, str]) -> None:
    src, md5 = archive
    assert hashlib.md5(src.read_bytes()).hexdigest() == md5
    with tarfile.open(src) as tar:
        assert set(tar.getnames()) == {
            "cifar-100-python",
            "cifar-100-python/train",
            "cifar-100-python/test",
            "cifar-100-python/meta",
        }
    train, meta = _decode_member(src, "train"), _decode_member(src, "meta")
    assert set(train) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (30, 3072)
    assert all(type(label) is int for label in train[b"fine_labels"])
    assert len(meta[b"fine_label_names"]) == 10 and all(
        isinstance(n, bytes) for n in meta[b"fine_label_names"]
    )
    assert sorted(np.bincount(train[b"fine_labels"])) == [3] * 10  # balanced


def test_synthetic_archive_is_deterministic(tmp_path: Path) -> None:
    first = write_cifar100_archive(tmp_path / "a.tar.gz", seed=1, **SMALL)
    again = write_cifar100_archive(tmp_path / "b.tar.gz", seed=1, **SMALL)
    other = write_cifar100_archive(tmp_path / "c.tar.gz", seed=2, **SMALL)
    assert first == again != other
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_synthetic_images_are_learnable(tmp_path: Path) -> None:
    md5 = write_cifar100_archive(tmp_path / CIFAR100_FILENAME, n_train=200, n_test=100, num_classes=10)
    data = load_cifar100(tmp_path, download=False, md5=md5)
    x = data.train_images.reshape(200, -1).astype(np.float64)
    centroids = np.stack([x[data.train_labels == k].mean(axis=0) for k in range(10)])
    xt = data.test_images.reshape(100, -1).astype(np.float64)
    predicted = ((xt[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
    assert (predicted == data.test_labels).mean() > 0.5  # chance is 0.1


def test_wrong_md5_archive_of_the_user_is_refused_and_left_where_it_is(
    tmp_path: Path, archive: tuple[Path, str]
) -> None:
    src, md5 = archive
    cache = tmp_path / "cache"
    cache.mkdir()
    local = cache / CIFAR100_FILENAME
    local.write_bytes(src.read_bytes())  # placed by hand (offline); not the archive this md5 names
    for download in (False, True):  # never moved, renamed or downloaded over, whether or not it may fetch
        with pytest.raises(DatasetError) as raised:
            load_cifar100(cache, download=download, url="https://invalid.example/never", md5="0" * 32)
        message = str(raised.value)
        assert f"{local} has md5 {md5}, but the expected archive has md5 {'0' * 32}" in message
        assert "left where it is" in message and "download=True" not in message
        assert sorted(p.name for p in cache.iterdir()) == [CIFAR100_FILENAME]
        assert local.read_bytes() == src.read_bytes()


def test_missing_archive_offline_names_the_switch_not_a_python_argument(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as raised:
        load_cifar100(tmp_path, download=False)
    message = str(raised.value)
    assert "downloading is off (download=False; in a run's config: data.download)" in message
    assert f"put it at {tmp_path.resolve() / CIFAR100_FILENAME}, or switch downloading on." in message
    assert "call with download=True" not in message


def test_download_from_url_then_use_the_cache(
    tmp_path: Path, archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, md5 = archive
    cache = tmp_path / "cache" / "nested"  # created on demand
    data = load_cifar100(cache, url=src.as_uri(), md5=md5)
    assert data.train_images.shape == (30, 32, 32, 3)
    assert (cache / CIFAR100_FILENAME).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [CIFAR100_FILENAME, "cifar-100-python"]
    )  # no temp left

    # Extracted files are used as they are: no network, not even the archive.
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network touched"))
    (cache / CIFAR100_FILENAME).unlink()
    again = load_cifar100(cache, url="https://invalid.example/never", md5=md5)
    np.testing.assert_array_equal(again.test_images, data.test_images)


def test_truncated_download_leaves_nothing(tmp_path: Path, archive: tuple[Path, str]) -> None:
    src, md5 = archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=rf"(?s)md5 .*expected {md5}.*{cache / CIFAR100_FILENAME}"):
        load_cifar100(cache, url=truncated.as_uri(), md5=md5)
    assert list(cache.iterdir()) == []


def test_interrupted_download_leaves_nothing(
    tmp_path: Path, archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, md5 = archive
    payload = src.read_bytes()

    class CutResponse(io.BytesIO):
        """Serves the first 1000 bytes, then the connection drops."""

        def read(self, size: int = -1) -> bytes:
            if self.tell() >= 1000:
                raise http.client.IncompleteRead(b"", len(payload) - 1000)
            return super().read(min(size, 1000 - self.tell()))

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: CutResponse(payload))
    cache = tmp_path / "cache"
    with pytest.raises(
        DatasetError, match=r"could not download https://example\.org/c\.tgz .*IncompleteRead"
    ):
        load_cifar100(cache, url="https://example.org/c.tgz", md5=md5)
    assert list(cache.iterdir()) == []


def test_unreachable_url_is_one_clear_error(tmp_path: Path, archive: tuple[Path, str]) -> None:
    _, md5 = archive
    missing = (tmp_path / "nowhere.tar.gz").as_uri()
    with pytest.raises(DatasetError, match=rf"(?s)could not download {missing}.*md5 {md5}.*put it at"):
        load_cifar100(tmp_path / "cache", url=missing, md5=md5)


def test_offline_without_data_names_url_md5_and_path(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(DatasetError) as info:
        load_cifar100(tmp_path, download=False)
    message = str(info.value)
    assert cifar.CIFAR100_URL in message and cifar.CIFAR100_MD5 in message
    assert str(tmp_path / CIFAR100_FILENAME) in message and "download=False" in message


def _write_extracted(root: Path, **overrides: object) -> None:
    """Extracted pickles made by hand; ``overrides`` replace whole files (bytes) or dict entries."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    contents = {
        "train": {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 1]},
        "test": {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [2, 0]},
        "meta": {b"fine_label_names": [b"a", b"b", b"c"]},
    }
    for name, value in overrides.items():
        split, _, key = name.partition("__")
        if key:
            contents[split][key.encode()] = value
        else:
            contents[split] = value
    for name, value in contents.items():
        (folder / name).write_bytes(value if isinstance(value, bytes) else pickle.dumps(value, protocol=2))


def test_hand_made_extracted_files_load(tmp_path: Path, no_network: None) -> None:
    _write_extracted(tmp_path)
    data = load_cifar100(tmp_path)
    assert data.class_names == ("a", "b", "c") and data.train_labels.tolist() == [0, 1, 2, 1]


def test_numpy1_pickles_like_the_official_files_load(tmp_path: Path, no_network: None) -> None:
    _write_extracted(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    # NumPy 1 (and the 2009 originals) name the array constructor numpy.core.multiarray._reconstruct.
    raw = train.read_bytes()
    assert b"numpy._core.multiarray" in raw
    train.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_cifar100(tmp_path).train_images.shape == (4, 32, 32, 3)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"train": b"\x80\x02}q\x00(X\x04"}, "train is not a readable pickle"),  # cut short
        ({"test": b"not a pickle at all"}, "test is not a readable pickle"),
        ({"meta": pickle.dumps(print)}, r"builtins\.print is not allowed"),  # a global: refused, not run
        ({"meta": [1, 2]}, "holds a list, expected a dict"),
        ({"train__data": np.zeros((4, 1024), np.uint8)}, r"must be uint8 \(N, 3072\), got uint8 \(4, 1024\)"),
        ({"train__data": np.zeros((4, 3072), np.float32)}, "must be uint8"),
        ({"test__fine_labels": [0]}, "2 images but b'fine_labels' has shape"),
        ({"train__fine_labels": [0, 1, 3, 1]}, r"labels outside \[0, 3\)"),
        ({"meta__fine_label_names": None}, "no b'fine_label_names'"),
    ],
    ids=[
        "truncated",
        "garbage",
        "foreign-global",
        "not-dict",
        "wrong-shape",
        "wrong-dtype",
        "label-count",
        "label-range",
        "no-names",
    ],
)
def test_unusable_extracted_files_are_one_clear_error(tmp_path: Path, overrides: dict, problem: str) -> None:
    _write_extracted(tmp_path, **overrides)
    with pytest.raises(
        DatasetError, match=rf"(?s)unusable: .*{problem}.*Delete that folder.*{CIFAR100_FILENAME}"
    ):
        load_cifar100(tmp_path, download=False)


def _tar_with(path: Path, members: dict[str, bytes | str]) -> str:
    """A .tar.gz whose ``str`` values are symlink targets; returns its md5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_extraction_takes_only_the_three_regular_files(tmp_path: Path, archive: tuple[Path, str]) -> None:
    src, _ = archive
    good = {name: pickle.dumps(_decode_member(src, name), protocol=2) for name in ("train", "test", "meta")}
    cache = tmp_path / "cache"
    cache.mkdir()
    md5 = _tar_with(
        cache / CIFAR100_FILENAME,
        {
            "../escaped": b"x",
            "/tmp/absolute-escape": b"x",
            "cifar-100-python/extra": b"x",
            **{f"cifar-100-python/{k}": v for k, v in good.items()},
        },
    )
    load_cifar100(cache, download=False, md5=md5)
    assert not (tmp_path / "escaped").exists()
    assert sorted(p.name for p in (cache / "cifar-100-python").iterdir()) == ["meta", "test", "train"]


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        (
            {
                "cifar-100-python/train": "/etc/passwd",
                "cifar-100-python/test": b"",
                "cifar-100-python/meta": b"",
            },
            "'cifar-100-python/train' is not a regular file",
        ),
        ({"cifar-100-python/train": b""}, "'cifar-100-python/test' is missing"),
    ],
    ids=["symlink", "missing-member"],
)
def test_bad_archive_content_is_one_clear_error(tmp_path: Path, members: dict, problem: str) -> None:
    md5 = _tar_with(tmp_path / CIFAR100_FILENAME, members)
    with pytest.raises(DatasetError, match=rf"could not be read .*{problem}"):
        load_cifar100(tmp_path, download=False, md5=md5)
    assert not (tmp_path / "cifar-100-python").exists()
    assert [p.name for p in tmp_path.iterdir()] == [CIFAR100_FILENAME]  # no temporary folder left behind


def test_not_a_gzip_archive(tmp_path: Path) -> None:
    (tmp_path / CIFAR100_FILENAME).write_bytes(b"<html>rate limited</html>")
    md5 = hashlib.md5(b"<html>rate limited</html>").hexdigest()
    with pytest.raises(DatasetError, match="could not be read"):
        load_cifar100(tmp_path, download=False, md5=md5)


def test_corrupted_gzip_stream(tmp_path: Path, archive: tuple[Path, str]) -> None:
    src, _ = archive
    damaged = bytearray(src.read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)  # zeros inside the deflate stream
    (tmp_path / CIFAR100_FILENAME).write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match="could not be read"):
        load_cifar100(tmp_path, download=False, md5=hashlib.md5(bytes(damaged)).hexdigest())
    assert not (tmp_path / "cifar-100-python").exists()


def test_unwritable_cache_is_one_clear_error(tmp_path: Path, archive: tuple[Path, str]) -> None:
    src, md5 = archive
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(DatasetError, match=rf"could not write the CIFAR-100 cache in {not_a_folder}"):
        load_cifar100(not_a_folder, url=src.as_uri(), md5=md5)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLD_DATA_DIR", str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SLD_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "sld" / "cifar100"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "sld" / "cifar100"


def test_none_means_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: None) -> None:
    monkeypatch.setenv("SLD_DATA_DIR", os.fspath(tmp_path))
    _write_extracted(tmp_path)
    assert load_cifar100().class_names == ("a", "b", "c")


# ------------------------------------------------------------------------------------------- augmentation


def _devices() -> list:
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False")
    return ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.gpu])]


@pytest.fixture(params=_devices())
def device(request: pytest.FixtureRequest):
    return torch.device(request.param)


def _images(device, b: int = 16, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.as_tensor(g.integers(0, 256, size=(b, 3, 32, 32), dtype=np.uint8), device=device)


def _gen(device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize(
    "view", [weak_view, strong_view, lambda x, g: eval_view(x)], ids=["weak", "strong", "eval"]
)
def test_views_keep_shape_device_and_give_finite_float32(device, view) -> None:
    x = _images(device)
    out = view(x, _gen(device))
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    assert torch.isfinite(out).all()
    assert out.abs().max() < 2.5  # (0 - 0.51) / 0.27 ... (1 - 0.44) / 0.26: normalized, not raw 0..255


@pytest.mark.parametrize("view", [weak_view, strong_view], ids=["weak", "strong"])
def test_views_are_reproducible_with_a_seeded_generator(device, view) -> None:
    x = _images(device, b=12)
    first, again, other = view(x, _gen(device, 5)), view(x, _gen(device, 5)), view(x, _gen(device, 6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(x, _images(device, b=12))  # the input is not written to


def test_normalization_matches_float64_reference(device) -> None:
    x = _images(device)
    expected = (x.cpu().numpy() / 255.0 - np.array(augment.CIFAR100_MEAN)[:, None, None]) / np.array(
        augment.CIFAR100_STD
    )[:, None, None]
    np.testing.assert_allclose(to_float_normalized(x).cpu().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_normalization_is_torchvisions_float32_arithmetic_bit_for_bit(device) -> None:
    """ToTensor divides by 255 in float32, Normalize subtracts and divides in float32: the same bits on
    every device (a CUDA division by a Python number would multiply by the reciprocal instead)."""
    levels = np.arange(256, dtype=np.float32)
    mean = np.array(augment.CIFAR100_MEAN, dtype=np.float32)[:, None]
    std = np.array(augment.CIFAR100_STD, dtype=np.float32)[:, None]
    expected = (levels / np.float32(255) - mean) / std  # (3, 256), float32 throughout
    x = torch.arange(256, dtype=torch.uint8, device=device).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    out = to_float_normalized(x).cpu().numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.broadcast_to(expected.reshape(1, 3, 16, 16), (2, 3, 16, 16)))


def _crop_flip_ref(img: np.ndarray, top: int, left: int, flipped: bool) -> np.ndarray:
    """Plain loops: pixel (i, j) of the crop of the 4-pixel zero-padded image, mirrored if ``flipped``."""
    out = np.zeros_like(img)
    for c in range(3):
        for i in range(32):
            for j in range(32):
                y, x = top + i - 4, left + (31 - j if flipped else j) - 4
                if 0 <= y < 32 and 0 <= x < 32:
                    out[c, i, j] = img[c, y, x]
    return out


def test_weak_crop_is_a_translate_of_the_padded_image_possibly_flipped(device) -> None:
    x = _images(device, b=64, seed=1)
    out = random_crop_flip(x, _gen(device, 2)).cpu().numpy()
    source = x.cpu().numpy()
    found = []
    for n in range(64):
        padded = np.pad(source[n], ((0, 0), (4, 4), (4, 4)))
        matches = [
            (top, left, flipped)
            for top in range(9)
            for left in range(9)
            for flipped in (False, True)
            if np.array_equal(
                out[n], padded[:, top : top + 32, left : left + 32][:, :, :: -1 if flipped else 1]
            )
        ]
        assert len(matches) == 1, f"sample {n}: {matches}"
        found.append(matches[0])
    for n in range(3):
        np.testing.assert_array_equal(out[n], _crop_flip_ref(source[n], *found[n]))
    tops, lefts, flips = zip(*found)
    assert set(tops) == set(lefts) == set(range(9))  # every offset 0..8 occurs (fixed seed)
    assert 10 < sum(flips) < 54


def test_flip_mirrors_columns(device) -> None:
    columns = torch.arange(1, 33, dtype=torch.uint8, device=device)  # pixel value = column + 1; padding is 0
    x = columns.expand(64, 3, 32, 32).contiguous()
    out = random_crop_flip(x, _gen(device, 9)).cpu().numpy().astype(int)
    directions = set()
    for n in range(64):
        row = out[n, 0, 16]
        inside = row[row > 0]
        steps = set(np.diff(inside).tolist())
        assert steps in ({1}, {-1}) and len(inside) >= 28, row
        directions.add(steps.pop())
        moved = out[n][:, out[n].any(axis=(0, 2))]  # rows that are not vertical padding
        assert (moved == row).all()  # every row and channel moved the same way
    assert directions == {1, -1}


def _official_cutout_hole(u_size: float, u_x: float, u_y: float, h: int = 32, w: int = 32) -> np.ndarray:
    """MLKD's ``Cutout``/``CutoutAbs`` and PIL's ``ImageDraw.rectangle``, written out plainly (Python
    floats); the uniforms stand for ``random.random()`` and the ``U`` inside ``np.random.uniform``."""
    hole = np.zeros((h, w), dtype=bool)
    v = u_size * 0.5  # cutout_val = random.random() * 0.5
    if v <= 0.0:
        return hole  # Cutout returns the image untouched
    v = v * w  # v * img.size[0]
    x0 = w + (1.0 - w) * u_x  # np.random.uniform(w): low=w, high=1.0 -> low + (high - low) * U
    y0 = h + (1.0 - h) * u_y
    x0 = int(max(0, x0 - v / 2.0))
    y0 = int(max(0, y0 - v / 2.0))
    x1 = min(w, x0 + v)
    y1 = min(h, y0 + v)
    # rectangle((x0, y0, x1, y1)): PIL casts the corners to int and fills from x0 to x1 inclusive.
    hole[y0 : int(y1) + 1, x0 : int(x1) + 1] = True
    return hole


def _holes(out: torch.Tensor) -> np.ndarray:
    """bool (B, H, W): where ``cutout`` of an all-black batch painted its grey."""
    return (out.cpu().numpy() != 0).any(axis=1)


def _cutout_uniforms(device, seed: int, b: int) -> np.ndarray:
    """The documented draw: one float64 ``rand((3, B))`` (size, column centre, row centre)."""
    return torch.rand((3, b), dtype=torch.float64, device=device, generator=_gen(device, seed)).cpu().numpy()


def test_cutout_is_the_official_rule_sample_by_sample(device) -> None:
    b = 2048
    x = torch.zeros(b, 3, 32, 32, dtype=torch.uint8, device=device)
    out = cutout(x, _gen(device, 4))
    holes = _holes(out)
    u = _cutout_uniforms(device, 4, b)
    for n in range(b):
        np.testing.assert_array_equal(holes[n], _official_cutout_hole(*u[:, n]), err_msg=f"sample {n}")
    fill = out.cpu().numpy().transpose(0, 2, 3, 1)[holes]
    assert (fill == np.array(CUTOUT_FILL, dtype=np.uint8)).all()
    rows, cols = holes.any(axis=2), holes.any(axis=1)
    heights, widths = rows.sum(axis=1), cols.sum(axis=1)
    assert holes.sum(axis=(1, 2)).tolist() == (heights * widths).tolist()  # solid rectangles
    assert heights.min() >= 1 and heights.max() == widths.max() == 16  # never empty, at most 16 px
    # Away from the far edges a hole is a square of side floor(v) + 1, v = 16 U.
    inside = ~rows[:, -1] & ~cols[:, -1]
    np.testing.assert_array_equal(widths[inside], np.floor(u[0, inside] * 16) + 1)
    np.testing.assert_array_equal(heights[inside], widths[inside])


def test_cutout_with_a_size_of_zero_is_no_hole(device) -> None:
    assert not _official_cutout_hole(0.0, 0.5, 0.5).any()
    x = _images(device, b=2)
    u = torch.tensor([[0.0, 1e-9], [0.5, 0.5], [0.5, 0.5]], dtype=torch.float64, device=device)
    out = augment._cutout_drawn(x, u)
    assert torch.equal(out[0], x[0])  # Cutout(img, 0) returns img
    assert (out[1] != x[1]).any(dim=0).sum() == 1  # the smallest size already paints one pixel


def test_cutout_rectangle_is_what_pillow_draws() -> None:
    pytest.importorskip("PIL")
    from PIL import Image, ImageDraw

    b = 300
    holes = _holes(cutout(torch.zeros(b, 3, 32, 32, dtype=torch.uint8), _gen("cpu", 6)))
    u = _cutout_uniforms("cpu", 6, b)
    for n in range(b):
        v = u[0, n] * 0.5 * 32
        x0 = int(max(0, 32 + (1.0 - 32) * u[1, n] - v / 2.0))
        y0 = int(max(0, 32 + (1.0 - 32) * u[2, n] - v / 2.0))
        image = Image.new("RGB", (32, 32))
        ImageDraw.Draw(image).rectangle((x0, y0, min(32, x0 + v), min(32, y0 + v)), CUTOUT_FILL)
        drawn = np.asarray(image)
        np.testing.assert_array_equal(holes[n], drawn.any(axis=2), err_msg=f"sample {n}")
        assert (drawn[holes[n]] == CUTOUT_FILL).all()


def _edge_histograms(holes: np.ndarray) -> dict[str, np.ndarray]:
    rows, cols = holes.any(axis=2), holes.any(axis=1)
    return {
        "width": np.bincount(cols.sum(axis=1), minlength=17),
        "height": np.bincount(rows.sum(axis=1), minlength=17),
        "left": np.bincount(cols.argmax(axis=1), minlength=32),
        "top": np.bincount(rows.argmax(axis=1), minlength=32),
    }


def _two_sample_chi_square(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic for two histograms of equal totals, and its degrees of freedom."""
    used = (a + b) > 0
    a, b = a[used].astype(float), b[used].astype(float)
    return float(((a - b) ** 2 / (a + b)).sum()), int(used.sum()) - 1


# chi2.ppf(1 - 1e-4, df) for the degrees of freedom that occur (1..16 px: 15; 32 positions: up to 31).
_CHI_SQUARE_CRITICAL = {15: 44.26, 16: 45.92, 30: 67.63, 31: 69.11}


def test_cutout_sizes_and_positions_follow_the_official_distribution(device) -> None:
    """Ours (torch's RNG) against MLKD's own calls (Python's random.random, NumPy's uniform(w)), by a
    two-sample chi-square on the hole's width, height, left and top edge. The rule used before (side
    floor(v), centre uniform over the pixels) fails the same test."""
    import random

    n = 16384
    ours = _edge_histograms(
        np.concatenate(
            [
                _holes(
                    cutout(torch.zeros(4096, 3, 32, 32, dtype=torch.uint8, device=device), _gen(device, s))
                )
                for s in range(4)
            ]
        )
    )
    python_random, numpy_random = random.Random(0), np.random.RandomState(0)
    official = []
    for _ in range(n):
        u_size = python_random.random()
        u_x = (numpy_random.uniform(32) - 32) / (1.0 - 32)  # back to the U behind uniform(low=32, high=1)
        u_y = (numpy_random.uniform(32) - 32) / (1.0 - 32)
        official.append(_official_cutout_hole(u_size, u_x, u_y))
    official = _edge_histograms(np.stack(official))
    assert ours["width"][0] == official["width"][0] == 0  # never an empty hole
    for key in ours:
        statistic, df = _two_sample_chi_square(ours[key], official[key])
        assert statistic < _CHI_SQUARE_CRITICAL[df], (key, statistic, df)

    def old_rule(u_size: float, cy: int, cx: int) -> np.ndarray:
        side = int(u_size * 16)
        hole = np.zeros((32, 32), dtype=bool)
        hole[
            max(0, cy - side // 2) : max(0, cy - side // 2) + side,
            max(0, cx - side // 2) : max(0, cx - side // 2) + side,
        ] = True
        return hole

    rng = np.random.default_rng(1)
    old = _edge_histograms(
        np.stack([old_rule(rng.random(), rng.integers(32), rng.integers(32)) for _ in range(n)])
    )
    for key in ("width", "left"):
        statistic, df = _two_sample_chi_square(old[key], official[key])
        assert statistic > _CHI_SQUARE_CRITICAL[df], (key, statistic, df)


# One reference per op, in float64/NumPy, written from the op's definition (PIL semantics).


def _luma_ref(img: np.ndarray) -> np.ndarray:
    r, g, b = img.astype(np.int64)
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def _blend_ref(degenerate: np.ndarray, img: np.ndarray, f: float) -> np.ndarray:
    """PIL's ImagingBlend: ``(UINT8)(d + f * (x - d))`` clipped, evaluated in C ``float`` (float32), so
    the reference has to truncate float32 values too; float64 lands on the other side of whole numbers."""
    d, x = np.asarray(degenerate, np.float32), img.astype(np.float32)
    return np.clip(np.floor(d + np.float32(f) * (x - d)), 0, 255)


def _equalize_ref(channel: np.ndarray) -> np.ndarray:
    hist = [int((channel == i).sum()) for i in range(256)]
    present = [h for h in hist if h]
    step = (sum(present) - present[-1]) // 255 if len(present) > 1 else 0
    if not step:
        return channel.copy()
    lut, n = [], step // 2
    for i in range(256):
        lut.append(min(n // step, 255))
        n += hist[i]
    return np.array(lut)[channel]


def _sharpness_ref(img: np.ndarray, f: float) -> np.ndarray:
    smooth = img.astype(np.float64).copy()
    for c in range(3):
        for i in range(1, 31):
            for j in range(1, 31):
                window = img[c, i - 1 : i + 2, j - 1 : j + 2].astype(np.int64)
                smooth[c, i, j] = np.rint((window.sum() + 4 * window[1, 1]) / 13)
    return _blend_ref(smooth, img, f)


def _affine_ref(img: np.ndarray, a: float, b: float, c: float, d: float, e: float, f: float) -> np.ndarray:
    """PIL AFFINE with NEAREST: output pixel centre (x+.5, y+.5) samples input pixel floor(A p + t)."""
    out = np.zeros_like(img)
    for y in range(32):
        for x in range(32):
            sx, sy = a * (x + 0.5) + b * (y + 0.5) + c, d * (x + 0.5) + e * (y + 0.5) + f
            if 0 <= sx < 32 and 0 <= sy < 32:
                out[:, y, x] = img[:, int(np.floor(sy)), int(np.floor(sx))]
    return out


def _autocontrast_ref(img: np.ndarray, v: float) -> np.ndarray:
    out = img.copy()
    for c in range(3):
        lo, hi = int(img[c].min()), int(img[c].max())
        if hi > lo:
            scale = 255.0 / (hi - lo)
            out[c] = np.clip([[int(v * scale - lo * scale) for v in row] for row in img[c]], 0, 255)
    return out


REFERENCES = {
    "Identity": [(0.5, lambda img, v: img)],
    "Solarize": [
        (0.0, lambda img, v: 255 - img),  # threshold 0 inverts everything
        (256.0, lambda img, v: img),
        (100.5, lambda img, v: np.where(img >= 100.5, 255 - img, img)),
    ],
    "Posterize": [
        (8.0, lambda img, v: img),
        (4.9, lambda img, v: img & 0b11110000),
        (6.0, lambda img, v: (img >> 2) << 2),
    ],
    "Brightness": [(0.3, lambda img, v: _blend_ref(np.zeros(img.shape), img, v)), (1.0, lambda img, v: img)],
    "Color": [
        (0.4, lambda img, v: _blend_ref(_luma_ref(img)[None], img, v)),
        (0.0, lambda img, v: np.repeat(_luma_ref(img)[None], 3, axis=0)),
    ],
    "Contrast": [(0.7, lambda img, v: _blend_ref(np.floor(_luma_ref(img).mean() + 0.5), img, v))],
    "Sharpness": [(0.2, _sharpness_ref), (1.0, lambda img, v: img)],
    "AutoContrast": [(0.0, _autocontrast_ref)],
    "Equalize": [(0.0, lambda img, v: np.stack([_equalize_ref(ch) for ch in img]))],
    "Rotate": [
        (0.0, lambda img, v: img),
        (90.0, lambda img, v: np.rot90(img, k=1, axes=(1, 2))),  # counter-clockwise on screen
        (-90.0, lambda img, v: np.rot90(img, k=-1, axes=(1, 2))),
        (180.0, lambda img, v: img[:, ::-1, ::-1]),
    ],
    "ShearX": [
        (0.0, lambda img, v: img),
        (0.25, lambda img, v: _affine_ref(img, 1, v, 0, 0, 1, 0)),
        (-0.3, lambda img, v: _affine_ref(img, 1, v, 0, 0, 1, 0)),
    ],
    "ShearY": [(0.25, lambda img, v: _affine_ref(img, 1, 0, 0, v, 1, 0))],
    "TranslateX": [
        (0.25, lambda img, v: np.concatenate([img[:, :, 8:], np.zeros((3, 32, 8), np.uint8)], axis=2)),
        (-0.125, lambda img, v: _affine_ref(img, 1, 0, -4, 0, 1, 0)),
    ],
    "TranslateY": [
        (-0.25, lambda img, v: np.concatenate([np.zeros((3, 8, 32), np.uint8), img[:, :24]], axis=1)),
        (0.1, lambda img, v: _affine_ref(img, 1, 0, 0, 0, 1, 3.2)),
    ],
}
CASES = [(name, v, ref) for name, cases in REFERENCES.items() for v, ref in cases]


def test_every_op_has_a_reference() -> None:
    assert set(REFERENCES) == set(OPS) and len(OPS) == 14


@pytest.mark.parametrize(("name", "v", "reference"), CASES, ids=[f"{n}-{v}" for n, v, _ in CASES])
def test_op_matches_reference(device, name: str, v: float, reference) -> None:
    x = _images(device, b=3, seed=7)
    x[2] //= 4  # a dark, low-contrast image exercises AutoContrast and Equalize differently
    out = OPS[name](x, v)
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
    for n in range(3):
        img = x[n].cpu().numpy()
        np.testing.assert_array_equal(out[n].cpu().numpy(), reference(img, v).astype(np.uint8), err_msg=name)


def test_flat_channel_is_left_alone_by_autocontrast_and_equalize(device) -> None:
    x = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8, device=device)
    for name in ("AutoContrast", "Equalize"):
        assert torch.equal(OPS[name](x, 0.0), x)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_matches_pillow(name: str) -> None:
    pil = pytest.importorskip("PIL")
    from PIL import Image, ImageEnhance, ImageOps

    def pillow(img, v):
        if name in ("Brightness", "Color", "Contrast", "Sharpness"):
            return getattr(ImageEnhance, name)(img).enhance(v)
        affine = {
            "ShearX": (1, v, 0, 0, 1, 0),
            "ShearY": (1, 0, 0, v, 1, 0),
            "TranslateX": (1, 0, v * 32, 0, 1, 0),
            "TranslateY": (1, 0, 0, 0, 1, v * 32),
        }
        if name in affine:
            return img.transform(img.size, Image.AFFINE, affine[name])
        return {
            "AutoContrast": lambda: ImageOps.autocontrast(img),
            "Equalize": lambda: ImageOps.equalize(img),
            "Identity": lambda: img,
            "Posterize": lambda: ImageOps.posterize(img, max(1, int(v))),
            "Rotate": lambda: img.rotate(v),
            "Solarize": lambda: ImageOps.solarize(img, v),
        }[name]()

    op = OPS[name]
    x = _images("cpu", b=24, seed=11)
    x[:8] = x[:8] // 3 + 60  # narrow histograms
    v = torch.as_tensor(np.random.default_rng(1).uniform(op.low, op.high, 24), dtype=torch.float32)
    out = op(x, v).numpy()
    expected = np.stack(
        [
            np.asarray(pillow(Image.fromarray(x[n].numpy().transpose(1, 2, 0)), float(v[n]))).transpose(
                2, 0, 1
            )
            for n in range(24)
        ]
    )
    mismatch = (out != expected).mean()
    # Rotate's nearest-pixel ties can fall either way under float rounding; everything else is exact.
    assert mismatch <= (2e-3 if name == "Rotate" else 0.0), f"{pil.__version__}: {mismatch:.4%} differ"


def test_rand_augment_equals_its_ops_applied_one_sample_at_a_time(device) -> None:
    x = _images(device, b=24, seed=3)
    out = rand_augment(x, _gen(device, 0))
    g = _gen(device, 0)  # replay the documented draw order: per round, op indices then magnitudes
    draws = []
    for _ in range(2):
        choice = torch.randint(0, 14, (24,), device=device, generator=g)
        u = torch.rand(24, device=device, generator=g)
        draws.append((choice, u))
    assert len({int(k) for choice, _ in draws for k in choice}) == 14  # this seed exercises every op
    for n in range(24):
        sample = x[n : n + 1]
        for choice, u in draws:
            op = RANDAUGMENT_OPS[int(choice[n])]
            sample = op(sample, op.low + (op.high - op.low) * u[n])
        assert torch.equal(out[n], sample[0]), f"sample {n}"


@pytest.mark.parametrize("b", [1, 5, 24])
def test_rand_augment_equals_one_sample_at_a_time_for_small_odd_batches(device, b: int) -> None:
    x = _images(device, b=b, seed=b)
    for seed in range(4):
        out = rand_augment(x, _gen(device, seed), num_ops=3)
        g = _gen(device, seed)
        draws = [
            (
                torch.randint(0, 14, (b,), device=device, generator=g),
                torch.rand(b, device=device, generator=g),
            )
            for _ in range(3)
        ]
        for n in range(b):
            sample = x[n : n + 1]
            for choice, u in draws:
                op = RANDAUGMENT_OPS[int(choice[n])]
                sample = op(sample, op.low + (op.high - op.low) * u[n])
            assert torch.equal(out[n], sample[0]), f"seed {seed}, sample {n}"


def test_rand_augment_with_every_sample_on_one_op(device) -> None:
    """Every pass with all samples of its kind, and with none."""
    x = _images(device, b=6, seed=8)
    u = torch.rand(1, 6, device=device, generator=_gen(device, 4))
    for k, op in enumerate(RANDAUGMENT_OPS):
        choice = torch.full((1, 6), k, device=device)
        out = augment._rand_augment_drawn(x, choice, u)
        assert torch.equal(out, op(x, op.low + (op.high - op.low) * u[0])), op.name


def test_rand_augment_num_ops(device) -> None:
    x = _images(device, b=4)
    assert rand_augment(x, _gen(device), num_ops=0) is x
    with pytest.raises(ValueError, match="num_ops must be an int >= 0, got -1"):
        rand_augment(x, _gen(device), num_ops=-1)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (24, 40), (7, 5), (1, 3)])
def test_identity_warp_returns_the_batch_exactly(device, h: int, w: int) -> None:
    """The whole-batch warp pass relies on it for samples that drew a non-geometric op."""
    x = torch.as_tensor(
        np.random.default_rng(h * w).integers(0, 256, (3, 3, h, w), dtype=np.uint8), device=device
    )
    identity = torch.eye(2, 3, device=device).expand(3, 2, 3)
    assert torch.equal(augment._warp(x.float(), identity), x.float())


def test_blend_by_one_returns_the_batch_exactly(device) -> None:
    """The whole-batch blend pass relies on it for samples that drew another op."""
    x = _images(device, b=8, seed=2)
    degenerate = _images(device, b=8, seed=3)
    ones = torch.ones(8, 1, 1, 1, device=device)
    for clamp in (True, False):
        assert torch.equal(augment._blend_values(degenerate.float(), x.float(), ones, clamp=clamp), x.float())


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Every ATen op dispatched inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_whole_batch_rand_augment_is_a_fixed_sequence_of_ops_with_no_sync() -> None:
    """The op sequence does not depend on what the samples drew (it grows with the 14 ops, not with the
    number of samples per op), and nothing reads a value back from the device."""
    rand_augment(_images("cpu", b=2), _gen("cpu", 9))  # the first call fills the per-device constants
    sequences = []
    for seed, x in [(0, _images("cpu", b=64)), (1, _images("cpu", b=64, seed=1)), (2, _images("cpu", b=3))]:
        with _OpCounter() as counter:
            rand_augment(x, _gen("cpu", seed))
        sequences.append(counter.names)
    assert sequences[0] == sequences[1] == sequences[2]
    syncing = {"aten.nonzero", "aten._local_scalar_dense", "aten.item", "aten.is_nonzero"}
    assert not syncing & set(sequences[0])
    with _OpCounter() as counter:  # the counter does see a sync
        _images("cpu", b=4).sum().item()
    assert "aten._local_scalar_dense" in counter.names


def test_strong_view_is_crop_flip_then_rand_augment_then_cutout(device) -> None:
    x = _images(device, b=8)
    g = _gen(device, 1)
    expected = to_float_normalized(cutout(rand_augment(random_crop_flip(x, g), g), g))
    assert torch.equal(strong_view(x, _gen(device, 1)), expected)


@pytest.mark.parametrize("b", [1, 7, 64])
def test_both_views_at_once_are_the_two_calls_bit_for_bit(device, b: int) -> None:
    """One call gives what weak_view then strong_view give with the same generator, and leaves the
    generator where the two calls leave it."""
    x = _images(device, b=b, seed=b)
    for seed in range(3):
        g_two, g_one = _gen(device, seed), _gen(device, seed)
        weak, strong = weak_view(x, g_two), strong_view(x, g_two)
        both = weak_and_strong_views(x, g_one)
        assert torch.equal(both[0], weak) and torch.equal(both[1], strong), f"seed {seed}"
        assert torch.equal(
            torch.rand(4, device=device, generator=g_one), torch.rand(4, device=device, generator=g_two)
        )


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.zeros(2, 3, 32, 32), TypeError, "uint8"),
        (torch.zeros(2, 32, 32, 3, dtype=torch.uint8), ValueError, r"\(B, 3, H, W\), got \(2, 32, 32, 3\)"),
        (np.zeros((2, 3, 32, 32), np.uint8), TypeError, "torch.Tensor"),
    ],
    ids=["float", "nhwc", "numpy"],
)
@pytest.mark.parametrize(
    "view",
    [weak_view, strong_view, weak_and_strong_views, lambda x, g=None: eval_view(x)],
    ids=["weak", "strong", "both", "eval"],
)
def test_bad_batches_are_one_clear_error(view, bad, error, match) -> None:
    with pytest.raises(error, match=match):
        view(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type to disagree with")
def test_generator_on_another_device_is_refused() -> None:
    with pytest.raises(ValueError, match="generator is on cpu but the batch is on cuda"):
        weak_view(_images("cuda"), torch.Generator())


def test_generator_on_bare_cuda_matches_a_cuda0_batch(monkeypatch):
    """torch.Generator(device="cuda") reports `cuda`, the batch `cuda:0`: the same device (this check
    once refused every CUDA training step; seen on an H100)."""
    from harness.data import augment

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert augment._resolved(torch.device("cuda")) == torch.device("cuda", 0)
    assert augment._resolved(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert augment._resolved(torch.device("cpu")) == torch.device("cpu")


def test_autocontrast_table_is_pils_formula_for_every_channel_range() -> None:
    """Every row of the per-device table against ImageOps.autocontrast's lookup written in NumPy float64:
    ``int(i * scale + offset)`` with ``scale = 255 / (hi - lo)``, ``offset = -lo * scale``, clipped to
    [0, 255]; the identity for a flat channel."""
    table = augment._autocontrast_table(torch.device("cpu")).numpy().reshape(256, 256, 256)
    lo = np.arange(256, dtype=np.float64).reshape(256, 1, 1)
    hi = np.arange(256, dtype=np.float64).reshape(1, 256, 1)
    i = np.arange(256, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 255.0 / (hi - lo)
        want = np.clip(np.trunc(i * scale + (-lo * scale)), 0, 255)
    want = np.where(hi > lo, want, i).astype(np.uint8)
    assert np.array_equal(table, want)
    # PIL's rounding quirk: the top value of a channel in [88, 255] maps to 254, not 255
    assert table[88, 255, 255] == 254 and table[0, 255, 255] == 255
