"""CIFAR-100 from the official python archive: download, verify, extract, load.

The cache is one folder (``default_data_dir()``) holding::

    cifar-100-python.tar.gz          the archive, kept only once its md5 matched
    cifar-100-python/{train,test,meta}  the three pickles, extracted from it

Every step writes to a temporary name in the same folder first and renames only once the content is
complete and verified, so an interrupted download, a wrong checksum or a crash during extraction never
leaves something that a later run would take for a valid cache. An archive someone put there is never
moved, renamed or overwritten: one whose md5 is not the official one is refused where it lies, with
both md5s. Whatever goes wrong comes back as one :class:`DatasetError` that says what is wrong, the URL
and md5 to download, and the exact path to put it in.

Example
-------
>>> data = load_cifar100()                  # doctest: +SKIP
>>> data.train_images.shape, data.train_labels.dtype
((50000, 32, 32, 3), dtype('int64'))
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "CIFAR100",
    "CIFAR100_FILENAME",
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "DatasetError",
    "default_data_dir",
    "load_cifar100",
]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FILENAME = "cifar-100-python.tar.gz"

_FOLDER = "cifar-100-python"  # top-level folder inside the archive
_SPLITS = ("train", "test", "meta")
_IMAGE_SHAPE = (3, 32, 32)  # a row of b"data" is one image, channel-major (CHW), 1024 bytes per channel
_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole 161 MiB
_MAX_MEMBER_BYTES = 1 << 30  # the real train pickle is ~155 MiB; refuse anything absurd (gzip bomb)

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """The dataset is missing, unreachable, corrupt or not in the expected format."""


@dataclass(frozen=True)
class CIFAR100:
    """The CIFAR-100 train and test splits in memory.

    Images are ``uint8`` NHWC ``(N, 32, 32, 3)``; labels are ``int64`` ``(N,)`` fine-label indices into
    ``class_names`` (100 names for the real dataset).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def default_data_dir() -> Path:
    """Where the dataset is cached: ``$SLD_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/sld/cifar100``
    (``~/.cache/sld/cifar100`` when ``XDG_CACHE_HOME`` is unset)."""
    explicit = os.environ.get("SLD_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "sld" / "cifar100"


def load_cifar100(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    url: str = CIFAR100_URL,
    md5: str = CIFAR100_MD5,
) -> CIFAR100:
    """Load CIFAR-100, fetching and extracting it into ``data_dir`` first if needed.

    Order: extracted pickles in ``data_dir/cifar-100-python/`` are used as they are (no network, no
    checksum); else ``data_dir/cifar-100-python.tar.gz`` is md5-verified and extracted; else, when
    ``download`` is true, the archive is downloaded from ``url`` and verified against ``md5``.

    Parameters
    ----------
    data_dir
        Cache folder; ``None`` means :func:`default_data_dir`.
    download
        Allow fetching ``url``. ``False`` never touches the network.
    url, md5
        Source of the archive and its expected md5 (tests and mirrors pass their own).

    Returns
    -------
    CIFAR100
        ``uint8`` NHWC images and ``int64`` labels for both splits, plus the fine class names.

    Raises
    ------
    DatasetError
        Missing data with ``download=False``, a failed download, a checksum mismatch, or pickles that
        cannot be read or hold arrays of the wrong shape or dtype.
    """
    root = Path(default_data_dir() if data_dir is None else data_dir).expanduser().resolve()
    md5 = md5.lower()
    archive = root / CIFAR100_FILENAME
    extracted = root / _FOLDER
    if not all((extracted / name).is_file() for name in _SPLITS):
        if not archive.is_file() and not download:
            raise DatasetError(
                f"CIFAR-100 not found in {root} (neither {extracted}/{{train,test,meta}} nor {archive}) "
                "and downloading is off (download=False; in a run's config: data.download). "
                f"{_how_to_fix(archive, url, md5)}, or switch downloading on."
            )
        try:
            if archive.is_file():
                _verify_archive(archive, url, md5)
            else:
                _download(url, archive, md5)
            _extract(archive, extracted, url, md5)
        except OSError as exc:  # what is left once network and archive errors are reported: the cache itself
            raise DatasetError(
                f"could not write the CIFAR-100 cache in {root} ({type(exc).__name__}: {exc}); make room or "
                f"choose another folder (data_dir=... or SLD_DATA_DIR)."
            ) from exc
    return _load_extracted(extracted, archive, url, md5)


def _how_to_fix(archive: Path, url: str, md5: str) -> str:
    return f"Download {url} (md5 {md5}) and put it at {archive}"


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_archive(archive: Path, url: str, md5: str) -> None:
    actual = _md5_of(archive)
    if actual != md5:
        # Our own downloads are verified before they get this name, so this file was put here by
        # someone: it stays where it is (never renamed, never downloaded over), and the error says why.
        raise DatasetError(
            f"CIFAR-100 archive {archive} has md5 {actual}, but the expected archive has md5 {md5}; it was "
            f"left where it is. Replace it with the file from {url} (or delete it and let sld download it)."
        )


def _download(url: str, archive: Path, md5: str) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=archive.parent)
    tmp = Path(tmp_name)
    log.info("downloading %s to %s", url, archive)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != md5:
            raise DatasetError(
                f"downloaded {url} has md5 {actual}, expected {md5} (truncated or changed upstream); "
                f"nothing was kept. {_how_to_fix(archive, url, md5)}."
            )
        os.replace(tmp, archive)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # OSError covers URLError, timeouts, refused connections and a full disk; HTTPException a
        # connection cut mid-body (IncompleteRead); ValueError an unknown URL scheme.
        raise DatasetError(
            f"could not download {url} ({type(exc).__name__}: {exc}); nothing was kept. "
            f"{_how_to_fix(archive, url, md5)}."
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)  # no-op after the rename; otherwise no partial file survives, even ^C


