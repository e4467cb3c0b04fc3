"""The one quantizer: float NIR layers + LIF neurons -> Loihi integers (formats in :mod:`.loihi`).

Export runs :func:`quantize_graph` on each stage's NIR graph and writes the result into the bundle; the
simulator's fixed mode and the Lava graph read those integers (a bare NIR graph in the simulator's fixed
mode is quantized here too).  A spiking-jelly LIF (``X = W s + b``; ``H = V + (X - V) / tau`` with
``decay_input``, else ``H = V - V / tau + X``; spike ``H >= v_th``; hard reset to 0) maps onto the
integers with ``v ~= scale * V``, ``scale = 64 * vth / v_th``::

    dv = 4096 / tau,  du = 4095,   1/tau folded into weights and bias (tau_in = tau, or 1 without decay_input)
    w_int * 2**weight_exp = vth * W / (tau_in * v_th)            w_int = m << k, m an 8-bit mantissa
    bias_mant << bias_exp = 64 * vth * b / (tau_in * v_th)         13-bit mantissa, exp in [0, 7]

``vth`` is as large as the 24-bit state allows: with per-step input ``P = max_j sum_i |Wn_ij| + |bn_j|``
(threshold units, ``Wn = W / (tau_in v_th)``) the headroom is ``H = max(P, P * span + spiking, 1)``,
``span = tau`` (``num_steps`` for a perfect integrator), and ``64 * vth * H <= 2**23 - 1``.

* One integer synapse (Affine/Linear/Conv2d) and no direct edge: :func:`quantize_layer`; the largest
  ``weight_exp`` whose ``vth = m_max 2**weight_exp / max|Wn|`` fits is taken (full mantissa range).
* Otherwise ("joint": residual sums, pooling): one shared ``vth`` (capped so every input's mantissas fit
  at the largest ``weight_exp``); each input gets the smallest ``weight_exp`` whose mantissas fit.
  Synapses without an integer form (pooling, Conv1d, asymmetric padding) enter as graded currents
  ``a = round(X * analog_factor)``, ``analog_factor = vth * r / (tau_in v_th)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import nir
import numpy as np
import torch
import torch.nn.functional as F

from spkdiff.neuron import LIFStepParameters, lif_step

from .loihi import (
    ACT_SHIFT,
    BIAS_EXP_MAX,
    BIAS_MANT_MAX,
    BIAS_MANT_MIN,
    DECAY_UNITY,
    DU_MAX,
    READOUT_VTH,
    V_LIMIT,
    VTH_MAX,
    VTH_SHIFT,
    WEIGHT_BITS,
    LifParams,
    LifStep,
    QuantizationRangeError,
    SignMode,
    conv_fixed,
    dense_fixed,
    determine_sign_mode,
    dv_from_tau,
    lava_conv_weight,
    lif_step_fixed,
    pair,
    weight_lsb_shift,
)
from .nir_graph import (
    NEURON_TYPES,
    GraphView,
    bias_map,
    broadcast_outputs,
    integer_capable,
    neuron_constants,
    neuron_inputs,
    population_shape,
    view,
)

__all__ = ["LayerEvaluation", "NeuronQuant", "QuantOptions", "QuantizedLayer", "SynapseQuant",
           "bias_format", "default_headroom", "evaluate_layer", "mantissa", "mantissa_unit", "quantize_graph",
           "quantize_layer", "vth_cap"]


@dataclass(frozen=True)
class QuantOptions:
    """``num_steps``: headroom horizon of perfect integrators (export: the stage's time steps);
    ``headroom``: threshold units (None: the worst case); ``weight_exp_range``: allowed ``weight_exp``."""

    num_steps: int = 16
    headroom: float | None = None
    weight_exp_range: tuple[int, int] = (0, 7)


# --------------------------------------------------------------------------------------------------------------
# the arithmetic both cases share


def default_headroom(per_step: float, dv: int, num_steps: int, spiking: bool) -> float:
    """``max(P, P * span + spiking, 1)``: the largest ``|u|``, ``|v|`` in thresholds for per-step input ``P``."""
    span = float(max(1, num_steps)) if dv == 0 else DECAY_UNITY / dv
    return max(per_step, per_step * span + (1.0 if spiking else 0.0), 1.0)


def vth_cap(headroom: float, bias_max: float) -> int:
    """The largest ``vth`` with ``64 vth H <= 2**23 - 1`` whose bias ``64 vth max|bn|`` fits ``4095 << 7``."""
    cap = min(VTH_MAX, int(V_LIMIT // ((1 << VTH_SHIFT) * headroom)))
    if bias_max > 0:
        cap = min(cap, int((BIAS_MANT_MAX << BIAS_EXP_MAX) // ((1 << ACT_SHIFT) * bias_max)))
    return cap


def mantissa_unit(wn: np.ndarray) -> tuple[SignMode, int, float]:
    """Sign mode, LSB shift ``k`` and ``unit``: mantissas ``m = vth Wn / 2**(e + k)`` fit while
    ``vth <= unit * 2**(e + k)`` (MIXED: [-128, 127]; one sign: magnitude 255)."""
    mode = determine_sign_mode(torch.as_tensor(wn))
    k = weight_lsb_shift(mode)
    if mode == SignMode.MIXED:
        pos, neg = float(wn.max()), float(-wn.min())
        unit = min(127.0 / pos if pos > 0 else math.inf, 128.0 / neg if neg > 0 else math.inf)
    else:
        mag = float(np.abs(wn).max()) if wn.size else 0.0
        unit = 255.0 / mag if mag > 0 else math.inf
    return mode, k, unit


def _mantissa_range(mode: SignMode) -> tuple[int, int]:
    return (-128, 127) if mode == SignMode.MIXED else (0, 255) if mode == SignMode.EXCITATORY else (-255, 0)


def mantissa(wn: np.ndarray, vth: int, e: int, mode: SignMode, k: int) -> np.ndarray:
    """``round(vth Wn / 2**(e + k))`` clipped to the mode's range (only rounding can touch the limits)."""
    lo, hi = _mantissa_range(mode)
    return np.clip(np.round(vth * wn / 2.0 ** (e + k)).astype(np.int64), lo, hi)


def bias_format(b_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron ``(mant, exp)`` with the smallest ``exp`` in [0, 7] such that ``|round(b / 2**exp)| <= 4095``."""
    if b_int.size and (b_int.max() > BIAS_MANT_MAX << BIAS_EXP_MAX or b_int.min() < BIAS_MANT_MIN << BIAS_EXP_MAX):
        raise QuantizationRangeError(f"bias {np.abs(b_int).max():.0f} beyond 13-bit mantissa << {BIAS_EXP_MAX}")
    mant = np.zeros(b_int.shape, np.int64)
    exp = np.zeros(b_int.shape, np.int64)
    for e in range(BIAS_EXP_MAX, -1, -1):
        m = np.round(b_int / 2.0**e).astype(np.int64)
        ok = (m >= BIAS_MANT_MIN) & (m <= BIAS_MANT_MAX)
        mant = np.where(ok, m, mant)
        exp = np.where(ok, e, exp)
    return mant, exp


# --------------------------------------------------------------------------------------------------------------
# one layer


@dataclass(frozen=True)
class QuantizedLayer:
    """A float layer + LIF mapped onto Loihi integers (see module docstring for the mapping).

    ``weight_mant``: signed mantissa (MIXED: int8 range [-128, 127]; EXCITATORY/INHIBITORY: magnitude up to
    255); ``weight_int = weight_mant << weight_lsb_shift`` is what Lava's Dense/Conv receive (Conv in
    :func:`lava_conv_weight` layout), ``a = shift(weight_int @ s, weight_exp)``.  ``scale``: integer ``v``
    units per float unit of membrane potential (``V ~= v / scale``).  ``report`` holds static errors.
    """

    kind: str  # "dense" | "conv"
    weight_mant: np.ndarray
    weight_exp: int
    sign_mode: SignMode
    bias_mant: np.ndarray
    bias_exp: np.ndarray
    du: int
    dv: int
    vth: int
    scale: float
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    num_weight_bits: int = WEIGHT_BITS
    tau_in: float = 1.0  # input factor 1/tau folded into weight and bias (tau with decay_input, else 1)
    report: dict[str, float] = field(default_factory=dict, compare=False)
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def weight_int(self) -> np.ndarray:
        return self.weight_mant.astype(np.int64) << weight_lsb_shift(self.sign_mode, self.num_weight_bits)

    @property
    def spiking(self) -> bool:
        return self.vth < READOUT_VTH

    def lif_params(self, device: torch.device | str | None = None) -> LifParams:
        """LIF parameters with per-neuron bias shaped ``(C, 1, 1)`` for conv, ``(n,)`` for dense (cached per device)."""
        key = ("lif", str(device))
        if key not in self._cache:
            shape = (-1, 1, 1) if self.kind == "conv" else (-1,)
            self._cache[key] = LifParams(
                du=self.du, dv=self.dv, vth=self.vth,
                bias_mant=torch.as_tensor(self.bias_mant, dtype=torch.int64, device=device).view(shape),
                bias_exp=torch.as_tensor(self.bias_exp, dtype=torch.int64, device=device).view(shape))
        return self._cache[key]

    def weight_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """:attr:`weight_int` as an int64 tensor on ``device`` (cached)."""
        key = ("w", str(device))
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.weight_int, dtype=torch.int64, device=device)
        return self._cache[key]

    def synapse(self, s: torch.Tensor) -> torch.Tensor:
        """Integer synaptic output ``a`` for spikes ``s`` (dense ``(..., n_in)``, conv ``(B, C, H, W)``)."""
        w = self.weight_tensor(s.device)
        if self.kind == "conv":
            return conv_fixed(s, w, self.weight_exp, self.stride, self.padding, self.dilation, self.groups)
        return dense_fixed(s, w, self.weight_exp)

    def lava_weights(self) -> np.ndarray:
        """Weights for Lava: Dense ``weights`` (pass ``weight_exp``, ``sign_mode`` too) or the Conv kernel in
        Lava layout with ``weight_exp`` folded in (Lava's fixed-point Conv ignores ``weight_exp``)."""
        if self.kind == "dense":
            return self.weight_int
        if self.weight_exp < 0:
            raise QuantizationRangeError("Lava's fixed-point Conv cannot apply a negative weight_exp")
        return lava_conv_weight(self.weight_int << self.weight_exp)

    def step(self, s: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> LifStep:
        """Synapse + LIF for one step (no Lava connection delay)."""
        return lif_step_fixed(self.synapse(s), u, v, self.lif_params(s.device))

    def dequantized(self) -> tuple[np.ndarray, np.ndarray]:
        """The float ``(W, b)`` this layer represents exactly (inverse of the mapping, ``1/tau`` unfolded)."""
        w = self.weight_int * 2.0**self.weight_exp * (1 << ACT_SHIFT) * self.tau_in / self.scale
        b = (self.bias_mant.astype(np.float64) * 2.0**self.bias_exp.astype(np.float64)) * self.tau_in / self.scale
        return w, b




def quantize_layer(weight: Any, bias: Any = None, *, kind: str | None = None, tau: float | None = 2.0,
                   v_threshold: float = 1.0, decay_input: bool = True, spiking: bool = True,
                   headroom: float | None = None, num_steps: int = 1, weight_exp_range: tuple[int, int] = (0, 7),
                   stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                   dilation: int | tuple[int, int] = 1, groups: int = 1) -> QuantizedLayer:
    """Choose Loihi integers for a float layer ``X = W s + b`` feeding a spiking-jelly LIF (or a read-out).

    ``headroom`` defaults to :func:`default_headroom` of the worst-case per-step input; the largest
    ``weight_exp`` in ``weight_exp_range`` whose ``vth = m_max 2**weight_exp / max|Wn|`` stays within
    :func:`vth_cap` is taken, so the mantissas use their full range.  ``spiking=False`` keeps that scale
    but sets ``vth = READOUT_VTH``.

    Raises :class:`QuantizationRangeError` for non-finite parameters or a scale below ``vth = 1``.
    ``report`` has the relative RMS / max weight error, bias error, mantissa use, headroom and leak error.
    """
    w = np.asarray(torch.as_tensor(weight).detach().cpu().double())
    kind = kind or ("conv" if w.ndim == 4 else "dense")
    if kind not in ("dense", "conv") or w.ndim != (4 if kind == "conv" else 2):
        raise QuantizationRangeError(f"{kind} layer needs a {'4' if kind == 'conv' else '2'}-d weight, "
                                     f"got shape {w.shape}")
    n_out = w.shape[0]
    b = np.zeros(n_out) if bias is None else np.asarray(torch.as_tensor(bias).detach().cpu().double()).reshape(n_out)
    if not (np.isfinite(w).all() and np.isfinite(b).all()) or v_threshold <= 0:
        raise QuantizationRangeError("layer has non-finite weights/bias or a non-positive threshold")
    tau_in = float(tau) if (decay_input and tau is not None) else 1.0
    wn, bn = w / (tau_in * v_threshold), b / (tau_in * v_threshold)
    dv = dv_from_tau(tau)
    per_step = float((np.abs(wn).reshape(n_out, -1).sum(axis=1) + np.abs(bn)).max()) if n_out else 0.0
    if headroom is None:
        headroom = default_headroom(per_step, dv, num_steps, spiking)
    bmax = float(np.abs(bn).max()) if n_out else 0.0
    cap = vth_cap(headroom, bmax)
    if cap < 1:
        raise QuantizationRangeError(f"{kind} layer needs headroom {headroom:.3g} thresholds (bias {bmax:.3g}): "
                                     f"beyond Loihi's 24-bit state even at vth=1")
    mode, k, unit = mantissa_unit(wn)
    # weight_int = m << k = vth * Wn / 2**e  ->  m = vth * Wn / 2**(e + k); full range at vth = unit * 2**(e + k)
    lo, hi = weight_exp_range
    exp, vth = lo, cap
    if math.isfinite(unit):
        for e in range(hi, lo - 1, -1):
            cand = math.floor(unit * 2.0 ** (e + k))
            exp, vth = e, min(cand, cap)
            if cand <= cap:
                break
        if vth < 1:
            raise QuantizationRangeError(f"{kind} layer weights too large for weight_exp <= {hi} "
                                         f"(max |W|/(tau v_th) = {float(np.abs(wn).max()):.3g})")
    mant = mantissa(wn, vth, exp, mode, k)
    scale = (1 << VTH_SHIFT) * vth / v_threshold
    bias_mant, bias_exp = bias_format(np.round(bn * (1 << ACT_SHIFT) * vth))
    q = QuantizedLayer(kind=kind, weight_mant=mant.astype(np.int16), weight_exp=int(exp), sign_mode=mode,
                       bias_mant=bias_mant.astype(np.int16), bias_exp=bias_exp.astype(np.int16), du=DU_MAX, dv=dv,
                       vth=int(vth) if spiking else READOUT_VTH, scale=float(scale), stride=pair(stride),
                       padding=pair(padding), dilation=pair(dilation), groups=int(groups),
                       tau_in=tau_in)
    wq, bq = q.dequantized()
    werr = wq - w
    leak = 1.0 - (DECAY_UNITY - dv) / DECAY_UNITY
    mlo, mhi = _mantissa_range(mode)
    q.report.update({
        "weight_rel_rms_error": float(np.sqrt((werr**2).mean() / max((w**2).mean(), 1e-300))),
        "weight_max_abs_error": float(np.abs(werr).max()) if werr.size else 0.0,
        "bias_max_abs_error": float(np.abs(bq - b).max()) if b.size else 0.0,
        "mantissa_use": float(np.abs(mant).max() / max(abs(mlo), mhi)) if mant.size else 0.0,
        "headroom": float(headroom),
        "vth_cap": float(cap),
        "leak_error": 0.0 if tau is None else abs(leak - 1.0 / tau),
    })
    return q


@dataclass
class LayerEvaluation:
    """Float vs fixed run of one layer on the same input spikes (voltages in threshold units)."""

    spike_agreement: float  # fraction of (step, neuron) with identical spikes
    v_rmse: float  # RMS of (v_fixed / scale - V_float) / v_th
    v_max_abs_error: float
    u_wraps: int  # u 24-bit wrap-arounds (catastrophic: raise headroom)
    v_saturations: int  # v clipped at +-(2**23 - 1)
    float_rate: float
    fixed_rate: float

    def __str__(self) -> str:
        return (f"spike agreement {self.spike_agreement:.4f}, v RMSE {self.v_rmse:.4g} thr, "
                f"max {self.v_max_abs_error:.3g}, rates float {self.float_rate:.4f} / fixed {self.fixed_rate:.4f}, "
                f"u wraps {self.u_wraps}, "
                f"v saturations {self.v_saturations}")


def evaluate_layer(q: QuantizedLayer, weight: Any, bias: Any, spikes: torch.Tensor, *, tau: float | None = 2.0,
                   v_threshold: float = 1.0, decay_input: bool = True, strict: bool = False) -> LayerEvaluation:
    """Run the float layer and its fixed-point version side by side on ``spikes`` ``(T, B, ...)``.

    Each step feeds the same input spikes to both (no error propagation between layers).  ``strict``:
    raise :class:`QuantizationRangeError` if u wrapped or v saturated.
    """
    dev = spikes.device
    w = torch.as_tensor(weight, dtype=torch.float64, device=dev)
    b = (torch.zeros(w.shape[0], dtype=torch.float64, device=dev) if bias is None
         else torch.as_tensor(bias, dtype=torch.float64, device=dev))
    spiking = q.spiking
    p = q.lif_params(spikes.device)
    float_params = LIFStepParameters(tau, 0.0, v_threshold, 0.0, spiking)
    v_f = u_i = v_i = None
    agree = total = wraps = sats = n_float = n_fixed = 0
    se = 0.0
    max_err = 0.0
    for s_t in spikes:
        s64 = (s_t != 0).to(torch.float64)
        x = F.conv2d(s64, w, b, q.stride, q.padding, q.dilation, q.groups) if q.kind == "conv" else s64 @ w.T + b
        if v_f is None:
            v_f = torch.zeros_like(x)
            u_i = torch.zeros(x.shape, dtype=torch.int64, device=dev)
            v_i = torch.zeros(x.shape, dtype=torch.int64, device=dev)
        # without decay_input the neuron is H = V - V/tau + X, i.e. Eq 1 with the current tau X
        s_f, v_f = lif_step(x if decay_input or tau is None else x * tau, v_f, float_params)
        out = lif_step_fixed(q.synapse(s_t), u_i, v_i, p)
        u_i, v_i = out.u, out.v
        wraps += int(out.u_wrapped.sum())
        sats += int(out.v_saturated.sum())
        s_q = out.s.to(torch.float64)
        agree += int((s_q == s_f).sum())
        total += s_q.numel()
        n_float += int(s_f.sum())
        n_fixed += int(s_q.sum())
        err = (v_i.double() / q.scale - v_f) / v_threshold
        se += float((err**2).sum())
        max_err = max(max_err, float(err.abs().max()))
    if strict and (wraps or sats):
        raise QuantizationRangeError(f"{q.kind} layer out of range: {wraps} u wrap-arounds, {sats} v saturations "
                                     f"(raise headroom)")
    total = max(total, 1)
    return LayerEvaluation(agree / total, math.sqrt(se / total), max_err, wraps, sats, n_float / total,
                           n_fixed / total)


# --------------------------------------------------------------------------------------------------------------
# a NIR graph


@dataclass(frozen=True)
class SynapseQuant:
    """A synaptic node folded into its neuron: ``a = shift(weight_int @ s, weight_exp)`` for spikes
    (``weight_int`` int64 in the NIR node's layout, Lava-formatted ``m << k``)."""

    weight_int: np.ndarray
    weight_exp: int

    @property
    def sign_mode(self) -> int:
        return int(determine_sign_mode(torch.as_tensor(self.weight_int)))


@dataclass(frozen=True)
class NeuronQuant:
    """Integer constants of one neuron node (Lava ``LIF`` arguments) and its inputs: what the quantizer makes,
    the bundle stores (``spkdiff.neuromorphic.bundle``) and the simulator's fixed mode and the Lava graph read.

    ``synapses``: the folded synapses with integer weights (a folded synapse without an entry enters as a
    graded current ``round(X * analog_factor)``); ``direct``: spike edge -> ``(weight, weight_exp)``.
    ``V = v_int / scale``.
    """

    method: str  # "quantize_layer" (one integer synapse) | "joint" (one shared vth for several inputs)
    du: int
    dv: int
    vth: int
    scale: float
    spiking: bool
    analog_factor: float
    bias_mant: np.ndarray  # int64, population shape
    bias_exp: np.ndarray
    synapses: dict[str, SynapseQuant] = field(default_factory=dict)
    direct: dict[str, tuple[int, int]] = field(default_factory=dict)

    def lif_params(self) -> LifParams:
        return LifParams(du=self.du, dv=self.dv, vth=self.vth, bias_mant=torch.as_tensor(self.bias_mant),
                         bias_exp=torch.as_tensor(self.bias_exp))


def quantize_graph(graph: nir.NIRGraph | GraphView, options: QuantOptions | None = None,
                   dt: float | None = None) -> dict[str, NeuronQuant]:
    """``neuron node -> NeuronQuant`` for every neuron node of a flat NIR graph (see the module docstring);
    ``dt``: NIR time units per step (default ``graph.metadata["dt"]``, else 1)."""
    opts = options or QuantOptions()
    g = view(graph)
    if dt is None:
        meta = getattr(graph, "metadata", None)
        dt = float(meta.get("dt", 1.0)) if isinstance(meta, dict) else 1.0
    out: dict[str, NeuronQuant] = {}
    for name in getattr(g, "order", g.nodes):
        node = g.nodes[name]
        if not isinstance(node, NEURON_TYPES):
            continue
        const = neuron_constants(name, node, dt)
        inputs = neuron_inputs(g, name)
        syns = {s: g.nodes[s] for s in inputs.synapses}
        shape = population_shape(node)
        if len(syns) == 1 and not inputs.direct and integer_capable(next(iter(syns.values()))):
            out[name] = _single(*next(iter(syns.items())), const.tau, const.r, const.v_th, const.spiking, shape, opts)
        else:
            out[name] = _joint(name, syns, inputs.direct, const.tau, const.r, const.v_th, const.spiking, shape, opts)
    return out


def _float32(x: Any) -> np.ndarray:
    """A NIR parameter as the simulator holds it (float32), widened to float64."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def _single(syn: str, node: nir.NIRNode, tau: float | None, r: float, v_th: float, spiking: bool,
            shape: tuple[int, ...], opts: QuantOptions) -> NeuronQuant:
    """One Affine/Linear/Conv2d input: :func:`quantize_layer`."""
    b = getattr(node, "bias", None)
    q = quantize_layer(_float32(node.weight) * r, None if b is None else _float32(b).reshape(-1) * r,
                       kind="conv" if isinstance(node, nir.Conv2d) else "dense", tau=tau, v_threshold=v_th,
                       decay_input=True, spiking=spiking, headroom=opts.headroom, num_steps=opts.num_steps,
                       weight_exp_range=opts.weight_exp_range)
    vth_real = q.scale * v_th / (1 << VTH_SHIFT)
    tau_in = tau if tau is not None else 1.0
    return NeuronQuant("quantize_layer", q.du, q.dv, q.vth, q.scale, spiking, vth_real * r / (tau_in * v_th),
                       broadcast_outputs(node, q.bias_mant.astype(np.int64), shape),
                       broadcast_outputs(node, q.bias_exp.astype(np.int64), shape),
                       {syn: SynapseQuant(q.weight_int.astype(np.int64), q.weight_exp)})


def _abs_row_sum(node: nir.NIRNode) -> float:
    """Largest sum of |weights| into one output (input per step for all-ones input), in float32 as the
    simulator's float map."""
    if isinstance(node, nir.SumPool2d | nir.AvgPool2d):
        k = np.asarray(node.kernel_size).reshape(-1)
        return 1.0 if isinstance(node, nir.AvgPool2d) else float(int(k[0]) * int(k[-1]))
    w = torch.as_tensor(np.asarray(node.scale if isinstance(node, nir.Scale) else node.weight),
                        dtype=torch.float32).contiguous()
    if isinstance(node, nir.Scale):
        return float(w.abs().max())
    return float(w.abs().flatten(1).sum(1).max())


def _joint(name: str, syns: dict[str, nir.NIRNode], direct: list[str], tau: float | None, r: float, v_th: float,
           spiking: bool, shape: tuple[int, ...], opts: QuantOptions) -> NeuronQuant:
    """Several inputs (residual sums, pooling): one shared vth, per-input weight exponents."""
    tau_in = tau if tau is not None else 1.0
    norm = r / (tau_in * v_th)  # float weight -> threshold units per step
    bn = sum((bias_map(s, shape) for s in syns.values()), np.zeros(shape)) * norm
    per_step = (sum(_abs_row_sum(s) for s in syns.values()) * abs(norm) + len(direct) * abs(norm)
                + float(np.abs(bn).max()))
    dv = dv_from_tau(tau)
    headroom = opts.headroom if opts.headroom is not None else default_headroom(per_step, dv, opts.num_steps, spiking)
    vth = vth_cap(headroom, float(np.abs(bn).max()))
    lo, hi = opts.weight_exp_range
    weights = {s: _float32(node.weight) * norm for s, node in syns.items() if integer_capable(node)}
    weights.update({d: np.array([norm]) for d in direct})
    units = {key: mantissa_unit(w) for key, w in weights.items()}
    for _, k, unit in units.values():  # the mantissas of every input must fit at e = hi
        if math.isfinite(unit):
            vth = min(vth, math.floor(unit * 2.0 ** (hi + k)))
    if vth < 1:
        raise QuantizationRangeError(f"{name}: inputs need more than Loihi's 24-bit range")
    ints: dict[str, tuple[np.ndarray, int]] = {}
    for key, w in weights.items():
        mode, k, unit = units[key]
        e = hi if not math.isfinite(unit) else max(lo, min(hi, math.ceil(math.log2(vth / unit)) - k))
        while e > lo and vth <= unit * 2.0 ** (e - 1 + k):  # float log2 rounding: take the smallest e that fits
            e -= 1
        ints[key] = (mantissa(w, vth, e, mode, k) << k, e)
    mant, exp = bias_format(np.round(bn * (1 << ACT_SHIFT) * vth))
    return NeuronQuant("joint", DU_MAX, dv, vth if spiking else READOUT_VTH, (1 << VTH_SHIFT) * vth / v_th, spiking,
                       vth * norm, mant, exp,
                       {s: SynapseQuant(m, e) for s, (m, e) in ints.items() if s not in direct},
                       {d: (int(ints[d][0].reshape(-1)[0]), ints[d][1]) for d in direct})
