"""The executor: runs a NIR graph on batched, time-major tensors and counts operations.

Nodes run in topological order, each on its whole ``(T, B, ...)`` sequence (exact for feed-forward
graphs: no node reads a later node).  Several edges into one node sum their inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch

from spkdiff.errors import SpkdiffError

from .counters import Counters, LayerCounts
from .fixed import convert as fixed_convert
from .graph import FlatGraph, flatten_graph
from .ops import Op, Shape, Signal, SynapseOp, build_op

#: Numeric modes: a converter swaps the float ops of a whole graph for its own (it may need graph context,
#: e.g. a neuron's integers decide its input synapses' ops): ``(graph, ops, quant) -> ops``; None: float.
MODES: dict[str, Callable[[FlatGraph, dict[str, Op], Any], dict[str, Op]] | None] = {
    "float": None, "fixed": fixed_convert}

_EXACT_F32 = float(2**24)  # integer sums below this are exact in float32


@dataclass
class SimResult:
    """``outputs``: output name -> ``(T, B, *shape)``; ``counters`` (None if not counted);
    ``recordings``: node name -> {"out": (T, B, *shape), "v": ..., "i": ...}; ``warnings``: numeric
    problems (fixed-point overflow)."""

    outputs: dict[str, torch.Tensor]
    counters: Counters | None = None
    recordings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _CountPlan:
    """Per synaptic node: fan-out over non-zero weights, total dense MACs per step, synapse count."""

    fan_out_nz: torch.Tensor  # (N_in,) float32
    fan_out_total: float
    dense_macs: float
    synapses: int


class Simulator:
    """Discrete-time executor of a NIR graph.

    Args:
        graph: a :class:`nir.NIRGraph` or the path of a NIR file.
        mode: ``"float"`` (float32, bit-exact SpikingJelly LIF) or ``"fixed"`` (Loihi fixed point).
        quant: fixed mode: the per-neuron Loihi integers (e.g. a bundle's ``loihi[stage]``), or quantizer
            options to quantize this graph (see :mod:`spkdiff.simulator.fixed`); ignored in float mode.
        dt: the NIR time unit per step; default: ``graph.metadata["dt"]`` if present, else 1.
    """

    def __init__(self, graph: nir.NIRGraph | str | Path, mode: str = "float", quant: Any = None,
                 dt: float | None = None) -> None:
        if mode not in MODES:
            raise SpkdiffError(f"unknown simulator mode {mode!r}; available: {', '.join(MODES)}")
        self.flat: FlatGraph = flatten_graph(graph)
        self.mode = mode
        self.quant = quant
        if dt is None:
            dt = float(self.flat.metadata.get("dt", 1.0))
        if not dt > 0:
            raise SpkdiffError(f"dt must be positive, got {dt}")
        self.dt = dt
        self.ops: dict[str, Op] = {}
        self._count_plans: dict[str, _CountPlan] = {}
        for name in self.flat.order:
            node = self.flat.nodes[name]
            in_shape = self._in_shape(name, node)
            self.ops[name] = build_op(name, node, in_shape, dt)
        # The ANN equivalent runs the network's own layers in float: a weight that is zero in the float graph
        # (the empty phase taps an exact ConvTranspose lowering leaves, synapses a merged network never joins)
        # is no MAC of it, and the count does not depend on the numeric mode.
        float_ops = self.ops
        float_fan_outs = {n: op.fan_out(mask=True) for n, op in float_ops.items() if isinstance(op, SynapseOp)}
        converter = MODES[mode]
        if converter is not None:
            self.ops = converter(self.flat, self.ops, quant)
        for name, op in self.ops.items():
            if isinstance(op, SynapseOp):  # an op the mode kept has the float fan-out already
                nz = (float_fan_outs[name] if op is float_ops.get(name) else op.fan_out(mask=True)).reshape(-1)
                dense = op.fan_out(mask=False)
                self._count_plans[name] = _CountPlan(nz.float(), float(nz.sum()), float(dense.sum()),
                                                     int(op.fan_in(mask=True).sum()))
        self.inputs: dict[str, Shape] = {n: self.ops[n].out_shape for n in self.flat.inputs}
        self.outputs: dict[str, Shape] = {n: self.ops[n].out_shape for n in self.flat.outputs}
        self.ann_macs = int(sum(float(f.sum()) for n, f in float_fan_outs.items() if self.ops[n].ann_op == "mac"))
        self.ann_adds = int(sum(float(f.sum()) for n, f in float_fan_outs.items() if self.ops[n].ann_op == "add"))

    # -- construction ------------------------------------------------------------------------------
    def _in_shape(self, name: str, node: nir.NIRNode) -> Shape:
        if isinstance(node, nir.Input):
            shape = node.input_type.get("input")
            if shape is None:
                raise SpkdiffError(f"input node {name!r} has no shape")
            return tuple(int(s) for s in np.asarray(shape).reshape(-1))
        preds = self.flat.preds[name]
        if not preds:
            raise SpkdiffError(f"node {name!r} has no incoming edge and is not an Input")
        shapes = {self.ops[p].out_shape for p in preds}
        if len(shapes) != 1:
            raise SpkdiffError(f"node {name!r} sums inputs of different shapes: {sorted(shapes)}")
        return shapes.pop()

    # -- execution ---------------------------------------------------------------------------------
    def _input_signal(self, name: str, value: torch.Tensor, steps: int | None) -> tuple[Signal, int]:
        shape = self.inputs[name]
        x = torch.as_tensor(value)
        if not x.dtype.is_floating_point:
            x = x.float()
        if x.dim() == len(shape) + 2 and tuple(x.shape[2:]) == shape:
            if steps is not None and steps != x.shape[0]:
                raise SpkdiffError(f"input {name!r} has {x.shape[0]} steps but steps={steps}")
            sig = Signal(x, static=False, event=False)
            t = x.shape[0]
        elif x.dim() == len(shape) + 1 and tuple(x.shape[1:]) == shape:
            if steps is None:
                raise SpkdiffError(f"input {name!r} has no time axis: pass steps= to repeat it")
            sig, t = Signal(x, static=True, event=False), steps
        else:
            raise SpkdiffError(f"input {name!r} must be (T, B, {', '.join(map(str, shape))}) or (B, ...) "
                               f"with steps=, got {tuple(x.shape)}")
        sig.event = bool(((x == 0) | (x == 1)).all())
        return sig, t

    def run(self, inputs: Mapping[str, torch.Tensor] | torch.Tensor, steps: int | None = None,
            record: bool | Iterable[str] = False, count: bool = True, per_neuron: bool = False) -> SimResult:
        """Run the graph.

        Args:
            inputs: input name -> ``(T, B, *shape)`` (time-major), or ``(B, *shape)`` with ``steps`` for an
                input constant in time (computed once by the stateless layers it feeds). A bare tensor
                is accepted for a single-input graph.
            steps: number of time steps (required when every input is constant in time).
            record: ``True`` or node names: keep each node's output and neuron states.
            count: collect :class:`Counters` (exact SOP/MAC/neuron-update/spike counts).
            per_neuron: also keep, per layer, SOPs arriving at each output neuron per step (for
                :func:`~spkdiff.simulator.mapping.map_to_chip` latency).
        """
        if isinstance(inputs, torch.Tensor):
            if len(self.inputs) != 1:
                raise SpkdiffError(f"the graph has inputs {sorted(self.inputs)}: pass a dict")
            inputs = {next(iter(self.inputs)): inputs}
        missing = set(self.inputs) - set(inputs)
        extra = set(inputs) - set(self.inputs)
        if missing or extra:
            raise SpkdiffError(f"inputs must be {sorted(self.inputs)}; missing {sorted(missing)}, "
                               f"unknown {sorted(extra)}")
        if steps is None:  # constant inputs take the length of the time-major ones
            steps = next((int(torch.as_tensor(v).shape[0]) for k, v in inputs.items()
                          if torch.as_tensor(v).dim() == len(self.inputs[k]) + 2), None)
        sigs: dict[str, Signal] = {}
        all_steps = set()
        for name, value in inputs.items():
            sig, t = self._input_signal(name, value, steps)
            sigs[name] = sig
            all_steps.add(t)
        if len(all_steps) != 1:
            raise SpkdiffError(f"inputs disagree on the number of steps: {sorted(all_steps)}")
        steps = all_steps.pop()
        batch = {s.data.shape[0] if s.static else s.data.shape[1] for s in sigs.values()}
        if len(batch) != 1:
            raise SpkdiffError(f"inputs disagree on the batch size: {sorted(batch)}")
        nbatch = batch.pop()
        want = set(self.ops) if record is True else (set(record) if record else set())
        unknown = want - set(self.ops)
        if unknown:
            raise SpkdiffError(f"cannot record unknown nodes {sorted(unknown)}")
        counters = Counters(steps, nbatch, ann_macs=self.ann_macs, ann_adds=self.ann_adds) if count else None
        recordings: dict[str, dict[str, torch.Tensor]] = {}
        warnings: list[str] = []
        remaining = {n: len(self.flat.succs[n]) for n in self.ops}
        keep = set(self.flat.outputs) | want

        with torch.no_grad():
            for name in self.flat.order:
                op = self.ops[name]
                x = sigs[name] if op.kind == "input" else op.gather([(p, sigs[p]) for p in self.flat.preds[name]])
                # neuron states are needed to count active updates
                traced = name in want or (counters is not None and op.kind == "neuron")
                rec: dict[str, torch.Tensor] | None = {} if traced else None
                y = op.run(x, steps, rec)
                sigs[name] = y
                warnings.extend(op.last_warnings)
                if rec is not None and name in want:
                    recordings[name] = {"out": _full(y, steps), **rec}
                if counters is not None and op.kind in ("synapse", "neuron"):
                    counters.layers[name] = self._count(name, op, x, y, steps, nbatch, sigs, per_neuron, rec)
                for p in self.flat.preds.get(name, []):  # free intermediate sequences early
                    remaining[p] -= 1
                    if remaining[p] == 0 and p not in keep:
                        del sigs[p]
        outputs = {n: _full(sigs[n], steps) for n in self.flat.outputs}
        return SimResult(outputs, counters, recordings, warnings)

    # -- counting ----------------------------------------------------------------------------------
    def _count(self, name: str, op: Op, x: Signal, y: Signal, steps: int, batch: int,
               sigs: dict[str, Signal], per_neuron: bool, rec: dict[str, torch.Tensor] | None) -> LayerCounts:
        zeros = np.zeros((steps, batch))
        n_out = int(np.prod(op.out_shape))
        lc = LayerCounts(name, type(op.node).__name__, op.kind, n_out, 0, zeros.copy(), zeros.copy(),
                         zeros.copy(), zeros.copy())
        if op.kind == "synapse":
            plan = self._count_plans[name]
            lc.synapses = plan.synapses
            if x.event:
                lc.sops = _weighted_sum(x, plan.fan_out_nz, plan.fan_out_total, steps, batch)
                if per_neuron:
                    assert isinstance(op, SynapseOp)
                    agg = x.data.sum(0, keepdim=True) if x.static else x.data.sum(1)  # summed over the batch
                    with torch.no_grad():
                        inc = op.apply(agg.double(), mask=True).expand(steps, *op.out_shape)
                    lc.incoming_sops = inc.round().numpy().copy()
            else:
                lc.macs[:] = plan.dense_macs
                lc.effective_macs = _weighted_sum(_nonzero(x), plan.fan_out_nz, plan.fan_out_total, steps, batch)
            return lc
        # neuron node
        lc.synapses = 0
        lc.neuron_updates[:] = n_out
        lc.spiking = bool(op.spiking)
        if op.spiking:
            lc.spikes = _weighted_sum(y, None, float(n_out), steps, batch)
        lc.active_updates = _active_updates(op, x, y, rec or {}, steps)
        inc_total = np.zeros((steps, *op.out_shape)) if per_neuron else None
        for p in self.flat.preds[name]:
            ps = sigs[p]
            if self.ops[p].kind == "synapse" or not ps.event:
                continue
            lc.synapses += n_out  # one identity synapse per neuron for a direct spike edge
            lc.sops += _weighted_sum(ps, None, float(n_out), steps, batch)
            if inc_total is not None:
                s = ps.full(steps).sum(1).double().numpy()
                inc_total += s.reshape(steps, *op.out_shape)
        if inc_total is not None and lc.synapses:
            lc.incoming_sops = inc_total
        return lc


def _nonzero(sig: Signal) -> Signal:
    return Signal((sig.data != 0).float(), sig.static, True)


def _active_updates(op: Op, x: Signal, y: Signal, rec: dict[str, torch.Tensor], steps: int) -> np.ndarray:
    """``(T, B)``: compartments with input, a changed state or a spike (see :mod:`.counters`)."""
    active = x.full(steps) != 0
    if op.spiking:
        active |= y.data != 0
    for key in op.state_names():
        state = rec.get(key)
        if state is not None and steps > 1:
            active[1:] |= state[1:] != state[:-1]
    return active.reshape(steps, active.shape[1], -1).sum(-1).double().numpy()


def _full(sig: Signal, steps: int) -> torch.Tensor:
    return sig.full(steps).contiguous() if sig.static else sig.data


def _weighted_sum(sig: Signal, weights: torch.Tensor | None, bound: float, steps: int, batch: int) -> np.ndarray:
    """``(T, B)`` of ``sum_i x_i w_i`` (``w = 1`` if None, ``sum_i w_i <= bound``, ``0 <= x <= sig.peak``);
    exact: float32 while every partial sum stays below 2**24, else float64."""
    d = sig.data
    lead = 1 if sig.static else 2
    flat = d.reshape(*d.shape[:lead], -1)
    if sig.peak * bound >= _EXACT_F32 or flat.dtype != torch.float32:
        flat = flat.double()
    s = flat.sum(-1) if weights is None else flat @ weights.to(flat.dtype)
    out = s.double().numpy()
    if sig.static:
        out = np.broadcast_to(out, (steps, batch)).copy()
    return out