def _extract(archive: Path, extracted: Path, url: str, md5: str) -> None:
    """Copy exactly ``cifar-100-python/{train,test,meta}`` out of the archive.

    Member names are looked up, never used as output paths, so no path in the archive can escape the
    cache (stricter than ``tarfile``'s ``filter="data"``): links, devices and other members are ignored.
    """
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{_FOLDER}.", suffix=".extracting", dir=archive.parent))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in _SPLITS:
                    _copy_member(tar, f"{_FOLDER}/{name}", tmp_dir / name)
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:  # EOFError: cut short
            raise DatasetError(
                f"CIFAR-100 archive {archive} could not be read ({type(exc).__name__}: {exc}); delete it. "
                f"{_how_to_fix(archive, url, md5)}."
            ) from exc
        extracted.mkdir(parents=True, exist_ok=True)
        # One rename per file: each pickle is either complete or absent, whatever happens in between.
        for name in _SPLITS:
            os.replace(tmp_dir / name, extracted / name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _copy_member(tar: tarfile.TarFile, member_name: str, dest: Path) -> None:
    try:
        member = tar.getmember(member_name)
    except KeyError:
        raise tarfile.TarError(f"member {member_name!r} is missing") from None
    if not member.isfile():
        raise tarfile.TarError(f"member {member_name!r} is not a regular file")
    if member.size > _MAX_MEMBER_BYTES:
        raise tarfile.TarError(f"member {member_name!r} is {member.size} bytes, implausibly large")
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has a file object
    with source, dest.open("wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only what the CIFAR pickles hold: dicts, lists, bytes and NumPy arrays.

    A pickle can run arbitrary code; this one refuses every other global, so a tampered cache fails
    with an error instead of executing something.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # how NumPy 1 (and the 2009 files) pickle arrays
        ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 3 writes bytes this way at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR pickle")
        return super().find_class(module, name)


def _read_pickle(file: IO[bytes]) -> Any:
    # encoding="bytes": the official files were written by Python 2, whose str keys become bytes.
    return _ArrayUnpickler(file, encoding="bytes").load()


def _load_extracted(extracted: Path, archive: Path, url: str, md5: str) -> CIFAR100:
    def fail(problem: str, cause: BaseException | None = None) -> DatasetError:
        error = DatasetError(
            f"CIFAR-100 files in {extracted} are unusable: {problem}. Delete that folder and retry; "
            f"{_how_to_fix(archive, url, md5)}."
        )
        error.__cause__ = cause
        return error

    raw: dict[str, Any] = {}
    for name in _SPLITS:
        path = extracted / name
        try:
            with path.open("rb") as f:
                raw[name] = _read_pickle(f)
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            ImportError,
            IndexError,
            KeyError,
            OSError,
        ) as exc:  # what a truncated or garbled pickle raises
            raise fail(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})", exc) from exc
        if not isinstance(raw[name], dict):
            raise fail(f"{path} holds a {type(raw[name]).__name__}, expected a dict")

    names = raw["meta"].get(b"fine_label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, bytes) for n in names):
        raise fail(f"{extracted / 'meta'} has no b'fine_label_names' list of bytes")
    class_names = tuple(n.decode("utf-8", errors="replace") for n in names)

    splits = {}
    for name in ("train", "test"):
        path = extracted / name
        data, labels = raw[name].get(b"data"), raw[name].get(b"fine_labels")
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or (data.shape[1] != np.prod(_IMAGE_SHAPE))
        ):
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise fail(f"{path} b'data' must be uint8 (N, {np.prod(_IMAGE_SHAPE)}), got {got}")
        try:
            labels = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise fail(f"{path} b'fine_labels' is not a list of integers", exc) from exc
        if labels.shape != (data.shape[0],):
            raise fail(f"{path} has {data.shape[0]} images but b'fine_labels' has shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise fail(f"{path} has labels outside [0, {len(class_names)})")
        images = data.reshape(-1, *_IMAGE_SHAPE).transpose(0, 2, 3, 1)  # CHW rows -> NHWC
        splits[name] = (np.ascontiguousarray(images), labels)

    return CIFAR100(
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        class_names=class_names,
    )
