"""``spkdiff export`` / ``spkdiff-export``: write a run's SNN stages as NIR or ONNX files, or as a Lava
deployment bundle (NIR files + Loihi integers + host constants), plus manifest.json.

    spkdiff-export --run RUN_DIR --target nir  --out OUT_DIR
    spkdiff-export --run RUN_DIR --target onnx --out OUT_DIR
    spkdiff-export --run RUN_DIR --target lava --out BUNDLE_DIR

Output is written to a temporary folder beside OUT_DIR and renamed into place only when complete,
so a failure leaves nothing behind.  Targets are registered in :data:`TARGETS` as
``name -> "module:function"`` with ``function(run_dir, out_dir) -> manifest``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spkdiff import validate
from spkdiff.errors import SpkdiffError
from spkdiff.files import lock_folder

#: target -> "module:function"; the function writes into an empty folder and returns the manifest dict.
TARGETS: dict[str, str] = {
    "nir": "spkdiff.export.nir_target:write_nir",
    "onnx": "spkdiff.export.onnx_target:write_onnx",
    "lava": "spkdiff.export.lava_target:write_lava",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="trained run directory (or pretrained:NAME)")
    parser.add_argument("--target", required=True, metavar="TARGET",
                        help=f"output format: {', '.join(TARGETS)}")
    parser.add_argument("--out", required=True, type=validate.out_dir,
                        help="output folder (created; must be absent or empty unless --force)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def _writer(target: str):
    spec = TARGETS.get(target)
    if spec is None:
        raise SpkdiffError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success it replaces ``out``, on error it is removed.

    One writer at a time: a lock file beside ``out`` (``out`` itself is replaced) refuses a second one.
    """
    out = Path(out)
    _check_target(out, force)
    parent = out.absolute().parent
    created: list[Path] = []
    try:
        with contextlib.ExitStack() as held:
            try:
                for p in reversed([parent, *parent.parents]):
                    if not p.exists():
                        p.mkdir()
                        created.append(p)
                held.enter_context(lock_folder(parent / f".{out.name}.lock", f"output folder {out}"))
                _check_target(out, force)  # again under the lock: another writer may have finished meanwhile
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
                tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
            except OSError as err:
                raise SpkdiffError(f"cannot write output {out}: {err.strerror or err}") from None
            try:
                yield tmp
                if out.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
                    os.replace(out, old / out.name)
                    os.replace(tmp, out)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        _remove_created(created)  # after the lock file is gone, so the folders are empty
        raise


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SpkdiffError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SpkdiffError(f"output folder {out} is not empty; pass --force to replace it")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_created(created: list[Path]) -> None:
    for p in reversed(created):
        with contextlib.suppress(OSError):
            p.rmdir()


def export(run: str | Path, target: str, out: str | Path, force: bool = False) -> dict:
    """Export ``run`` to ``out`` for ``target``; returns the manifest."""
    from spkdiff.config import resolve_run

    writer = _writer(target)
    run_dir = resolve_run(str(run))
    out_abs, run_abs = Path(out).resolve(), run_dir.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents:
        raise SpkdiffError(f"output {out} would replace the run directory {run_dir}; choose another folder")
    with atomic_output_dir(Path(out), force) as tmp:
        try:
            manifest = writer(run_dir, tmp)
        except OSError as err:
            raise SpkdiffError(f"cannot write {target} export: {err.strerror or err}") from None
    return manifest


def run(args: argparse.Namespace) -> int:
    manifest = export(args.run, args.target, args.out, args.force)
    files = ", ".join(sorted(manifest["files"]))
    print(f"exported {', '.join(manifest['stages'])} ({args.target}) to {args.out}: {files}, manifest.json",
          file=sys.stderr)
    return 0

