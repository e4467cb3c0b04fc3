"""Dataset readers: MNIST, Fashion-MNIST, KMNIST, EMNIST-Letters and CIFAR-10 from their distribution files.

Files live under a data root in torchvision's folder layout, so an existing torchvision download works as is::

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <root>/FashionMNIST/raw/…            same names
    <root>/KMNIST/raw/…                  same names
    <root>/EMNIST/raw/emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}

Images come back as uint8 ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (CIFAR-10, HWC) and labels as int64.
EMNIST-Letters images are transposed (= rotate by -90 degrees, then flip horizontally, as the paper's code does)
so letters are upright, and its labels 1..26 are mapped to 0..25 (``a`` = 0).

Missing files are downloaded from the same mirrors torchvision uses, checked against their md5 and written
atomically (temporary file, then rename).  ``SPKDIFF_DATA_MIRROR`` (comma-separated base URLs, ``{name}`` is
replaced by the dataset name) or the ``mirrors`` argument replaces the standard mirrors.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch

from spkdiff.errors import DatasetMissingError, SpkdiffError

DATA_ENV = "SPKDIFF_DATA"
MIRROR_ENV = "SPKDIFF_DATA_MIRROR"
SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT_S = 60.0


class DatasetFormatError(SpkdiffError):
    """A dataset file exists but is not in the expected format (truncated, wrong magic, wrong shape)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files are, how to read them and where to fetch them.

    ``files[split]`` lists the stored file names under ``folder``: for idx datasets (images, labels), a name
    ending in ``.gz`` is also accepted uncompressed.  Files are fetched one by one as ``<mirror>/<name>``
    or, when ``archive`` is set, extracted from that archive (members ``archive_prefix + name``).
    ``md5`` holds the md5 of a stored file as distributed, checked when it is downloaded or extracted.
    """

    name: str
    title: str
    folder: str
    fmt: str  # "idx" | "cifar"
    shape: tuple[int, int, int]  # (C, H, W)
    classes: tuple[str, ...]
    files: dict[str, tuple[str, ...]]
    mirrors: tuple[str, ...]
    md5: dict[str, str] = field(default_factory=dict)
    archive: tuple[str, str] | None = None  # (file name on the mirrors, md5)
    archive_prefix: str = ""
    transpose: bool = False
    label_offset: int = 0  # subtracted from the stored labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _idx_files(prefix: str = "", train: str = "train", test: str = "t10k") -> dict[str, tuple[str, ...]]:
    return {
        split: (f"{prefix}{tag}-images-idx3-ubyte.gz", f"{prefix}{tag}-labels-idx1-ubyte.gz")
        for split, tag in (("train", train), ("test", test))
    }


def _idx_md5(train_img: str, train_lbl: str, test_img: str, test_lbl: str) -> dict[str, str]:
    names = _idx_files()
    return dict(zip(names["train"] + names["test"], (train_img, train_lbl, test_img, test_lbl)))


_DIGITS = tuple("0123456789")
_MNIST = DatasetSpec(
    name="mnist", title="MNIST", folder="MNIST/raw", fmt="idx", shape=(1, 28, 28), classes=_DIGITS,
    files=_idx_files(),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    md5=_idx_md5("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                 "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
)
_FASHION = DatasetSpec(
    name="fashion-mnist", title="Fashion-MNIST", folder="FashionMNIST/raw", fmt="idx", shape=(1, 28, 28),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    files=_idx_files(),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5=_idx_md5("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                 "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
)
_KMNIST = DatasetSpec(
    name="kmnist", title="Kuzushiji-MNIST", folder="KMNIST/raw", fmt="idx", shape=(1, 28, 28),
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    files=_idx_files(),
    mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    md5=_idx_md5("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
                 "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134"),
)
_LETTERS = DatasetSpec(
    name="letters", title="EMNIST-Letters", folder="EMNIST/raw", fmt="idx", shape=(1, 28, 28),
    classes=tuple("abcdefghijklmnopqrstuvwxyz"),
    files=_idx_files("emnist-letters-", train="train", test="test"),
    mirrors=("https://biometrics.nist.gov/cs_links/EMNIST/",),
    archive=("gzip.zip", "58c8d27c78d21e728a6bc7b3cc06412e"), archive_prefix="gzip/",
    transpose=True, label_offset=1,
)
_CIFAR10 = DatasetSpec(
    name="cifar10", title="CIFAR-10", folder="cifar-10-batches-py", fmt="cifar", shape=(3, 32, 32),
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    md5={"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
         "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
         "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"},
    archive=("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"), archive_prefix="cifar-10-batches-py/",
)

DATASET_NAMES = ("mnist", "fashion-mnist", "kmnist", "letters", "cifar10")
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (_MNIST, _FASHION, _KMNIST, _LETTERS, _CIFAR10)}
DATASETS["fmnist"] = _FASHION  # alias
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "emnist-letters": "letters",
            "cifar-10": "cifar10"}

_CACHE: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}


def resolve_data_root(arg: str | os.PathLike[str] | None) -> Path:
    """The data root: ``arg`` (``--data-root``), else ``$SPKDIFF_DATA``, else ``./data``."""
    value = arg if arg else os.environ.get(DATA_ENV) or "data"
    return Path(value).expanduser()


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (case-insensitive; aliases such as ``fmnist`` accepted)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise SpkdiffError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")
    return DATASETS[key]


def image_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) of one image of dataset ``name``."""
    return get_spec(name).shape


