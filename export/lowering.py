"""Exact lowerings of torch layers to NIR ``Conv2d``: BatchNorm folding and the polyphase conv.

BatchNorm folding (inference statistics)
----------------------------------------
``BN(conv(x))`` with ``alpha = gamma / sqrt(var + eps)`` is a conv with weight ``W alpha[o]`` and bias
``(b - mean) alpha + beta`` (computed in float64, stored as float32); the bias stays a constant
input current of the following neuron (NIR ``Conv2d.bias``).

Polyphase (sub-pixel) lowering
------------------------------
NIR has no transposed convolution (and lava-dl netx rejects one).  A stride-``s`` transposed conv
equals ``s^2`` stride-1 convs on the low-resolution grid followed by a depth-to-space permutation.
We keep every tensor in *phase layout*: a fine tensor ``X (C, H, W)`` with phase factor ``f`` is
stored as ``Xc (C f^2, H/f, W/f)`` with ::

    Xc[c f^2 + a f + b, i, j] = X[c, i f + a, j f + b]        (= torch pixel_unshuffle(X, f))

so the permutation never has to run on chip: it is folded into the next layer's weights, and
the last one is a host-side depth-to-space (``pixel_shuffle``) of the final read-out.
Elementwise neurons (LIF, LI, I) commute with the permutation.

Per spatial axis, a layer links input position ``x = f_in X + a`` to output ``y = f_out Y + b``:

* ConvTranspose2d(k, s, p, dilation d): ``y = s x - p + d k``;  ``f_out = s f_in``;
  ``e = Y - X = (s a - p + d k - b) / f_out``  (a tap exists iff the division is exact);
* Conv2d(k, s, p, d): ``x = s y - p + d k``;  ``f_out = f_in / s`` (``s`` must divide ``f_in``);
  ``e = Y - X = -(s b - p + d k - a) / f_in``.

``e`` does not depend on ``X``, so the layer is a stride-1 conv on the coarse grid (cross-correlation
``out[Y] = sum_j Wc[j] in[Y - P + j]``, i.e. ``j = P - e``) with weight ::

    Wc[o f_out^2 + b_y f_out + b_x,  c f_in^2 + a_y f_in + a_x,  P_y - e_y,  P_x - e_x] = W[o, c, k_y, k_x]

and bias ``bc[o f_out^2 + b] = bias[o]``.  Every entry of ``Wc`` is one original weight (or 0): the
lowering copies weights, it never adds them, and each input neuron keeps the fan-out it had on the
fine grid (the extra entries are zeros).  The coarse output size is ``h' = ceil(H_out / f_out)``;
the symmetric padding ``P`` and kernel size are chosen so that ``h'`` rows come out.  When
``H_out < f_out h'`` the last coarse row holds positions that do not exist: harmless for the
final read-out (the host crops them) and an error anywhere else.  A stride-1 conv on an undecomposed
grid (``f_in = 1``) is just a native NIR Conv2d (with its stride, padding, dilation, groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spkdiff.errors import SpkdiffError


class LoweringError(SpkdiffError):
    """A layer has no exact NIR lowering (the message names the layer and why)."""


# ----------------------------------------------------------------------------- BatchNorm folding


def fold_batchnorm(weight: np.ndarray, bias: np.ndarray | None, bn: nn.BatchNorm2d | None,
                   transposed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm2d into the preceding conv; returns float32 ``(weight, bias)``.

    ``W' = W alpha``, ``b' = (b - mean) alpha + beta`` with ``alpha = gamma / sqrt(running_var + eps)``.
    ``transposed``: ``weight`` is a ConvTranspose2d weight ``(C_in, C_out, kH, kW)``.
    """
    w = np.asarray(weight, dtype=np.float64)
    out_axis = 1 if transposed else 0
    n_out = w.shape[out_axis]
    b = np.zeros(n_out) if bias is None else np.asarray(bias, dtype=np.float64)
    if bn is None:
        return w.astype(np.float32), b.astype(np.float32)
    if bn.running_mean is None or bn.running_var is None:
        raise LoweringError("BatchNorm2d without running statistics (track_running_stats=False) cannot be folded")
    mean = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    gamma = bn.weight.detach().double().numpy() if bn.affine else np.ones(n_out)
    beta = bn.bias.detach().double().numpy() if bn.affine else np.zeros(n_out)
    alpha = gamma / np.sqrt(var + bn.eps)
    shape = [1] * w.ndim
    shape[out_axis] = n_out
    return (w * alpha.reshape(shape)).astype(np.float32), ((b - mean) * alpha + beta).astype(np.float32)


