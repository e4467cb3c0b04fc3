"""Dataset readers: real MNIST/Fashion-MNIST files, format fixtures, download from a local mirror."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_formats import (
    cifar_batch_bytes,
    idx_bytes,
    md5,
    serve_directory,
    write_cifar,
    write_idx,
    write_tar_gz,
    write_zip,
)

from spkdiff import data
from spkdiff.errors import DatasetMissingError, SpkdiffError

MD5 = {
    "mnist": {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    "fashion-mnist": {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                      "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                      "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                      "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
}
FOLDER = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
# Published per-class counts.
COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("fashion-mnist", "train"): [6000] * 10,
    ("fashion-mnist", "test"): [1000] * 10,
}
TAG = {"train": "train", "test": "t10k"}


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    data.clear_cache()
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    monkeypatch.delenv(data.DATA_ENV, raising=False)


def _rng_images(seed: int, n: int, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_real_files(shared_data_root: Path, name: str, split: str) -> None:
    images, labels = data.load_arrays(name, shared_data_root, split, download=False)
    n = 60000 if split == "train" else 10000
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == COUNTS[(name, split)]
    # The files are the published ones, and the arrays hold exactly their content.
    folder = shared_data_root / FOLDER[name]
    img_name, lbl_name = f"{TAG[split]}-images-idx3-ubyte", f"{TAG[split]}-labels-idx1-ubyte"
    assert md5(gzip.decompress((folder / f"{img_name}.gz").read_bytes())) == MD5[name][img_name]
    assert md5(gzip.decompress((folder / f"{lbl_name}.gz").read_bytes())) == MD5[name][lbl_name]
    assert md5(idx_bytes(images)) == MD5[name][img_name]
    assert md5(idx_bytes(labels.astype(np.uint8))) == MD5[name][lbl_name]
    assert 0 < images.mean() < 255


def test_real_mnist_read_is_fast_and_cached(shared_data_root: Path) -> None:
    start = time.process_time()
    images, labels = data.load_arrays("mnist", shared_data_root, "train")
    elapsed = time.process_time() - start
    assert elapsed < 1.0, f"reading 60000 MNIST images took {elapsed:.2f} s of CPU"
    again = data.load_arrays("mnist", str(shared_data_root), "train")
    assert again[0] is images and again[1] is labels
    assert not images.flags.writeable and not labels.flags.writeable


def test_fmnist_alias_and_tensor(shared_data_root: Path) -> None:
    x, y = data.load_tensor("fmnist", shared_data_root, "test", limit=100)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    images, labels = data.load_arrays("fashion-mnist", shared_data_root, "test")
    assert torch.equal(x[:, 0] * 255, torch.from_numpy(images[:100].astype(np.float32)))
    assert y.tolist() == labels[:100].tolist()


# ---------------------------------------------------------------------------------------------- API


def test_names_shapes_and_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert set(data.DATASET_NAMES) <= set(data.DATASETS)
    assert data.DATASETS["fmnist"] is data.DATASETS["fashion-mnist"]
    assert data.image_shape("mnist") == (1, 28, 28)
    assert data.image_shape("FMNIST") == (1, 28, 28)
    assert data.image_shape("letters") == (1, 28, 28)
    assert data.image_shape("cifar10") == (3, 32, 32)
    assert data.get_spec("letters").num_classes == 26
    with pytest.raises(SpkdiffError, match="unknown dataset 'svhn'"):
        data.image_shape("svhn")
    assert data.resolve_data_root(None) == Path("data")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.resolve_data_root(None) == tmp_path
    assert data.resolve_data_root("elsewhere") == Path("elsewhere")


# ---------------------------------------------------------------------------------------------- format fixtures


def _write_kmnist(root: Path, split: str, n: int, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    images = _rng_images(1, n)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(root / "KMNIST" / "raw" / f"{TAG[split]}-images-idx3-ubyte{suffix}", images)
    write_idx(root / "KMNIST" / "raw" / f"{TAG[split]}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_kmnist_fixture(tmp_path: Path, gz: bool) -> None:
    images, labels = _write_kmnist(tmp_path, "test", 13, gz=gz)
    x, y = data.load_arrays("kmnist", tmp_path, "test", download=False)
    assert np.array_equal(x, images) and y.tolist() == labels.tolist() and y.dtype == np.int64
    ds = data.ImageDataset("kmnist", tmp_path, "test", download=False)
    assert len(ds) == 13
    img, label = ds[4]
    assert img.shape == (1, 28, 28) and label == 4
    assert torch.allclose(img[0] * 255, torch.from_numpy(images[4].astype(np.float32)))


def _upright_letters() -> np.ndarray:
    """Two asymmetric upright glyphs: an 'L' and a 'P'-like blob (no symmetry under transposition)."""
    out = np.zeros((2, 28, 28), dtype=np.uint8)
    out[0, 4:22, 6] = 255  # vertical stroke on the left
    out[0, 21, 6:18] = 200  # foot at the bottom, to the right
    out[1, 3:24, 8] = 255
    out[1, 3, 8:16] = 150
    out[1, 3:11, 16] = 100
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_letters_orientation_and_labels(tmp_path: Path, gz: bool) -> None:
    upright = _upright_letters()
    stored = upright.transpose(0, 2, 1).copy()  # EMNIST stores the glyphs transposed
    suffix = ".gz" if gz else ""
    raw = tmp_path / "EMNIST" / "raw"
    write_idx(raw / f"emnist-letters-train-images-idx3-ubyte{suffix}", stored)
    write_idx(raw / f"emnist-letters-train-labels-idx1-ubyte{suffix}", np.array([12, 16], dtype=np.uint8))
    x, y = data.load_arrays("letters", tmp_path, "train", download=False)
    # rotate by -90 degrees (clockwise), then flip horizontally == the upright glyph
    assert np.array_equal(x, np.stack([np.fliplr(np.rot90(s, k=-1)) for s in stored]))
    assert np.array_equal(x, upright)
    assert x[0, 21, 17] == 200 and x[0, 17, 21] == 0  # the L's foot is at the bottom
    assert y.tolist() == [11, 15]  # 1-based 'l', 'p' -> 0-based
    assert [data.get_spec("letters").classes[i] for i in y] == ["l", "p"]


def test_letters_label_zero_rejected(tmp_path: Path) -> None:
    raw = tmp_path / "EMNIST" / "raw"
    write_idx(raw / "emnist-letters-test-images-idx3-ubyte.gz", _upright_letters())
    write_idx(raw / "emnist-letters-test-labels-idx1-ubyte.gz", np.array([0, 3], dtype=np.uint8))
    with pytest.raises(data.DatasetFormatError, match=r"labels outside 1\.\.26"):
        data.load_arrays("letters", tmp_path, "test", download=False)


def _cifar_parts(n_per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: (_rng_images(10 + i, n_per_batch, (32, 32, 3)), (np.arange(n_per_batch) + i) % 10)
            for i, name in enumerate(names)}


def test_cifar10_fixture_hwc(tmp_path: Path) -> None:
    parts = _cifar_parts()
    write_cifar(tmp_path / "cifar-10-batches-py", parts)
    x, y = data.load_arrays("cifar10", tmp_path, "train", download=False)
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x, np.concatenate([parts[f"data_batch_{i}"][0] for i in range(1, 6)]))
    assert y.tolist() == np.concatenate([parts[f"data_batch_{i}"][1] for i in range(1, 6)]).tolist()
    # The stored rows are the R plane, then G, then B: pixel (0, 1) of image 0 is row[1], row[1025], row[2049].
    rows = parts["data_batch_1"][0].transpose(0, 3, 1, 2).reshape(3, -1)
    assert x[0, 0, 1].tolist() == [rows[0, 1], rows[0, 1025], rows[0, 2049]]
    xt, yt = data.load_tensor("cifar10", tmp_path, "test", download=False)
    assert xt.shape == (3, 3, 32, 32)
    assert torch.allclose(xt[1].permute(1, 2, 0) * 255, torch.from_numpy(parts["test_batch"][0][1].astype(np.float32)))
    assert yt.tolist() == parts["test_batch"][1].tolist()


def test_cifar_foreign_pickle_rejected(tmp_path: Path) -> None:
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}, protocol=2))
    with pytest.raises(data.DatasetFormatError, match="not allowed"):
        data.load_arrays("cifar10", tmp_path, "test", download=False)


def test_malformed_idx(tmp_path: Path) -> None:
    raw = tmp_path / "KMNIST" / "raw"
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    bad = bytearray(idx_bytes(_rng_images(0, 4)))
    bad[2] = 0x0D  # float32 type code instead of uint8
    (raw / "t10k-images-idx3-ubyte").write_bytes(bytes(bad))
    with pytest.raises(data.DatasetFormatError, match=r"t10k-images-idx3-ubyte: bad idx magic 0x00000d03") as err:
        data.load_arrays("kmnist", tmp_path, "test", download=False)
    assert "\n" not in str(err.value)
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(_rng_images(0, 4))[:-5])  # truncated
    with pytest.raises(data.DatasetFormatError, match="4x28x28 = 3136 bytes but 3131 follow"):
        data.load_arrays("kmnist", tmp_path, "test", download=False)
    (raw / "t10k-images-idx3-ubyte").unlink()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(_rng_images(0, 4)))[:-20])
    with pytest.raises(data.DatasetFormatError, match="corrupt gzip"):
        data.load_arrays("kmnist", tmp_path, "test", download=False)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    raw = tmp_path / "KMNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte.gz", _rng_images(0, 4))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(data.DatasetFormatError, match="4 images but 3 labels"):
        data.load_arrays("kmnist", tmp_path, "test", download=False)


# ---------------------------------------------------------------------------------------------- missing + download


def test_missing_data_error_names_paths(tmp_path: Path) -> None:
    _write_kmnist(tmp_path, "train", 3)
    (tmp_path / "KMNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetMissingError) as err:
        data.load_arrays("kmnist", tmp_path, "train", download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "kmnist" in msg and "downloading is disabled" in msg
    assert str(tmp_path / "KMNIST" / "raw" / "train-labels-idx1-ubyte") in msg
    assert "train-images" not in msg  # only the missing file is named
    assert "codh.rois.ac.jp" in msg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_unreachable_is_missing_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(DatasetMissingError, match="download failed") as err:
        data.load_arrays("cifar10", tmp_path / "root", "test")
    assert "\n" not in str(err.value)
    assert str(tmp_path / "root" / "cifar-10-batches-py" / "test_batch") in str(err.value)
    assert not (tmp_path / "root").exists()  # no file, and no empty folder either


def test_failed_download_leaves_no_empty_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}/")
    (tmp_path / "root").mkdir()  # an existing root stays, the dataset's folders go
    with pytest.raises(DatasetMissingError, match="download failed"):
        data.load_arrays("mnist", tmp_path / "root", "test")
    assert list((tmp_path / "root").iterdir()) == []


@pytest.fixture
def mirror(tmp_path: Path) -> tuple[Path, str]:
    served = tmp_path / "served"
    served.mkdir()
    with serve_directory(served) as url:
        yield served, url


def _serve_kmnist(served: Path) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    images, labels = _rng_images(5, 7), (np.arange(7) * 3 % 10).astype(np.uint8)
    files = {"train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images)),
             "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels))}
    for name, blob in files.items():
        (served / "kmnist").mkdir(exist_ok=True)
        (served / "kmnist" / name).write_bytes(blob)
    return files, images, labels


def test_download_idx_from_mirror(tmp_path: Path, mirror: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    served, url = mirror
    files, images, labels = _serve_kmnist(served)
    spec = data.DATASETS["kmnist"]
    monkeypatch.setitem(data.DATASETS, "kmnist", dataclasses.replace(
        spec, md5={**spec.md5, **{name: md5(blob) for name, blob in files.items()}}))
    monkeypatch.setenv(data.MIRROR_ENV, url + "{name}/")
    root = tmp_path / "root"
    x, y = data.load_arrays("kmnist", root, "train")
    assert np.array_equal(x, images) and y.tolist() == labels.tolist()
    raw = root / "KMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(files)
    assert all((raw / n).read_bytes() == blob for n, blob in files.items())
    # The mirrors argument wins over the environment; a failing first mirror falls through to the next.
    data.clear_cache()
    for p in raw.iterdir():
        p.unlink()
    x2, _ = data.load_arrays("kmnist", root, "train", mirrors=[url + "nowhere/", url + "kmnist"])
    assert np.array_equal(x2, images)


def test_download_wrong_md5_rejected(tmp_path: Path, mirror: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    served, url = mirror
    _serve_kmnist(served)  # fixture bytes cannot match the real KMNIST md5s
    root = tmp_path / "root"
    with pytest.raises(DatasetMissingError, match="md5 mismatch") as err:
        data.load_arrays("kmnist", root, "train", mirrors=[url + "kmnist/"])
    assert "\n" not in str(err.value)
    assert "bdb82020997e1d708af4cf47b453dcf7" in str(err.value)
    assert not root.exists()  # no partial or temporary file, no empty folder


def _letters_members() -> tuple[dict[str, bytes], np.ndarray]:
    upright = _upright_letters()
    members = {}
    for split in ("train", "test"):
        members[f"gzip/emnist-letters-{split}-images-idx3-ubyte.gz"] = gzip.compress(
            idx_bytes(upright.transpose(0, 2, 1).copy()))
        members[f"gzip/emnist-letters-{split}-labels-idx1-ubyte.gz"] = gzip.compress(
            idx_bytes(np.array([1, 26], dtype=np.uint8)))
    members["gzip/emnist-digits-train-labels-idx1-ubyte.gz"] = b"not wanted"
    return members, upright


def test_download_letters_archive(tmp_path: Path, mirror: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    served, url = mirror
    members, upright = _letters_members()
    archive = write_zip(served / "gzip.zip", members)
    spec = data.DATASETS["letters"]
    monkeypatch.setitem(data.DATASETS, "letters", dataclasses.replace(spec, archive=("gzip.zip", md5(archive))))
    root = tmp_path / "root"
    x, y = data.load_arrays("letters", root, "test", mirrors=[url])
    assert np.array_equal(x, upright) and y.tolist() == [0, 25]
    raw = root / "EMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(m.removeprefix("gzip/") for m in members if "letters" in m)
    assert data.load_arrays("letters", root, "train", download=False)[1].tolist() == [0, 25]


def _cifar_archive(served: Path) -> tuple[Path, dict[str, bytes], dict[str, tuple[np.ndarray, np.ndarray]]]:
    parts = _cifar_parts(2)
    blobs = {name: cifar_batch_bytes(*arrays) for name, arrays in parts.items()}
    members = {f"cifar-10-batches-py/{name}": blob for name, blob in blobs.items()}
    members["cifar-10-batches-py/batches.meta"] = b"meta"
    return write_tar_gz(served / "cifar-10-python.tar.gz", members), blobs, parts


def test_download_cifar_archive(tmp_path: Path, mirror: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    served, url = mirror
    archive, blobs, parts = _cifar_archive(served)
    spec = data.DATASETS["cifar10"]
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(
        spec, archive=(archive.name, md5(archive)), md5={name: md5(blob) for name, blob in blobs.items()}))
    root = tmp_path / "root"
    x, y = data.load_arrays("cifar10", root, "test", mirrors=[url])
    assert np.array_equal(x, parts["test_batch"][0]) and y.tolist() == parts["test_batch"][1].tolist()
    folder = root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(blobs)  # archive removed after extraction
    assert data.load_arrays("cifar10", root, "train", download=False)[0].shape == (10, 32, 32, 3)


def test_download_cifar_member_md5_checked(tmp_path: Path, mirror: tuple[Path, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    served, url = mirror
    archive, blobs, _ = _cifar_archive(served)
    spec = data.DATASETS["cifar10"]
    wrong = {name: md5(blob) for name, blob in blobs.items()} | {"test_batch": hashlib.md5(b"other").hexdigest()}
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(
        spec, archive=(archive.name, md5(archive)), md5=wrong))
    root = tmp_path / "root"
    with pytest.raises(DatasetMissingError, match="md5 mismatch for cifar-10-python.tar.gz:cifar-10-batches-py/test"):
        data.load_arrays("cifar10", root, "test", mirrors=[url])
    folder = root / "cifar-10-batches-py"
    assert not (folder / "test_batch").exists()
    assert not any(p.name.endswith((".part", ".tar.gz")) for p in folder.iterdir())
