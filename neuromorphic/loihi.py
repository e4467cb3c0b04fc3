"""Loihi number formats and bit-exact fixed-point neuron/synapse arithmetic (Lava 0.10 ``fixed_pt`` models).

The one place for Loihi integer formats, shared by the simulator's fixed-point mode and the Lava target.
All step functions are pure, batched (any leading dims) and stateless (state in, state out), run on any
torch device, and reproduce Lava's bit-accurate process models exactly (``PyDenseModelBitAcc``,
``PyConvModelFixed``, ``PyLifModelBitAcc``; tested against Lava itself).

Equations (integers; ``>>`` is an arithmetic shift; ``wrap32`` is two's-complement int32 overflow, as numpy's
int32 arithmetic inside Lava does):

Dense (``PyDenseModelBitAcc``), once at start-up the weights are formatted (:func:`lava_dense_weights`)::

    w = clip(w, -256, 255)  (MIXED) | clip(w, 0, 255) (EXCITATORY) | -clip(-w, 0, 255) (INHIBITORY)
    w = (w >> k) << k,  k = 8 - num_weight_bits + (sign_mode == MIXED)      (towards -inf; INHIBITORY on -w)
    a = (sum_i w[j, i] * s[i]) << weight_exp   if weight_exp > 0  else  (sum ...) >> -weight_exp
    a = wrap32(a)                                                    (the int32 message channel)

So with the default ``num_weight_bits=8`` a MIXED weight is an 8-bit signed mantissa ``m`` in [-128, 127]
times 2 (the LSB is dropped) and an EXCITATORY/INHIBITORY weight an 8-bit magnitude.

Conv (``PyConvModelFixed``): ``a = wrap24(conv(s, w))`` with ``wrap24(x) = (x + 2**23) % 2**24 - 2**23``.
Lava's fixed-point Conv does NOT clip or truncate the weights and IGNORES ``weight_exp``; :func:`conv_fixed`
applies ``weight_exp`` like Dense before the wrap (so ``weight_exp=0`` matches Lava; for ``weight_exp > 0``
pass ``w << weight_exp`` as Lava Conv weights, which is identical).

LIF (``AbstractPyLifModelFixed`` + ``PyLifModelBitAcc``), per step with input ``a_in`` (int32 sum of all
incoming ``a``)::

    u' = sgn(u * (4096 - (du + 1))) * (|u * (4096 - (du + 1))| >> 12)     (decay towards 0, ds_offset = 1)
    u' = wrap32(u' + wrap32(a_in << 6))
    u' = u' - 2**24 if u' > 2**23;  u' = u' + 2**24 if u' <= -2**23       (24-bit wrap-around, once)
    v' = sgn(v * (4096 - dv)) * (|v * (4096 - dv)| >> 12)                  (dm_offset = 0)
    v' = clip(wrap32(v' + u' + (bias_mant << bias_exp)), -(2**23 - 1), 2**23 - 1)   (saturates)
    s  = v' > (vth << 6);   v' = 0 where s                                 (hard reset)

``du = 4095`` gives ``u' = a_in << 6`` (no current memory); ``du = 0`` still decays u by 1/4096 per step.
``dv = 0`` is a perfect integrator, ``dv = 4096 / tau`` a membrane time constant ``tau``.
The bias is NOT shifted by 6.  Lava checks no ranges (a float ``du`` makes its worker crash and the runtime
hang); :class:`LifParams` validates Loihi's: du, dv in [0, 4095], vth in [0, 2**17] (``2**17`` =
:data:`READOUT_VTH` can never be exceeded: ``v <= 2**23 - 1 < 2**23``), bias_mant 13-bit signed,
bias_exp in [-7, 7].

Lava timing: every connection (Dense/Conv) sends at step ``t`` what it accumulated at ``t - 1``, so each
connection adds one time step of delay between layers (the step functions here have no delay; a graph
executor reproducing Lava must shift by one step per connection).

Quantisation (float layers -> these integers) is :mod:`spkdiff.neuromorphic.quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from spkdiff.errors import SpkdiffError

__all__ = [
    "ACT_SHIFT", "BIAS_EXP_MAX", "BIAS_MANT_MAX", "BIAS_MANT_MIN", "DECAY_SHIFT", "DECAY_UNITY", "DU_MAX", "DV_MAX",
    "READOUT_VTH", "UV_MAX", "V_LIMIT", "VTH_MAX", "VTH_SHIFT",
    "WEIGHT_BITS", "LifParams", "LifStep", "QuantizationRangeError", "SignMode",
    "conv_fixed", "dense_fixed", "determine_sign_mode", "dv_from_tau", "lava_conv_weight",
    "lava_dense_weights", "lif_step_fixed", "pair", "torch_conv_weight", "weight_lsb_shift",
    "wrap24", "wrap32",
]

DECAY_SHIFT = 12
DECAY_UNITY = 1 << DECAY_SHIFT  # 4096
DU_MAX = DV_MAX = DECAY_UNITY - 1  # 12-bit unsigned
UV_BITS = 24
UV_MAX = 1 << (UV_BITS - 1)  # 2**23: u wraps beyond it, v saturates at +-(UV_MAX - 1)
V_LIMIT = UV_MAX - 1
VTH_SHIFT = ACT_SHIFT = 6  # threshold and synaptic input are MSB-aligned by 6 bits
VTH_MAX = (1 << 17) - 1  # Loihi's 17-bit threshold mantissa
READOUT_VTH = 1 << 17  # effective threshold 2**23 > V_LIMIT: never spikes (non-spiking read-outs)
BIAS_MANT_MIN, BIAS_MANT_MAX = -(1 << 12), (1 << 12) - 1  # 13-bit signed
BIAS_EXP_MAX = 7  # 3-bit unsigned on Loihi
WEIGHT_BITS = 8
_I32 = 1 << 32
_I24 = 1 << 24


class QuantizationRangeError(SpkdiffError):
    """A layer cannot be represented in Loihi's number formats (or a fixed-point parameter is out of range)."""