# ----------------------------------------------------------------------------- polyphase lowering


@dataclass(frozen=True)
class ConvSpec:
    """A conv or transposed conv (groups = 1) in plain numbers; ``weight`` in torch's layout."""

    weight: np.ndarray  # Conv2d: (C_out, C_in, kH, kW); ConvTranspose2d: (C_in, C_out, kH, kW)
    bias: np.ndarray  # (C_out,)
    transposed: bool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def in_channels(self) -> int:
        return self.weight.shape[0] if self.transposed else self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1] * self.groups if self.transposed else self.weight.shape[0]

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Fine output (H, W) for a fine input (H, W) (torch's formulas)."""
        k = self.weight.shape[2:]
        if self.transposed:
            return tuple((n - 1) * s - 2 * p + d * (kk - 1) + op + 1  # type: ignore[return-value]
                         for n, s, p, d, kk, op in zip(size, self.stride, self.padding, self.dilation, k,
                                                        self.output_padding))
        return tuple((n + 2 * p - d * (kk - 1) - 1) // s + 1  # type: ignore[return-value]
                     for n, s, p, d, kk in zip(size, self.stride, self.padding, self.dilation, k))


@dataclass(frozen=True)
class PhaseConv:
    """A stride-1 (or, for ``f_in = 1`` convs, native) NIR-ready conv on the coarse grid.

    Input: phase layout with factor ``f_in`` of a fine ``(C_in, *in_size)`` tensor, coarse size
    ``in_coarse``; output: phase layout with factor ``f_out`` of the fine ``(C_out, *out_size)`` result,
    coarse size ``out_coarse`` (``f_out * out_coarse >= out_size``; the excess is cropped).
    """

    weight: np.ndarray  # (C_out f_out^2, C_in f_in^2 / groups, Kh, Kw)
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    f_in: int
    f_out: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    in_coarse: tuple[int, int]
    out_coarse: tuple[int, int]

    @property
    def exact_grid(self) -> bool:
        """True when the coarse output holds no phantom positions (no crop needed)."""
        return all(self.f_out * c == n for c, n in zip(self.out_coarse, self.out_size))

    def apply(self, x_coarse: torch.Tensor) -> torch.Tensor:
        """Run the lowered conv on a batch ``(B, C_in f_in^2, *in_coarse)``."""
        w = torch.as_tensor(self.weight, dtype=x_coarse.dtype)
        b = torch.as_tensor(self.bias, dtype=x_coarse.dtype)
        return torch.nn.functional.conv2d(x_coarse, w, b, self.stride, self.padding, self.dilation, self.groups)


def _axis_taps(spec: ConvSpec, axis: int, f_in: int, f_out: int) -> list[tuple[int, int, int, int]]:
    """``(k, a, b, e)`` for every kernel tap ``k``, input phase ``a``, output phase ``b`` that connect."""
    s, p, d = spec.stride[axis], spec.padding[axis], spec.dilation[axis]
    taps = []
    for k in range(spec.weight.shape[2 + axis]):
        for a in range(f_in):
            for b in range(f_out):
                if spec.transposed:
                    num, den, sign = s * a - p + d * k - b, f_out, 1
                else:
                    num, den, sign = s * b - p + d * k - a, f_in, -1
                if num % den == 0:
                    taps.append((k, a, b, sign * (num // den)))
    return taps


def lower_conv(spec: ConvSpec, f_in: int, in_size: tuple[int, int], name: str = "layer") -> PhaseConv:
    """Lower ``spec`` acting on a fine ``(C_in, *in_size)`` input held with phase factor ``f_in``.

    Raises :class:`LoweringError` naming ``name`` when no exact lowering exists.
    """
    in_size = (int(in_size[0]), int(in_size[1]))
    if any(n % f_in for n in in_size):
        raise LoweringError(f"{name}: input size {in_size} is not a multiple of its phase factor {f_in}")
    in_coarse = (in_size[0] // f_in, in_size[1] // f_in)
    out_size = spec.out_size(in_size)
    if min(out_size) < 1:
        raise LoweringError(f"{name}: output size {out_size} is empty")
    if not spec.transposed and f_in == 1:  # a native NIR conv, nothing to lower
        return PhaseConv(spec.weight, spec.bias, spec.stride, spec.padding,
                         spec.dilation, spec.groups, 1, 1, in_size, out_size, in_coarse, out_size)
    if spec.groups != 1:
        raise LoweringError(f"{name}: grouped {'transposed ' if spec.transposed else ''}convolution "
                            f"(groups={spec.groups}) has no polyphase lowering")
    if spec.stride[0] != spec.stride[1]:
        raise LoweringError(f"{name}: the polyphase lowering needs equal strides, got {spec.stride}")
    s = spec.stride[0]
    if spec.transposed:
        f_out = s * f_in
    else:
        if f_in % s:
            raise LoweringError(f"{name}: stride {s} does not divide the input's phase factor {f_in}")
        f_out = f_in // s
    out_coarse = (math.ceil(out_size[0] / f_out), math.ceil(out_size[1] / f_out))
    taps = [_axis_taps(spec, axis, f_in, f_out) for axis in (0, 1)]
    pads, ksz = [], []
    for axis in (0, 1):
        es = [t[3] for t in taps[axis]] or [0]
        h, h2 = in_coarse[axis], out_coarse[axis]
        pad = max(max(es), h2 - h - min(es), 0)
        k = h + 2 * pad + 1 - h2
        pads.append(pad)
        ksz.append(k)
    c_in, c_out = spec.in_channels, spec.out_channels
    wc = np.zeros((c_out * f_out * f_out, c_in * f_in * f_in, ksz[0], ksz[1]), dtype=spec.weight.dtype)
    # (C_out, C_in, kH, kW) view of the original weight
    w = spec.weight.transpose(1, 0, 2, 3) if spec.transposed else spec.weight
    o_idx = np.arange(c_out)[:, None] * f_out * f_out
    c_idx = np.arange(c_in)[None, :] * f_in * f_in
    for ky, ay, by, ey in taps[0]:
        for kx, ax, bx, ex in taps[1]:
            wc[o_idx + by * f_out + bx, c_idx + ay * f_in + ax, pads[0] - ey, pads[1] - ex] = w[:, :, ky, kx]
    bc = np.repeat(spec.bias, f_out * f_out)
    return PhaseConv(wc, bc.astype(wc.dtype), (1, 1),
                     (pads[0], pads[1]), (1, 1), 1, f_in, f_out, in_size, out_size, in_coarse, out_coarse)


def conv_spec(module: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d | None = None,
              name: str = "layer") -> ConvSpec:
    """A torch conv (+ optional eval BatchNorm, folded) as a :class:`ConvSpec`; unsupported options raise."""
    transposed = isinstance(module, nn.ConvTranspose2d)
    if not isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        raise LoweringError(f"{name}: {type(module).__name__} is not a 2-D convolution")
    if module.padding_mode != "zeros":
        raise LoweringError(f"{name}: padding_mode={module.padding_mode!r} has no NIR equivalent (zeros only)")
    if isinstance(module.padding, str):
        raise LoweringError(f"{name}: string padding {module.padding!r} is not supported; use integers")
    if transposed and module.groups != 1:
        raise LoweringError(f"{name}: grouped ConvTranspose2d (groups={module.groups}) has no polyphase lowering")
    bias = None if module.bias is None else module.bias.detach().numpy()
    weight, bias = fold_batchnorm(module.weight.detach().numpy(), bias, bn, transposed)
    return ConvSpec(weight, bias, transposed, tuple(module.stride), tuple(module.padding),
                    tuple(getattr(module, "output_padding", (0, 0))), tuple(module.dilation), module.groups)


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Fine ``(..., C, H, W)`` -> phase layout ``(..., C f^2, H/f, W/f)`` (``pixel_unshuffle``); the inverse
    is the host decode's :func:`spkdiff.generation.depth_to_space`."""
    if factor == 1:
        return x
    lead = x.shape[:-3]
    y = torch.nn.functional.pixel_unshuffle(x.reshape(-1, *x.shape[-3:]), factor)
    return y.reshape(*lead, *y.shape[-3:])
