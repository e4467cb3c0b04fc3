"""An exact, vectorised stand-in for Lava 0.10's ``conv_scipy`` when the weights are integers (fixed_pt Conv).

Lava's ``lava.proc.conv.utils.conv_scipy`` calls ``scipy.signal.convolve2d`` once per (output, input) channel
pair and time step: 8192 calls a step for a 128 -> 64 channel layer, so one image through the grown MNIST
generator ran past Lava's 10-minute timeout.  :func:`conv_exact` computes the same true convolution as one matrix
product over sliding windows (layout XYC, weight ``[out, kx, ky, in / groups]`` as Lava keeps them):

    out[x, y, k] = sum_{a, b, c} in_pad[x s_x + a, y s_y + b, c] * w_dil[k, A - 1 - a, B - 1 - b, c]

With integer weights and inputs every partial sum is an integer; while the largest possible sum stays below
2**53, float64 arithmetic is exact in any order, so the result equals Lava's bit for bit.  Float weights (the
floating_pt model), or sums that could reach 2**53, go to Lava's own code unchanged.

:mod:`spkdiff.neuromorphic.lava_compat` routes ``lava.proc.conv.utils.conv`` here when that module is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["conv_exact"]

EXACT_LIMIT = 2.0**53  # float64 represents every integer up to this


def conv_exact(fallback: Callable[..., np.ndarray], input_: np.ndarray, weight: np.ndarray,
               kernel_size: Any, stride: Any, padding: Any, dilation: Any, groups: int) -> np.ndarray:
    """Lava's ``conv_scipy(input_, weight, kernel_size, stride, padding, dilation, groups)``, returned as float64
    like it; computed here when that is exact, else by ``fallback`` (``conv_scipy`` itself)."""
    args = (input_, weight, kernel_size, stride, padding, dilation, groups)
    x = np.asarray(input_)
    if weight.dtype.kind not in "iu" or x.dtype.kind not in "biu":
        return fallback(*args)
    if float(np.abs(weight).sum(dtype=np.float64)) * float(np.abs(x).max(initial=0)) >= EXACT_LIMIT:
        return fallback(*args)
    (px, py), (sx, sy), (dx, dy) = padding, stride, dilation
    n_out, kx, ky, per_group = weight.shape
    if x.shape[-1] % groups or n_out % groups:
        return fallback(*args)  # Lava raises its own error for these
    dilated = np.zeros((n_out, dx * (kx - 1) + 1, dy * (ky - 1) + 1, per_group))
    dilated[:, ::dx, ::dy, :] = weight
    kernel = dilated[:, ::-1, ::-1, :]  # convolve2d is a true convolution: flip, then correlate
    padded = np.pad(x.astype(np.float64), ((px, px), (py, py), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1:3], axis=(0, 1))[::sx, ::sy]
    out_per_group = n_out // groups
    parts = [np.tensordot(windows[:, :, g * per_group:(g + 1) * per_group],  # [X, Y, c, a, b]
                          kernel[g * out_per_group:(g + 1) * out_per_group],  # [k, a, b, c]
                          axes=([2, 3, 4], [3, 1, 2]))
             for g in range(groups)]
    return np.concatenate(parts, axis=-1)
