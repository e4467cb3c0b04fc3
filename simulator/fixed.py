"""Fixed-point mode: Loihi integer arithmetic from :mod:`spkdiff.neuromorphic.loihi`.

Each neuron node (LIF with ``v_leak = v_reset = 0``, IF with ``v_reset = 0``, LI, I; uniform
parameters) is quantised together with the synaptic nodes folded into it (the Affine/Linear/Conv2d/
pooling/Scale nodes that feed only it, through reshapes) and its direct spike edges:

* one synaptic input and no direct edge (Affine/Linear/Conv2d): :func:`loihi.quantize_layer`, the
  same integers as the Lava target (``quant={"layers": {neuron: QuantizedLayer}}`` overrides);
* otherwise (residual sums, pooling): one shared ``vth`` (largest within the 24-bit headroom), each
  input gets the smallest ``weight_exp`` whose 8-bit mantissas fit at that ``vth``.

Run time, per folded synapse: spike input (0/1) -> integer synapse (``dense_fixed``/``conv_fixed``,
``a = shift(W_int s, weight_exp)``); graded input (direct-encoded image, pooled counts) -> the float
map without bias, ``a = round(X * vth * r / (tau_in * v_th))`` (host-side encoding).  Neurons run
:func:`loihi.lif_step_fixed` (``du = 4095``, ``dv = 4096 / tau``, bias in the neuron, spike
``v > vth << 6``, reset to 0).  Spiking neurons output spikes; LI/I read-outs output
``v_int / scale`` (float, the float-mode units).  No Lava per-connection delay is added, so fixed
and float outputs align step for step.

``quant`` options (dict or :class:`FixedOptions`): ``num_steps`` (headroom horizon of perfect
integrators, default 16), ``headroom`` (threshold units, default worst case), ``weight_exp_range``,
``layers``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic import loihi

from .ops import (
    AffineOp,
    ConvOp,
    IOp,
    LIOp,
    NeuronOp,
    Op,
    PoolOp,
    ScaleOp,
    Shape,
    Signal,
    SynapseOp,
    sum_signals,
)


@dataclass(frozen=True)
class FixedOptions:
    num_steps: int = 16
    headroom: float | None = None
    weight_exp_range: tuple[int, int] = (0, 7)
    layers: Mapping[str, loihi.QuantizedLayer] = field(default_factory=dict)


def _options(quant: Any) -> FixedOptions:
    if quant is None:
        return FixedOptions()
    if isinstance(quant, FixedOptions):
        return quant
    if isinstance(quant, Mapping):
        known = {f.name for f in fields(FixedOptions)}
        bad = set(quant) - known
        if bad:
            raise SpkdiffError(f"unknown fixed-mode options {sorted(bad)}; known: {sorted(known)}")
        return FixedOptions(**dict(quant))
    raise SpkdiffError(f"quant must be a dict or FixedOptions, got {type(quant).__name__}")


@dataclass
class NeuronQuant:
    """Integer constants of one neuron node and its inputs."""

    params: loihi.LifParams  # bias per neuron, shaped like the population
    scale: float  # v_int per float unit of v
    spiking: bool
    analog_factor: float  # a per unit of (bias-free) float input current
    synapses: dict[str, tuple[torch.Tensor, int]]  # folded synapse -> (integer weight, weight_exp)
    direct: dict[str, tuple[int, int]]  # direct spike edge -> (integer weight, weight_exp)


# --------------------------------------------------------------------------------------------------
# graph analysis


def _trace_back(graph: Any, ops: dict[str, Op], name: str) -> str:
    """Follow single-input reshape ops upstream to the node that produces the values."""
    while ops[name].kind == "shape" and len(graph.preds[name]) == 1:
        name = graph.preds[name][0]
    return name


def _consumers(graph: Any, ops: dict[str, Op], name: str) -> list[str]:
    out: list[str] = []
    for s in graph.succs[name]:
        out.extend(_consumers(graph, ops, s) if ops[s].kind == "shape" else [s])
    return out


def _neuron_constants(name: str, op: Op) -> tuple[float | None, float, float, bool]:
    """``(tau in steps or None, input gain r, v_th, spiking)``; uniform parameters only."""
    def scalar(v: object, what: str) -> float:
        if not isinstance(v, float):
            raise SpkdiffError(f"fixed mode: {name}: {what} must be the same for all neurons")
        return v

    if isinstance(op, LIOp):
        spiking = op.spiking
        if scalar(op.v_leak, "v_leak") != 0.0 or (spiking and scalar(op.v_reset, "v_reset") != 0.0):
            raise SpkdiffError(f"fixed mode: {name}: Loihi needs v_leak = v_reset = 0")
        tau = scalar(op.tau, "tau")
        if tau < 1:
            raise SpkdiffError(f"fixed mode: {name}: tau/dt = {tau} < 1 step has no Loihi decay")
        return tau, scalar(op.gain, "r"), scalar(op.v_th, "v_threshold") if spiking else 1.0, spiking
    if isinstance(op, IOp):
        spiking = op.spiking
        if spiking and scalar(op.v_reset, "v_reset") != 0.0:
            raise SpkdiffError(f"fixed mode: {name}: Loihi needs v_reset = 0")
        return None, scalar(op.gain, "r"), scalar(op.v_th, "v_threshold") if spiking else 1.0, spiking
    raise SpkdiffError(f"fixed mode: {name}: NIR {type(op.node).__name__} has no Loihi fixed-point model "
                       "(supported: LIF, IF, LI, I)")


def _abs_row_sum(op: SynapseOp) -> float:
    """Largest sum of |weights| into one output (input per step for all-ones input)."""
    if isinstance(op, AffineOp):
        return float(op.weight.abs().sum(1).max())
    if isinstance(op, ConvOp):
        return float(op.weight.abs().flatten(1).sum(1).max())
    if isinstance(op, PoolOp):
        return 1.0 if op.average else float(op.kernel[0] * op.kernel[1])
    assert isinstance(op, ScaleOp)
    return float(op.scale.abs().max())


def _bias_map(op: SynapseOp, neuron_shape: Shape) -> np.ndarray:
    """The synapse's constant output current per neuron (``fn(0)``), reshaped to the population."""
    if getattr(op, "bias", None) is None:
        return np.zeros(neuron_shape)
    with torch.no_grad():
        b = op.fn(torch.zeros(1, *op.in_shape, dtype=torch.float32))[0].double().numpy()
    return b.reshape(neuron_shape)


