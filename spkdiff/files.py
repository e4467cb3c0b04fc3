"""File helpers shared by checkpoints, bundles, manifests and evaluation records.

* :func:`atomic_write`: a file appears under its final name complete or not at all (disk full, Ctrl-C).
* :func:`lock_folder`: one writer per run or output folder (an ``fcntl`` lock: it dies with its process).
* :func:`clean_stale_temps`: temp files of writers that were killed are removed at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from spkdiff.errors import SpkdiffError

LOCK_NAME = ".spkdiff.lock"
_TEMP = re.compile(r"^\..+\.tmp(\d+)$")  # ".{name}.tmp{pid}", written by atomic_write


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temp_name(path: Path) -> Path:
    """The temp file of ``path`` for this process (recognised by :func:`clean_stale_temps`)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_writes(writers: dict[Path, Callable[[Path], None]], mode: int | None = None) -> None:
    """``write(tmp)`` for every path, fsync, then rename all onto their paths: a set of files that belong
    together (an image grid and its tokens) is replaced only when every one was written.  On any failure the
    temp files are removed and an OSError becomes one line naming the path.  ``mode``: 0666 & ~umask."""
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    writers = {Path(path): write for path, write in writers.items()}
    temps = {path: temp_name(path) for path in writers}
    current = next(iter(temps))
    try:
        for current, write in writers.items():
            tmp = temps[current]
            write(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)  # some writers (safetensors) create private files
        for current, tmp in temps.items():
            os.replace(tmp, current)
    except BaseException as err:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(err, OSError):
            raise SpkdiffError(f"cannot write {current}: {err.strerror or err}") from None
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """A file appears under ``path`` complete or not at all (see :func:`atomic_writes`)."""
    atomic_writes({Path(path): write}, mode)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove ``.{name}.tmp{pid}`` files in ``folder`` whose writer process is gone; returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            m = _TEMP.match(entry.name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))) and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


@contextlib.contextmanager
def lock_folder(lock_path: str | Path, what: str, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive ``fcntl`` lock on ``lock_path`` (holding our pid) or refuse with one line (``wait``:
    block until the holder releases it instead).

    The kernel drops the lock when its process dies, so a killed writer never blocks the next one.  The
    file is removed on release; a locker that opened it just before must then retry on the new file.
    """
    lock_path = Path(lock_path)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise SpkdiffError(f"cannot lock {what}: {lock_path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise SpkdiffError(f"cannot lock {what}: {lock_path}: {err.strerror}") from None
            try:
                holder = lock_path.read_text().strip() or "?"
            except OSError:
                holder = "?"
            raise SpkdiffError(f"{what} is in use by another spkdiff process (pid {holder}); wait for it to "
                               f"finish or choose another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and flock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)


def npy_writer(array: object) -> Callable[[Path], None]:
    """A writer for :func:`atomic_writes` that saves ``array`` under exactly the temp name (np.save on a
    name would append .npy)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    return write


def save_npy_atomic(path: str | Path, array: object) -> Path:
    return atomic_write(path, npy_writer(array))