class SignMode(IntEnum):
    """Weight sign modes; same values as ``lava.utils.weightutils.SignMode``."""

    NULL = 0
    MIXED = 1
    EXCITATORY = 2
    INHIBITORY = 3


# --------------------------------------------------------------------------------------------------------------
# integer helpers


def wrap32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement int32 overflow of an int64 tensor."""
    return torch.remainder(x + (1 << 31), _I32) - (1 << 31)


def wrap24(x: torch.Tensor) -> torch.Tensor:
    """Lava's ``signed_clamp(x, bits=24)``: ``(x + 2**23) % 2**24 - 2**23``."""
    return torch.remainder(x + UV_MAX, _I24) - UV_MAX


def _shift(x: torch.Tensor, exp: int | torch.Tensor) -> torch.Tensor:
    """``x << exp`` for ``exp > 0`` else ``x >> -exp`` (arithmetic, i.e. floor division by ``2**-exp``)."""
    if isinstance(exp, torch.Tensor):
        e = exp.to(device=x.device, dtype=torch.int64)
        return torch.where(e > 0, x << e.clamp(min=0), x >> (-e).clamp(min=0))
    return x << exp if exp > 0 else x >> -exp


def _decay(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``sgn(x * f) * (|x * f| >> 12)``: multiply by ``f / 4096`` rounding towards zero."""
    p = x * factor
    return torch.sign(p) * (p.abs() >> DECAY_SHIFT)


def _as_int_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    if (t.is_floating_point() or t.is_complex()) and not torch.equal(t, t.round()):
        raise QuantizationRangeError(f"fixed-point value must be integer, got {t.dtype} with fractions")
    return t.to(torch.int64)


def _exact_matmul_dtype(bound: float, device: torch.device) -> torch.dtype:
    """Float dtype whose matmul of integer operands is exact when every partial sum is below ``bound``."""
    if bound >= 2.0**53:
        raise QuantizationRangeError(f"fixed-point accumulation bound {bound:.3g} exceeds exact float64 range")
    if bound < 2.0**24 and device.type == "cpu" and torch.get_float32_matmul_precision() == "highest":
        return torch.float32
    return torch.float64  # no TF32/bf16 shortcuts exist for float64


# --------------------------------------------------------------------------------------------------------------
# synapses


def determine_sign_mode(weights: Any) -> SignMode:
    """Lava's rule: EXCITATORY if all ``w >= 0``, INHIBITORY if all ``w <= 0`` (and some < 0), else MIXED."""
    w = torch.as_tensor(weights)
    if bool((w >= 0).all()):
        return SignMode.EXCITATORY
    if bool((w <= 0).all()):
        return SignMode.INHIBITORY
    return SignMode.MIXED


def weight_lsb_shift(sign_mode: SignMode, num_weight_bits: int = WEIGHT_BITS) -> int:
    """``k`` in ``w = m << k``: bits Lava's Dense truncates (``8 - num_weight_bits + is_mixed``)."""
    return WEIGHT_BITS - num_weight_bits + int(sign_mode == SignMode.MIXED)


def lava_dense_weights(weights: Any, sign_mode: Any = None,
                       num_weight_bits: int = WEIGHT_BITS) -> torch.Tensor:
    """The weights ``PyDenseModelBitAcc`` actually uses: ``clip_weights(num_bits=8)`` then ``truncate_weights``."""
    w = _as_int_tensor(weights)
    sign_mode = getattr(sign_mode, "value", sign_mode)  # also lava.utils.weightutils.SignMode (a plain Enum)
    mode = determine_sign_mode(w) if sign_mode is None or int(sign_mode) == 0 else SignMode(int(sign_mode))
    neg = mode == SignMode.INHIBITORY
    if neg:
        w = -w
    lo = -(1 << WEIGHT_BITS) if mode == SignMode.MIXED else 0
    w = w.clamp(lo, (1 << WEIGHT_BITS) - 1)
    k = weight_lsb_shift(mode, num_weight_bits)
    w = (w >> k) << k
    return -w if neg else w


def dense_fixed(s: torch.Tensor, weights: torch.Tensor, weight_exp: int = 0, graded: bool = False) -> torch.Tensor:
    """Dense synaptic output ``a = wrap32(shift(W @ s, weight_exp))`` for spikes ``s`` of shape ``(..., n_in)``.

    ``weights`` ``(n_out, n_in)`` must already be Lava-formatted (:func:`lava_dense_weights`; idempotent on
    :attr:`.quantize.QuantizedLayer.weight_int`).  Binary mode (``graded=False``, Lava's ``num_message_bits=0``)
    treats any non-zero ``s`` as a spike; graded mode wraps ``W @ s`` to int32 before the shift, as Lava's
    int32 ``dot`` does.  Returns int64 of shape ``(..., n_out)``.
    """
    w = _as_int_tensor(weights, s.device)
    x = (s != 0).to(torch.int64) if not graded else _as_int_tensor(s, s.device)
    if s.device.type == "cpu":
        smax = 1 if not graded else int(x.abs().max()) if x.numel() else 0
        dt = _exact_matmul_dtype(float(w.abs().sum(dim=1).max() if w.numel() else 0) * smax, s.device)
    else:  # float64 is exact for any int32 weights and < 2**21 inputs; skip the bound (a device sync)
        dt = torch.float64
    acc = torch.matmul(x.to(dt), w.to(dt).T).round().to(torch.int64)
    if graded:
        acc = wrap32(acc)
    return wrap32(_shift(acc, int(weight_exp)))


def pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def conv_fixed(s: torch.Tensor, weight: torch.Tensor, weight_exp: int = 0, stride: int | tuple[int, int] = 1,
               padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
               groups: int = 1) -> torch.Tensor:
    """Conv synaptic output ``a = wrap24(shift(conv2d(s, w), weight_exp))`` in PyTorch layout.

    ``s``: ``(B, C_in, H, W)`` (non-zero = spike), ``weight``: ``(C_out, C_in / groups, kH, kW)`` integers
    (cross-correlation, as ``torch.nn.functional.conv2d``; Lava's layout is :func:`lava_conv_weight`).
    Computed as im2col + matmul in a float dtype that is exact for the bound, returned as int64.
    """
    w = _as_int_tensor(weight, s.device)
    x = (s != 0).to(torch.int64)
    batch, c_in, h, wd = x.shape
    c_out, cg, kh, kw = w.shape
    st, pd, dl = pair(stride), pair(padding), pair(dilation)
    if c_in != cg * groups or c_out % groups:
        raise QuantizationRangeError(f"conv channels do not match: input {c_in}, weight {tuple(w.shape)}, "
                                     f"groups {groups}")
    if s.device.type == "cpu":
        dt = _exact_matmul_dtype(float(w.abs().flatten(1).sum(dim=1).max() if w.numel() else 0), s.device)
    else:  # see dense_fixed
        dt = torch.float64
    cols = F.unfold(x.to(dt), (kh, kw), dilation=dl, padding=pd, stride=st)  # (B, C_in*kh*kw, L)
    h_out = (h + 2 * pd[0] - dl[0] * (kh - 1) - 1) // st[0] + 1
    w_out = (wd + 2 * pd[1] - dl[1] * (kw - 1) - 1) // st[1] + 1
    cols = cols.view(batch, groups, cg * kh * kw, -1)
    wg = w.to(dt).view(groups, c_out // groups, cg * kh * kw)
    acc = torch.einsum("gok,bgkl->bgol", wg, cols).reshape(batch, c_out, h_out, w_out)
    return wrap24(_shift(acc.round().to(torch.int64), int(weight_exp)))


def lava_conv_weight(weight: Any) -> np.ndarray:
    """PyTorch ``(C_out, C_in/g, kH, kW)`` correlation kernel -> Lava ``Conv`` ``(C_out, kW, kH, C_in/g)`` kernel
    (Lava convolves: spatially flipped; Lava tensors are ``(W, H, C)``)."""
    w = np.asarray(weight)
    return np.ascontiguousarray(w.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :])


def torch_conv_weight(weight: Any) -> np.ndarray:
    """Inverse of :func:`lava_conv_weight`."""
    w = np.asarray(weight)
    return np.ascontiguousarray(w[:, ::-1, ::-1, :].transpose(0, 3, 2, 1))


# --------------------------------------------------------------------------------------------------------------
# neurons


def dv_from_tau(tau: float | None) -> int:
    """``dv`` whose voltage decay factor ``(4096 - dv) / 4096`` is ``1 - 1/tau`` (None: 0, perfect integrator)."""
    if tau is None:
        return 0
    if tau < 1:
        raise QuantizationRangeError(f"membrane time constant tau={tau} < 1 has no Loihi decay")
    return int(min(DV_MAX, round(DECAY_UNITY / tau)))


@dataclass(frozen=True)
class LifParams:
    """Integer LIF parameters (Lava ``LIF`` arguments).  ``bias_mant``/``bias_exp``: int or per-neuron tensor
    broadcastable against the state (e.g. ``(C, 1, 1)`` for conv layers)."""

    du: int = DU_MAX
    dv: int = 0
    vth: int = 1
    bias_mant: Any = 0
    bias_exp: Any = 0

    def __post_init__(self) -> None:
        for name, hi in (("du", DU_MAX), ("dv", DV_MAX), ("vth", READOUT_VTH)):
            val = getattr(self, name)
            if not isinstance(val, int | np.integer) or isinstance(val, bool) or not 0 <= int(val) <= hi:
                raise QuantizationRangeError(f"LIF {name} must be an integer in [0, {hi}], got {val!r} "
                                             f"(Lava's fixed-point LIF hangs on floats)")
        mant, exp = _as_int_tensor(self.bias_mant), _as_int_tensor(self.bias_exp)
        if mant.numel() and (int(mant.min()) < BIAS_MANT_MIN or int(mant.max()) > BIAS_MANT_MAX):
            raise QuantizationRangeError(f"bias_mant outside 13-bit signed [{BIAS_MANT_MIN}, {BIAS_MANT_MAX}]")
        if exp.numel() and (int(exp.min()) < -BIAS_EXP_MAX or int(exp.max()) > BIAS_EXP_MAX):
            raise QuantizationRangeError(f"bias_exp outside [-{BIAS_EXP_MAX}, {BIAS_EXP_MAX}]")

    @property
    def effective_vth(self) -> int:
        """``vth << 6``: spike when ``v > effective_vth``."""
        return int(self.vth) << VTH_SHIFT

    def effective_bias(self, device: torch.device | None = None) -> torch.Tensor:
        """``bias_mant << bias_exp`` (``>> -bias_exp`` for negative exponents), int64."""
        return _shift(_as_int_tensor(self.bias_mant, device), _as_int_tensor(self.bias_exp, device)
                      if np.ndim(self.bias_exp) else int(self.bias_exp))

    @property
    def spiking(self) -> bool:
        return int(self.vth) < READOUT_VTH


class LifStep(NamedTuple):
    """Result of :func:`lif_step_fixed`: new state, spikes, and where u wrapped / v saturated this step."""

    u: torch.Tensor
    v: torch.Tensor
    s: torch.Tensor
    u_wrapped: torch.Tensor
    v_saturated: torch.Tensor


def lif_step_fixed(a_in: torch.Tensor, u: torch.Tensor, v: torch.Tensor, p: LifParams) -> LifStep:
    """One bit-exact step of Lava's ``PyLifModelBitAcc`` (equations in the module docstring).

    ``a_in`` (synaptic input, summed over connections), ``u`` and ``v`` are integer tensors of one shape
    (any leading batch dims); returns int64 ``u``, ``v``, bool ``s`` and bool overflow masks.
    """
    a = wrap32(_as_int_tensor(a_in, a_in.device))
    u = _as_int_tensor(u, a.device)
    v = _as_int_tensor(v, a.device)
    curr = wrap32(_decay(u, DECAY_UNITY - (int(p.du) + 1)) + wrap32(a << ACT_SHIFT))
    u_new = torch.where(curr > UV_MAX, curr - 2 * UV_MAX, curr)
    u_new = torch.where(u_new <= -UV_MAX, curr + 2 * UV_MAX, u_new)
    u_wrapped = (curr > UV_MAX) | (curr <= -UV_MAX)
    volt = wrap32(wrap32(_decay(v, DECAY_UNITY - int(p.dv)) + u_new) + p.effective_bias(a.device))
    v_saturated = (volt > V_LIMIT) | (volt < -V_LIMIT)
    volt = volt.clamp(-V_LIMIT, V_LIMIT)
    s = volt > p.effective_vth
    return LifStep(u_new, torch.where(s, torch.zeros_like(volt), volt), s, u_wrapped, v_saturated)