def _integer_capable(op: SynapseOp) -> bool:
    return isinstance(op, AffineOp) or (isinstance(op, ConvOp) and op.nd == 2 and not isinstance(op.padding, str))


def _bias_format(b_int: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron ``(mant, exp)``: smallest ``exp`` in [0, 7] with a 13-bit mantissa."""
    mant = np.zeros(b_int.shape, np.int64)
    exp = np.zeros(b_int.shape, np.int64)
    for e in range(loihi.BIAS_EXP_MAX, -1, -1):
        m = np.round(b_int / 2.0**e).astype(np.int64)
        ok = (m >= loihi.BIAS_MANT_MIN) & (m <= loihi.BIAS_MANT_MAX)
        mant, exp = np.where(ok, m, mant), np.where(ok, e, exp)
    return mant, exp


def _mantissa_unit(wn: np.ndarray) -> tuple[loihi.SignMode, int, float]:
    """Sign mode, LSB shift k and ``unit``: the largest ``vth / 2**(e + k)`` whose mantissas fit."""
    mode = loihi.determine_sign_mode(torch.as_tensor(wn))
    if mode == loihi.SignMode.INHIBITORY and not (wn < 0).any():
        mode = loihi.SignMode.EXCITATORY
    k = loihi.weight_lsb_shift(mode)
    if mode == loihi.SignMode.MIXED:
        pos, neg = float(wn.max()), float(-wn.min())
        unit = min(127.0 / pos if pos > 0 else math.inf, 128.0 / neg if neg > 0 else math.inf)
    else:
        mag = float(np.abs(wn).max()) if wn.size else 0.0
        unit = 255.0 / mag if mag > 0 else math.inf
    return mode, k, unit


def _mantissa(wn: np.ndarray, vth: int, e: int, mode: loihi.SignMode, k: int) -> np.ndarray:
    m = np.round(vth * wn / 2.0 ** (e + k)).astype(np.int64)
    lo, hi = (-128, 127) if mode == loihi.SignMode.MIXED else (0, 255) if mode == loihi.SignMode.EXCITATORY \
        else (-255, 0)
    return np.clip(m, lo, hi) << k


# --------------------------------------------------------------------------------------------------
# quantisation


def _quantize_single(name: str, syn: SynapseOp, tau: float | None, r: float, v_th: float, spiking: bool,
                     shape: Shape, opts: FixedOptions) -> NeuronQuant:
    """One Affine/Conv2d input: exactly :func:`loihi.quantize_layer` (the Lava target's integers)."""
    if name in opts.layers:
        q = opts.layers[name]
    else:
        w = (syn.weight.double() * r).numpy()
        b = None if syn.bias is None else (syn.bias.double() * r).numpy()
        conv = isinstance(syn, ConvOp)
        kw: dict[str, Any] = dict(stride=syn.stride, padding=syn.padding, dilation=syn.dilation,
                                  groups=syn.groups) if conv else {}
        q = loihi.quantize_layer(w, b, kind="conv" if conv else "dense", tau=tau, v_threshold=v_th,
                                 decay_input=True, spiking=spiking, headroom=opts.headroom,
                                 num_steps=opts.num_steps, weight_exp_range=opts.weight_exp_range, **kw)
    bias_shape = (-1, 1, 1) if q.kind == "conv" else (-1,)
    full = np.broadcast_to(np.asarray(q.bias_mant).reshape(bias_shape), syn.out_shape).reshape(shape)
    full_e = np.broadcast_to(np.asarray(q.bias_exp).reshape(bias_shape), syn.out_shape).reshape(shape)
    params = loihi.LifParams(du=q.du, dv=q.dv, vth=q.vth, bias_mant=torch.as_tensor(full.copy()),
                             bias_exp=torch.as_tensor(full_e.copy()))
    vth_real = q.scale * v_th / (1 << loihi.VTH_SHIFT)
    tau_in = tau if tau is not None else 1.0
    return NeuronQuant(params, q.scale, spiking, vth_real * r / (tau_in * v_th),
                       {syn.name: (torch.as_tensor(q.weight_int, dtype=torch.int64), q.weight_exp)}, {})


def _quantize_joint(name: str, syns: list[SynapseOp], direct: list[str], tau: float | None, r: float,
                    v_th: float, spiking: bool, shape: Shape, opts: FixedOptions) -> NeuronQuant:
    """Several inputs (residual sums, pooling): one shared vth, per-input weight exponents."""
    tau_in = tau if tau is not None else 1.0
    norm = r / (tau_in * v_th)  # float weight -> threshold units per step
    bn = sum((_bias_map(s, shape) for s in syns), np.zeros(shape)) * norm
    per_step = sum(_abs_row_sum(s) for s in syns) * abs(norm) + len(direct) * abs(norm) + float(np.abs(bn).max())
    dv = loihi.dv_from_tau(tau)
    if opts.headroom is not None:
        headroom = opts.headroom
    else:
        span = float(max(1, opts.num_steps)) if dv == 0 else loihi.DECAY_UNITY / dv
        headroom = max(per_step, per_step * span + (1.0 if spiking else 0.0), 1.0)
    vth = min(loihi.VTH_MAX, int(loihi.V_LIMIT // ((1 << loihi.VTH_SHIFT) * headroom)))
    bmax = float(np.abs(bn).max())
    if bmax > 0:
        vth = min(vth, int((loihi.BIAS_MANT_MAX << loihi.BIAS_EXP_MAX) // ((1 << loihi.ACT_SHIFT) * bmax)))
    lo, hi = opts.weight_exp_range
    weights: dict[str, np.ndarray] = {s.name: s.weight.double().numpy() * norm for s in syns if _integer_capable(s)}
    weights.update({d: np.array([norm]) for d in direct})
    units = {k: _mantissa_unit(w) for k, w in weights.items()}
    for _, k, unit in units.values():  # the mantissas of every input must fit at e = hi
        if math.isfinite(unit):
            vth = min(vth, math.floor(unit * 2.0 ** (hi + k)))
    if vth < 1:
        raise loihi.QuantizationRangeError(f"fixed mode: {name}: inputs need more than Loihi's 24-bit range")
    ints: dict[str, tuple[np.ndarray, int]] = {}
    for key, w in weights.items():
        mode, k, unit = units[key]
        e = hi if not math.isfinite(unit) else max(lo, min(hi, math.ceil(math.log2(vth / unit)) - k))
        while e > lo and vth <= unit * 2.0 ** (e - 1 + k):  # float log2 rounding: take the smallest e that fits
            e -= 1
        ints[key] = (_mantissa(w, vth, e, mode, k), e)
    mant, exp = _bias_format(np.round(bn * (1 << loihi.ACT_SHIFT) * vth))
    params = loihi.LifParams(du=loihi.DU_MAX, dv=dv, vth=vth if spiking else loihi.READOUT_VTH,
                             bias_mant=torch.as_tensor(mant), bias_exp=torch.as_tensor(exp))
    scale = (1 << loihi.VTH_SHIFT) * vth / v_th
    syn_ints = {k: (torch.as_tensor(m, dtype=torch.int64), e) for k, (m, e) in ints.items() if k not in direct}
    return NeuronQuant(params, scale, spiking, vth * norm, syn_ints,
                       {d: (int(ints[d][0].reshape(-1)[0]), ints[d][1]) for d in direct})


# --------------------------------------------------------------------------------------------------
# ops


def _round_current(x: torch.Tensor, factor: float) -> torch.Tensor:
    return loihi.wrap32(torch.round(x.double() * factor).to(torch.int64))


class FixedSynapseOp(SynapseOp):
    """A folded synapse in integer units of its neuron (counts like its float op)."""

    def __init__(self, base: SynapseOp, weight: torch.Tensor | None, weight_exp: int, analog_factor: float) -> None:
        Op.__init__(self, base.name, base.node, base.in_shape, base.dt)
        self.base = base
        self.out_shape = base.out_shape
        self.ann_op = base.ann_op
        self.w_int = weight
        self.weight_exp = weight_exp
        self.analog_factor = analog_factor

    def apply(self, x: torch.Tensor, mask: bool) -> torch.Tensor:
        return self.base.apply(x, mask)

    def _float_current(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        if isinstance(b, AffineOp):
            return torch.nn.functional.linear(b._in(x), b.weight)
        if isinstance(b, ConvOp):
            return b._conv(x, b.weight, None, b.stride, b.padding, b.dilation, b.groups)
        return b.fn(x)

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        d = x.data
        lead = d.shape[: d.dim() - len(self.in_shape)]
        flat = d.reshape(-1, *self.in_shape)
        binary = x.event and x.peak <= 1.0
        if self.w_int is not None and binary:
            b = self.base
            if isinstance(b, ConvOp):
                a = loihi.conv_fixed(flat, self.w_int, self.weight_exp, b.stride, b.padding, b.dilation, b.groups)
            else:
                a = loihi.dense_fixed(self.base._in(flat), self.w_int, self.weight_exp)
        else:
            with torch.no_grad():
                a = _round_current(self._float_current(flat), self.analog_factor)
        return Signal(a.reshape(*lead, *self.out_shape), x.static, False)


class FixedNeuronOp(NeuronOp):
    """:func:`loihi.lif_step_fixed` over time; spikes, or ``v_int / scale`` for read-outs."""

    def __init__(self, base: NeuronOp, quant: NeuronQuant) -> None:
        Op.__init__(self, base.name, base.node, base.in_shape, base.dt)
        self.base = base
        self.quant = quant
        self.spiking = quant.spiking
        self.last_warnings: list[str] = []

    def state_names(self) -> tuple[str, ...]:
        return ("v", "v_int", "u_int")

    def gather(self, parts: list[tuple[str, Signal]]) -> Signal:
        conv: list[Signal] = []
        for pred, sig in parts:
            if pred in self.quant.direct:
                w, e = self.quant.direct[pred]
                if sig.event and sig.peak <= 1.0:
                    a = (sig.data != 0).to(torch.int64) * w
                    a = loihi.wrap32(a << e if e > 0 else a >> -e)
                else:
                    a = _round_current(sig.data, self.quant.analog_factor)
                sig = Signal(a, sig.static, False)
            conv.append(sig)
        return sum_signals(conv)

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        q = self.quant
        d = x.data.to(torch.int64)
        batch = d.shape[0] if x.static else d.shape[1]
        u = torch.zeros((batch, *self.in_shape), dtype=torch.int64)
        v = torch.zeros_like(u)
        out = torch.empty((steps, batch, *self.in_shape), dtype=torch.float32)
        traces = {k: torch.empty((steps, batch, *self.in_shape), dtype=torch.int64) for k in ("v_int", "u_int")} \
            if record is not None else None
        wraps = sats = 0
        for t in range(steps):
            st = loihi.lif_step_fixed(d if x.static else d[t], u, v, q.params)
            u, v = st.u, st.v
            wraps += int(st.u_wrapped.sum())
            sats += int(st.v_saturated.sum())
            out[t] = st.s if q.spiking else v.double() / q.scale
            if traces is not None:
                traces["v_int"][t] = v
                traces["u_int"][t] = u
        if record is not None and traces is not None:
            record.update(traces)
            record["v"] = traces["v_int"].double().div_(q.scale).float()
        self.last_warnings = [f"{self.name}: {n} {what}" for n, what in ((wraps, "u wrap-arounds (24-bit)"),
                                                                         (sats, "v saturations")) if n]
        return Signal(out, False, q.spiking)


def convert(graph: Any, ops: dict[str, Op], quant: Any) -> dict[str, Op]:
    """Quantise every neuron node with its folded synapses; other nodes stay float (host side)."""
    opts = _options(quant)
    new = dict(ops)
    for name, op in ops.items():
        if op.kind != "neuron":
            continue
        if not isinstance(op, NeuronOp):
            raise SpkdiffError(f"fixed mode: {name}: NIR {type(op.node).__name__} has no Loihi fixed-point model")
        tau, r, v_th, spiking = _neuron_constants(name, op)
        syns: list[SynapseOp] = []
        direct: list[str] = []
        for p in graph.preds[name]:
            src = _trace_back(graph, ops, p)
            sop = ops[src]
            if isinstance(sop, SynapseOp):
                if _consumers(graph, ops, src) != [name]:
                    raise SpkdiffError(f"fixed mode: synapse {src!r} feeds several nodes; Loihi needs one "
                                       "target neuron population per synapse")
                syns.append(sop)
            else:
                direct.append(p)
        if len(syns) == 1 and not direct and _integer_capable(syns[0]):
            nq = _quantize_single(name, syns[0], tau, r, v_th, spiking, op.in_shape, opts)
        else:
            nq = _quantize_joint(name, syns, direct, tau, r, v_th, spiking, op.in_shape, opts)
        new[name] = FixedNeuronOp(op, nq)
        for s in syns:
            w, e = nq.synapses.get(s.name, (None, 0))
            new[s.name] = FixedSynapseOp(s, w, e, nq.analog_factor)
    return new