def check_image_shape(name: str, shape: Sequence[int], what: str) -> None:
    """Refuse images (or a model made for images) of ``shape`` (C, H, W) with dataset ``name``'s of another
    shape; ``what`` starts the message, e.g. ``"run R was trained on"``."""
    spec = get_spec(name)
    if tuple(shape) != spec.shape:
        raise SpkdiffError(f"{what} {'x'.join(map(str, shape))} images but {spec.title} images are "
                           f"{'x'.join(map(str, spec.shape))}")


def clear_cache() -> None:
    """Forget the arrays loaded so far in this process."""
    _CACHE.clear()


# ---------------------------------------------------------------------------------------------- file formats


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetFormatError(f"{path}: corrupt gzip data ({err}); delete it to download it again") from None


def parse_idx(data: bytes, ndim: int, source: str = "idx data") -> np.ndarray:
    """Parse an idx file of unsigned bytes: magic ``0x0000 08 ndim``, ``ndim`` big-endian uint32 sizes, data."""
    if len(data) < 4 + 4 * ndim:
        raise DatasetFormatError(f"{source}: too short for an idx header ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != 0x0800 + ndim:
        raise DatasetFormatError(
            f"{source}: bad idx magic 0x{magic:08x} (expected 0x{0x0800 + ndim:08x}: uint8 with {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - offset != expected:
        raise DatasetFormatError(
            f"{source}: idx header says {'x'.join(map(str, dims))} = {expected} bytes but {len(data) - offset} follow")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches: only numpy arrays and Python builtins, no other globals."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def parse_cifar_batch(data: bytes, source: str = "CIFAR batch") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: ``data`` (N, 3072) uint8 rows of R, G, B planes -> (N, 32, 32, 3), labels."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means a corrupt or foreign file
        raise DatasetFormatError(f"{source}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetFormatError(f"{source}: not a CIFAR-10 python batch (no b'data'/b'labels' entries)")
    images = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{source}: data is {images.dtype} {images.shape}, expected uint8 (N, 3072)")
    if labels.shape != (images.shape[0],):
        raise DatasetFormatError(f"{source}: {labels.shape[0]} labels for {images.shape[0]} images")
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


# ---------------------------------------------------------------------------------------------- locating files


def _candidates(folder: Path, name: str) -> list[Path]:
    """Accepted paths for stored file ``name``: ``x.gz`` may also be stored uncompressed as ``x``."""
    if name.endswith(".gz"):
        return [folder / name[:-3], folder / name]
    return [folder / name]


def _find(folder: Path, name: str) -> Path | None:
    return next((p for p in _candidates(folder, name) if p.is_file()), None)


def _describe(folder: Path, name: str) -> str:
    return f"{folder / name[:-3]}[.gz]" if name.endswith(".gz") else str(folder / name)


def _mirrors(spec: DatasetSpec, mirrors: Sequence[str] | None) -> list[str]:
    if mirrors is None and os.environ.get(MIRROR_ENV):
        mirrors = [m.strip() for m in os.environ[MIRROR_ENV].split(",") if m.strip()]
    bases = list(mirrors) if mirrors else list(spec.mirrors)
    return [b.replace("{name}", spec.name).rstrip("/") + "/" for b in bases]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _missing_error(spec: DatasetSpec, root: Path, split: str, reason: str, mirrors: list[str]) -> DatasetMissingError:
    folder = root / spec.folder
    missing = [_describe(folder, n) for n in spec.files[split] if _find(folder, n) is None]
    source = spec.archive[0] if spec.archive else "the files"
    return DatasetMissingError(_one_line(
        f"{spec.title} ({spec.name}) {split} data missing: expected {', '.join(missing)}; {reason}. "
        f"Download {source} from {' or '.join(mirrors)} into that layout (torchvision's), or pass --data-root / "
        f"set {DATA_ENV} to a folder that has them."))


# ---------------------------------------------------------------------------------------------- downloading


class _DownloadError(Exception):
    """A download or extraction failed; becomes the reason in a :class:`DatasetMissingError`."""


def _write_atomic(dest: Path, chunks: Iterator[bytes], md5: str | None, what: str) -> None:
    """Write ``chunks`` to ``dest`` via a temporary file in the same folder; on an md5 mismatch keep nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
        if md5 is not None and h.hexdigest() != md5:
            raise _DownloadError(f"md5 mismatch for {what} (got {h.hexdigest()}, expected {md5})")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str) -> Iterator[bytes]:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        yield from iter(lambda: response.read(1 << 20), b"")


def download_file(filename: str, dest: Path, md5: str | None, mirrors: Sequence[str]) -> None:
    """Fetch ``<mirror>filename`` from the first mirror that serves it with the right md5, atomically to ``dest``."""
    errors: list[str] = []
    for base in mirrors:
        url = base + filename
        print(f"spkdiff: downloading {url}", file=sys.stderr)
        try:
            _write_atomic(dest, _stream(url), md5, url)
            return
        except (_DownloadError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            errors.append(_one_line(f"{url}: {err}"))
    raise _DownloadError("; ".join(errors))


def _extract(spec: DatasetSpec, archive: Path, folder: Path, names: Sequence[str]) -> None:
    """Copy members ``archive_prefix + name`` of a .zip or .tar[.gz] archive to ``folder/name`` atomically."""
    with contextlib.ExitStack() as stack:
        if zipfile.is_zipfile(archive):
            zf = stack.enter_context(zipfile.ZipFile(archive))
            present = set(zf.namelist())

            def open_member(member: str) -> IO[bytes] | None:
                return zf.open(member) if member in present else None
        else:
            tf = stack.enter_context(tarfile.open(archive, "r:*"))

            def open_member(member: str) -> IO[bytes] | None:
                try:
                    info = tf.getmember(member)
                except KeyError:
                    return None
                return tf.extractfile(info) if info.isfile() else None

        for name in names:
            member = spec.archive_prefix + name
            src = open_member(member)
            if src is None:
                raise _DownloadError(f"{archive.name} has no file {member}")
            with src:
                _write_atomic(folder / name, iter(lambda s=src: s.read(1 << 20), b""), spec.md5.get(name),
                              f"{archive.name}:{member}")


def _fetch(spec: DatasetSpec, root: Path, split: str, mirrors: list[str]) -> None:
    folder = root / spec.folder
    if spec.archive is None:
        for name in spec.files[split]:
            if _find(folder, name) is None:
                download_file(name, folder / name, spec.md5.get(name), mirrors)
        return
    archive_name, archive_md5 = spec.archive
    archive = folder / archive_name
    try:
        download_file(archive_name, archive, archive_md5, mirrors)
        wanted = [n for s in SPLITS for n in spec.files[s] if _find(folder, n) is None]
        _extract(spec, archive, folder, wanted)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise _DownloadError(f"cannot extract {archive_name}: {_one_line(err)}") from None
    finally:
        archive.unlink(missing_ok=True)


def ensure_files(spec: DatasetSpec, root: Path, split: str, download: bool = True,
                 mirrors: Sequence[str] | None = None) -> list[Path]:
    """Paths of the files of ``split``, downloading missing ones (or raising :class:`DatasetMissingError`)."""
    folder = root / spec.folder
    if any(_find(folder, n) is None for n in spec.files[split]):
        bases = _mirrors(spec, mirrors)
        if not download:
            raise _missing_error(spec, root, split, "downloading is disabled", bases)
        new_folders = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        try:
            _fetch(spec, root, split, bases)
        except (_DownloadError, OSError) as err:
            for p in new_folders:  # a failed download leaves no empty folders behind
                with contextlib.suppress(OSError):
                    p.rmdir()
            raise _missing_error(spec, root, split, f"download failed ({_one_line(err)})", bases) from None
    paths = [_find(folder, n) for n in spec.files[split]]
    assert all(p is not None for p in paths)
    return paths  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- public loaders


def _read(spec: DatasetSpec, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    if spec.fmt == "idx":
        images = parse_idx(_read_maybe_gzip(paths[0]), 3, str(paths[0]))
        labels = parse_idx(_read_maybe_gzip(paths[1]), 1, str(paths[1])).astype(np.int64)
    else:
        parts = [parse_cifar_batch(_read_maybe_gzip(p), str(p)) for p in paths]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    source = str(paths[0].parent)
    if spec.transpose:
        images = images.transpose(0, 2, 1)
    images = np.ascontiguousarray(images)
    labels = labels - spec.label_offset
    c, h, w = spec.shape
    want = (h, w) if c == 1 else (h, w, c)
    if images.shape[1:] != want:
        raise DatasetFormatError(f"{source}: {spec.title} images are {images.shape[1:]}, expected {want}")
    if len(images) != len(labels):
        raise DatasetFormatError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        lo, hi = spec.label_offset, spec.label_offset + spec.num_classes - 1
        raise DatasetFormatError(f"{source}: {spec.title} labels outside {lo}..{hi}")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_arrays(name: str, root: str | os.PathLike[str] | None, split: str, download: bool = True,
                mirrors: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, (N,H,W) or (N,H,W,3)) and labels (int64, 0-based) of ``split`` ("train" or "test").

    Results are cached per process and read-only; copy before modifying.
    """
    if split not in SPLITS:
        raise SpkdiffError(f"unknown split {split!r}: choose train or test")
    spec = get_spec(name)
    base = resolve_data_root(root)
    key = (spec.name, str(base.resolve()), split)
    if key not in _CACHE:
        _CACHE[key] = _read(spec, ensure_files(spec, base, split, download, mirrors))
    return _CACHE[key]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,C) -> float32 (N,C,H,W) in [0, 1] (x / 255)."""
    x = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0))


def load_tensor(name: str, root: str | os.PathLike[str] | None, split: str, download: bool = True,
                limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (N,C,H,W) in [0, 1] and int64 labels; ``limit`` keeps the first ``limit`` items."""
    images, labels = load_arrays(name, root, split, download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_tensor(images), torch.from_numpy(labels.copy())


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset of (image float32 (C,H,W) in [0, 1], label int) held in memory."""

    def __init__(self, name: str, root: str | os.PathLike[str] | None, split: str = "train",
                 download: bool = True, limit: int | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.spec = get_spec(name)
        self.images, self.labels = load_tensor(name, root, split, download, limit)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        return (self.transform(x) if self.transform else x), int(self.labels[index])
