"""Run Lava code in a killable child process: timeout, own process group, no orphans, no leaked shared memory.

Lava's multiprocessing runtime forks one worker per process model plus a shared-memory manager, and a
failing model (e.g. the fixed-point LIF given float ``du``/``dv``) makes the whole runtime wait forever.
:func:`run_isolated` therefore runs ``fn(*args, **kwargs)`` in a fresh interpreter started in a new
session (so it and everything Lava forks share one process group), waits at most ``timeout`` seconds,
and afterwards always

1. records the POSIX shared-memory segments (``/dev/shm/...``) that any member of the group maps or holds
   open, and the ``psm_*`` segments (Python's ``SharedMemory``, which Lava uses) created while the run was
   going that no process maps or holds open anymore,
2. kills whatever is left of the group (SIGKILL) and reaps it,
3. unlinks those segments that still exist.

That clean-up also runs when this process is asked to end while it waits: Ctrl-C raises KeyboardInterrupt,
and SIGTERM or SIGHUP (``timeout(1)``, ``kill``, a closed terminal) are turned into KeyboardInterrupt for the
wait where they would otherwise end this process at once — the child's group is in its own session, so the
signal never reaches it and it would run on, orphaned.

``fn`` must be a module-level function (it is pickled by reference, with ``sys.path``, so test modules
work too); arguments and the return value must be picklable.  The child imports
:mod:`spkdiff.neuromorphic.lava_compat` first, so ``fn`` may import Lava directly.  ``fn`` should stop its
Lava runtime (``proc.stop()``); if it does not, the group is killed anyway once ``fn`` returned.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from spkdiff.errors import SpkdiffError

__all__ = ["LavaRunError", "LavaTimeoutError", "RunInfo", "group_members", "run_isolated", "run_isolated_info"]

T = TypeVar("T")
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "psm_"  # multiprocessing.shared_memory's names (Lava's channels)


class LavaRunError(SpkdiffError):
    """The isolated Lava run raised; ``.output`` holds the child's stdout/stderr, ``.info`` the clean-up."""

    def __init__(self, message: str, output: str = "", info: RunInfo | None = None) -> None:
        super().__init__(message)
        self.output = output
        self.info = info


class LavaTimeoutError(LavaRunError):
    """The isolated Lava run did not finish within its timeout and was killed."""


@dataclass
class RunInfo:
    """What :func:`run_isolated` did: the child's process group and what it cleaned up."""

    pgid: int
    wall_s: float = 0.0
    timed_out: bool = False
    killed_pids: list[int] = field(default_factory=list)
    unlinked_shm: list[str] = field(default_factory=list)


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes whose process group is ``pgid`` (Linux ``/proc``)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _shm_used_by(pids: list[int]) -> set[str]:
    """Names under /dev/shm mapped (``maps``) or open (``fd``) by ``pids``."""
    names: set[str] = set()
    prefix = str(SHM_DIR) + "/"
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith(prefix):
                    names.add(path[len(prefix):].removesuffix(" (deleted)"))
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith(prefix):
                        names.add(target[len(prefix):].removesuffix(" (deleted)"))
    return names


def _shm_listing() -> set[str]:
    try:
        return {p.name for p in SHM_DIR.iterdir()}
    except OSError:
        return set()


def _all_pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def _cleanup(pgid: int, before: set[str], started: float, info: RunInfo) -> None:
    """Kill the group, then unlink the segments it used and the new segments nobody uses anymore."""
    members = group_members(pgid)
    suspects = _shm_used_by(members)
    for _ in range(50):
        members = group_members(pgid)
        if not members:
            break
        info.killed_pids.extend(p for p in members if p not in info.killed_pids)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.02)
    new = set()
    for name in _shm_listing() - before:
        if not name.startswith(SHM_PREFIX):
            continue
        with contextlib.suppress(OSError):
            if (SHM_DIR / name).stat().st_mtime >= started - 1.0:
                new.add(name)
    if new - suspects:  # created during the run: orphaned only if no live process uses it
        new -= _shm_used_by(_all_pids())
    for name in sorted(suspects | new):
        path = SHM_DIR / name
        if path.exists() and not path.is_dir():
            with contextlib.suppress(OSError):
                path.unlink()
                info.unlinked_shm.append(name)


