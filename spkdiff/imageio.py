"""Image grids as PNG (the one place images are written)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spkdiff.errors import SpkdiffError
from spkdiff.files import atomic_write, atomic_writes, npy_writer


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _grid(images: torch.Tensor, nrow: int | None, pad: int) -> Image.Image:
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = arr[i]
    return Image.fromarray(grid.squeeze(-1) if c == 1 else grid)


def _png_writer(images: torch.Tensor, path: Path, nrow: int | None, pad: int) -> Callable[[Path], None]:
    """A writer for :func:`~spkdiff.files.atomic_writes` (the format comes from ``path``, not the temp name)."""
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise SpkdiffError(f"cannot write {path}: unknown image extension {path.suffix!r} (use .png)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpkdiffError(f"cannot write {path}: {err.strerror or err}") from None
    image = _grid(images, nrow, pad)
    return lambda tmp: image.save(tmp, format=image_format)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, pad: int = 2) -> Path:
    """Write images (N, C, H, W) in [0, 1] as one PNG grid with ``nrow`` images per row (never partially)."""
    path = Path(path)
    return atomic_write(path, _png_writer(images, path, nrow, pad))


def save_samples(images: torch.Tensor, tokens: torch.Tensor, path: str | Path, nrow: int | None = None
                 ) -> tuple[Path, Path]:
    """The grid PNG (``nrow`` images per row) and its token grids (``.tokens.npy`` beside it, int16): both
    replaced, or neither."""
    path = Path(path)
    tokens_path = path.with_suffix(".tokens.npy")
    atomic_writes({path: _png_writer(images, path, nrow, 2),
                   tokens_path: npy_writer(tokens.numpy().astype(np.int16))})
    return path, tokens_path
