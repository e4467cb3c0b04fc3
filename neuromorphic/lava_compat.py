"""Make lava-nc 0.10.0 importable on Python 3.11 without editing site-packages.

lava-nc 0.10.0 declares Python < 3.11 and has two import-time breakages there:

1. ``lava.magma.compiler.var_model``: the dataclass ``ByteEncoder`` is used as a field default of other
   dataclasses.  Python 3.11 rejects any unhashable default ("mutable default ... is not allowed"); a plain
   ``@dataclass`` has ``__hash__ = None``.  We declare it ``@dataclass(unsafe_hash=True)``: the default
   stays one shared instance, exactly the Python 3.10 behaviour.
2. ``lava.magma.runtime.message_infrastructure.multiprocessing`` calls ``mp.set_start_method('fork')`` at
   import, which raises "context has already been set" once anything used :mod:`multiprocessing`.  We only
   set the start method when none is set yet (same as before when Lava is imported first) and make Lava's
   worker class ``SystemProcess`` derive from the *fork* context's ``Process``, so Lava's actors are always
   forked (Lava needs that) whatever the global default is.

A third patch is for speed: ``lava.proc.conv.utils.conv`` computes integer convolutions with
:func:`spkdiff.neuromorphic.lava_conv.conv_exact` (bit-identical, one matrix product instead of a
``convolve2d`` per channel pair).

The fixes are source patches applied by a :data:`sys.meta_path` finder while those modules are loaded;
patched modules are compiled in memory (their bytecode cache is neither read nor written).  If a patch
target is absent (a Lava release that fixed it), the module loads unchanged.

Usage: call :func:`ensure_lava` (idempotent) before the first ``import lava...``.  Importing
``spkdiff.neuromorphic`` already does it, so every module of that package may import Lava freely.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

from spkdiff.errors import SpkdiffError

__all__ = ["PATCHES", "LavaUnavailableError", "ensure_lava", "hook_installed", "lava_available"]

# module name -> list of (old, new) source substitutions (each applied once, if present)
PATCHES: dict[str, list[tuple[str, str]]] = {
    "lava.magma.compiler.var_model": [
        ("@dataclass\nclass ByteEncoder:", "@dataclass(unsafe_hash=True)\nclass ByteEncoder:"),
    ],
    "lava.magma.runtime.message_infrastructure.multiprocessing": [
        (
            "    mp.set_start_method('fork')\n",
            "    if mp.get_start_method(allow_none=True) is None:\n"
            "        mp.set_start_method('fork')\n",
        ),
        ("class SystemProcess(mp.Process):", "class SystemProcess(mp.get_context('fork').Process):"),
    ],
    # speed, not compatibility: the fixed_pt Conv model's convolution as one exact matrix product (lava_conv)
    "lava.proc.conv.utils": [
        (
            "        output = conv_scipy(\n            input_,",
            "        from spkdiff.neuromorphic.lava_conv import conv_exact\n"
            "        output = conv_exact(\n            conv_scipy, input_,",
        ),
    ],
}


class LavaUnavailableError(SpkdiffError):
    """lava-nc is not installed (it is installed with ``--no-deps`` by ``make venv``)."""


def patch_source(fullname: str, source: str) -> str:
    """Apply :data:`PATCHES` for ``fullname`` to ``source`` (substitutions whose target is absent are skipped)."""
    for old, new in PATCHES.get(fullname, []):
        if old in source and new not in source:
            source = source.replace(old, new, 1)
    return source


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Source loader that patches the text before compiling and bypasses the bytecode cache."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        source = importlib.util.decode_source(self.get_data(path))
        return compile(patch_source(fullname, source), path, "exec", dont_inherit=True)

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:  # never write patched bytecode
        return None


class _LavaCompatFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that hands the modules in :data:`PATCHES` to :class:`_PatchingLoader`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _PatchingLoader(fullname, spec.origin)
        return spec


def hook_installed() -> bool:
    return any(isinstance(f, _LavaCompatFinder) for f in sys.meta_path)


def ensure_lava(check: bool = False) -> None:
    """Install the import hook once (first on ``sys.meta_path``); cheap, imports nothing from Lava.

    With ``check=True`` also import the two patched modules and raise :class:`LavaUnavailableError`
    if lava-nc is not installed.
    """
    if not hook_installed():
        sys.meta_path.insert(0, _LavaCompatFinder())
    if check:
        if not lava_available():
            raise LavaUnavailableError("lava-nc is not installed: run `make venv` (it installs lava-nc==0.10.0 "
                                       "with --no-deps)")
        for name in PATCHES:
            importlib.import_module(name)


def lava_available() -> bool:
    """True when the ``lava`` package can be found (does not import it)."""
    return importlib.util.find_spec("lava") is not None
