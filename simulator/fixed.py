"""Fixed-point (Loihi) backend: registers ``BACKENDS["fixed"]`` from :mod:`spkdiff.neuromorphic.loihi`."""

from __future__ import annotations

from typing import Any

from spkdiff.errors import SpkdiffError


def register(quant: Any = None) -> None:
    """Build the ``"fixed"`` op table (needs the integer step functions of the Loihi model)."""
    try:
        from spkdiff.neuromorphic import loihi  # noqa: F401
    except ImportError as err:
        raise SpkdiffError("fixed mode needs spkdiff.neuromorphic.loihi, which is not available") from err
    raise SpkdiffError("fixed mode is not implemented yet")
