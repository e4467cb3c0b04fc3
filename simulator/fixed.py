"""Fixed-point mode: the Loihi integers of every neuron node, run with :mod:`spkdiff.neuromorphic.loihi`.

The integers are READ, not computed here: ``quant`` is ``{neuron: integers}`` (a bundle's
``bundle.loihi[stage]``, or :func:`spkdiff.neuromorphic.quantize.quantize_graph`'s result; fields of
:class:`~spkdiff.neuromorphic.quantize.NeuronQuant`).  For a bare NIR graph (tests, benchmarks)
``quant`` may instead be quantizer options (:class:`~spkdiff.neuromorphic.quantize.QuantOptions`, a dict
of its fields, or None for the defaults): the graph is then quantized by that one quantizer.

Each neuron node (LIF with ``v_leak = v_reset = 0``, IF with ``v_reset = 0``, LI, I) owns the synaptic
nodes folded into it (:func:`spkdiff.neuromorphic.nir_graph.neuron_inputs`) and its direct spike edges.
Run time, per folded synapse: spike input (0/1) -> integer synapse (``dense_fixed``/``conv_fixed``,
``a = shift(W_int s, weight_exp)``); graded input (direct-encoded image, pooled counts) or a synapse
without integers -> the float map without bias, ``a = round(X * analog_factor)`` (host-side encoding).
Neurons run :func:`loihi.lif_step_fixed` (``du``, ``dv``, bias in the neuron, spike ``v > vth << 6``,
reset to 0).  Spiking neurons output spikes; LI/I read-outs output ``v_int / scale`` (float, the
float-mode units).  No Lava per-connection delay is added, so fixed and float outputs align step for step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic import loihi
from spkdiff.neuromorphic.nir_graph import integer_capable, neuron_inputs
from spkdiff.neuromorphic.quantize import NeuronQuant, QuantOptions, quantize_graph

from .ops import AffineOp, ConvOp, NeuronOp, Op, Shape, Signal, SynapseOp, sum_signals


def _is_integers(quant: Any) -> bool:
    return isinstance(quant, Mapping) and bool(quant) and all(hasattr(v, "synapses") for v in quant.values())


def _options(quant: Any) -> QuantOptions:
    if quant is None:
        return QuantOptions()
    if isinstance(quant, QuantOptions):
        return quant
    if isinstance(quant, Mapping):
        known = {f.name for f in fields(QuantOptions)}
        bad = set(quant) - known
        if bad:
            raise SpkdiffError(f"unknown fixed-mode options {sorted(bad)}; known: {sorted(known)} "
                               "(or pass the per-neuron integers, e.g. a bundle's loihi[stage])")
        return QuantOptions(**dict(quant))
    raise SpkdiffError(f"quant must be the per-neuron integers, QuantOptions or a dict, got {type(quant).__name__}")


def _population(values: Any, shape: Shape, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values, dtype=np.int64))
    if t.numel() != int(np.prod(shape)):
        raise SpkdiffError(f"fixed mode: {what} has {t.numel()} values for a population of shape {shape}")
    return t.reshape(shape)


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
        return b.current(x) if isinstance(b, AffineOp | ConvOp) else b.fn(x)

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
        self.quant = quant  # as given (read only)
        self.params = loihi.LifParams(du=int(quant.du), dv=int(quant.dv), vth=int(quant.vth),
                                      bias_mant=_population(quant.bias_mant, self.in_shape, f"{self.name} bias_mant"),
                                      bias_exp=_population(quant.bias_exp, self.in_shape, f"{self.name} bias_exp"))
        self.scale = float(quant.scale)
        self.spiking = bool(quant.spiking)
        self.last_warnings: list[str] = []

    def state_names(self) -> tuple[str, ...]:
        return ("v", "v_int", "u_int")

    def gather(self, parts: list[tuple[str, Signal]]) -> Signal:
        conv: list[Signal] = []
        for pred, sig in parts:
            if pred in self.quant.direct:
                w, e = (int(v) for v in self.quant.direct[pred])
                if sig.event and sig.peak <= 1.0:
                    a = (sig.data != 0).to(torch.int64) * w
                    a = loihi.wrap32(a << e if e > 0 else a >> -e)
                else:
                    a = _round_current(sig.data, self.quant.analog_factor)
                sig = Signal(a, sig.static, False)
            conv.append(sig)
        return sum_signals(conv)

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        d = x.data.to(torch.int64)
        batch = d.shape[0] if x.static else d.shape[1]
        u = torch.zeros((batch, *self.in_shape), dtype=torch.int64)
        v = torch.zeros_like(u)
        out = torch.empty((steps, batch, *self.in_shape), dtype=torch.float32)
        traces = {k: torch.empty((steps, batch, *self.in_shape), dtype=torch.int64) for k in ("v_int", "u_int")} \
            if record is not None else None
        wraps = sats = 0
        for t in range(steps):
            st = loihi.lif_step_fixed(d if x.static else d[t], u, v, self.params)
            u, v = st.u, st.v
            wraps += int(st.u_wrapped.sum())
            sats += int(st.v_saturated.sum())
            out[t] = st.s if self.spiking else v.double() / self.scale
            if traces is not None:
                traces["v_int"][t] = v
                traces["u_int"][t] = u
        if record is not None and traces is not None:
            record.update(traces)
            record["v"] = traces["v_int"].double().div_(self.scale).float()
        self.last_warnings = [f"{self.name}: {n} {what}" for n, what in ((wraps, "u wrap-arounds (24-bit)"),
                                                                         (sats, "v saturations")) if n]
        return Signal(out, False, self.spiking)


def convert(graph: Any, ops: dict[str, Op], quant: Any) -> dict[str, Op]:
    """Swap in the fixed-point ops: every neuron node with its integers, its folded synapses integer (or
    graded) synapses; other nodes stay float (host side)."""
    if _is_integers(quant):
        layers: Mapping[str, NeuronQuant] = quant
    else:
        layers = quantize_graph(graph, _options(quant), dt=next(iter(ops.values())).dt if ops else None)
    new = dict(ops)
    for name in graph.order:
        op = ops[name]
        if op.kind != "neuron":
            continue
        if not isinstance(op, NeuronOp):
            raise SpkdiffError(f"fixed mode: {name}: NIR {type(op.node).__name__} has no Loihi fixed-point model")
        layer = layers.get(name)
        if layer is None:
            raise SpkdiffError(f"fixed mode: no Loihi integers for neuron node {name!r}")
        inputs = neuron_inputs(graph, name)
        wanted = {s for s in inputs.synapses if integer_capable(graph.nodes[s])}
        if set(layer.synapses) != wanted or set(layer.direct) != set(inputs.direct):
            raise SpkdiffError(f"fixed mode: {name}: the integers' synapses {sorted(layer.synapses)} and direct edges "
                               f"{sorted(layer.direct)} do not match the graph's {sorted(wanted)}, "
                               f"{sorted(inputs.direct)}")
        new[name] = FixedNeuronOp(op, layer)
        for s in inputs.synapses:
            syn = layer.synapses.get(s)
            w = None if syn is None else torch.as_tensor(np.asarray(syn.weight_int, dtype=np.int64))
            new[s] = FixedSynapseOp(ops[s], w, 0 if syn is None else int(syn.weight_exp), float(layer.analog_factor))
    extra = set(layers) - {n for n, op in new.items() if isinstance(op, FixedNeuronOp)}
    if extra:
        raise SpkdiffError(f"fixed mode: Loihi integers for unknown neuron nodes {sorted(extra)}")
    return new
