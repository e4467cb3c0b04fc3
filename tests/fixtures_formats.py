"""Writers for small test files in the datasets' real distribution formats, and a local HTTP mirror."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """idx encoding of a uint8 array: magic 0x00000800 + ndim, big-endian uint32 sizes, then the bytes."""
    assert array.dtype == np.uint8
    return struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an idx file, gzipped when ``path`` ends in .gz."""
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def cifar_batch_bytes(images_hwc: np.ndarray, labels: np.ndarray) -> bytes:
    """A CIFAR-10 python batch: dict with bytes keys, ``data`` (N, 3072) rows of R, G, B planes, ``labels`` list."""
    rows = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1)
    batch = {b"batch_label": b"fixture batch", b"labels": [int(v) for v in labels], b"data": rows,
             b"filenames": [b"img_%d.png" % i for i in range(len(rows))]}
    return pickle.dumps(batch, protocol=2)


def write_cifar(folder: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``{file name: (images (N,32,32,3) uint8, labels)}`` into ``folder`` (cifar-10-batches-py)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in batches.items():
        (folder / name).write_bytes(cifar_batch_bytes(images, labels))


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def md5(data: bytes | Path) -> str:
    return hashlib.md5(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base-class signature)
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (ephemeral port) in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