@contextlib.contextmanager
def _termination_unwinds() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt inside the block (main thread, where their handler is the
    default one that ends the process at once; an ignored or a custom handler is left alone), so the
    ``finally`` clean-up of :func:`run_isolated_info` kills the child's group."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def unwind(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, unwind)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_isolated(fn: Callable[..., T], *args: Any, timeout: float = 60.0, **kwargs: Any) -> T:
    """Return ``fn(*args, **kwargs)`` computed in an isolated child; raise :class:`LavaTimeoutError` after
    ``timeout`` seconds or :class:`LavaRunError` if ``fn`` raised (both carry ``.info``)."""
    return run_isolated_info(fn, *args, timeout=timeout, **kwargs)[0]


def run_isolated_info(fn: Callable[..., T], *args: Any, timeout: float = 60.0, **kwargs: Any) -> tuple[T, RunInfo]:
    """:func:`run_isolated` that also returns the :class:`RunInfo` (process group, clean-up record)."""
    with tempfile.TemporaryDirectory(prefix="spkdiff-lava-") as tmp, _termination_unwinds():
        job, result, log = Path(tmp, "job.pkl"), Path(tmp, "result.pkl"), Path(tmp, "output.log")
        job.write_bytes(pickle.dumps((list(sys.path), pickle.dumps((fn, args, kwargs)))))
        before = _shm_listing()
        started = time.time()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "spkdiff.neuromorphic.lava_runner", str(job), str(result)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        info = RunInfo(pgid=proc.pid)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            info.timed_out = True
        finally:
            _cleanup(info.pgid, before, started, info)
            proc.wait()
            info.wall_s = time.time() - started
        output = log.read_text(errors="replace")
        name = getattr(fn, "__qualname__", repr(fn))
        if info.timed_out:
            raise LavaTimeoutError(f"Lava run {name} did not finish within {timeout:g} s and was killed "
                                   f"(a fixed-point Lava model given floats hangs this way)", output, info)
        if not result.exists():
            raise LavaRunError(f"Lava run {name} died with exit status {proc.returncode}: "
                               f"{_last_line(output)}", output, info)
        status, payload = pickle.loads(result.read_bytes())
        if status != "ok":
            worker = [ln[len(WORKER_ERROR):] for ln in output.splitlines() if ln.startswith(WORKER_ERROR)]
            reason = f"{payload[0]} (first: {worker[0]})" if worker else payload[0]
            raise LavaRunError(f"Lava run {name} failed: {reason}", payload[1] + output, info)
        return payload, info


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


WORKER_ERROR = "lava worker error: "


def _report_worker_errors() -> None:
    """Make Lava's worker processes print their traceback (Lava only logs it at INFO level, i.e. never)."""
    import multiprocessing.process
    import traceback

    try:
        from lava.magma.runtime.message_infrastructure import multiprocessing as lava_mp
    except ImportError:
        return

    def run(self: Any) -> None:
        try:
            multiprocessing.process.BaseProcess.run(self)
            self._cconn.send(None)
        except Exception as err:  # noqa: BLE001 - same contract as Lava's SystemProcess.run
            tb = traceback.format_exc()
            sys.stderr.write(f"{tb}{WORKER_ERROR}{type(err).__name__}: {err}\n")
            self._cconn.send((err, tb))

    lava_mp.SystemProcess.run = run


def _child_main(job_path: str, result_path: str) -> None:
    """Child side: run the pickled job, write ("ok", value) or ("error", (summary, traceback)), exit hard.

    ``os._exit`` skips multiprocessing's exit-time joins, which hang forever when ``fn`` left Lava running;
    the parent kills whatever is left of the process group.
    """
    import traceback

    from spkdiff.neuromorphic.lava_compat import ensure_lava

    ensure_lava()
    _report_worker_errors()
    code = 0
    try:
        path, blob = pickle.loads(Path(job_path).read_bytes())
        sys.path[:] = path
        fn, args, kwargs = pickle.loads(blob)
        outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except BaseException as err:  # noqa: BLE001 - everything is reported to the parent
        outcome = ("error", (f"{type(err).__name__}: {err}".splitlines()[0], traceback.format_exc()))
        code = 1
    tmp = Path(result_path + ".part")
    try:
        tmp.write_bytes(pickle.dumps(outcome))
    except Exception as err:  # noqa: BLE001 - an unpicklable result is reported too
        tmp.write_bytes(pickle.dumps(("error", (f"result not picklable: {err}", ""))))
    tmp.rename(result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
