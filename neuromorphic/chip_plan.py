"""How a NIR stage (as the simulator compiles it) maps onto the chip: neuron populations, connections, delays
and synaptic delays (no Lava import; the report counts what this plan runs).

:func:`build_plan` turns a :class:`spkdiff.simulator.Simulator` (mode ``"fixed"``: the integers it runs,
i.e. the bundle's, so Lava and the simulator use the same numbers; mode ``"float"``: float parameters) into a
:class:`StagePlan` of neuron populations and connections.  :class:`~.lava_graph.LavaStage` builds it in Lava
(``Conv``/``Dense`` + ``LIF``) behind the OutPort of a host process (:mod:`.lava_procs`); :mod:`.lava_generate`
wires both stages into one graph.

Delays.  Every Lava ``Conv``/``Dense`` delays by one step; the simulator has no delays.  Population ``k``
therefore sees the simulator's step ``j`` at Lava step ``d_k + j`` of a call (1-based), with ``d = 1`` for
a population fed by the host's current directly, ``d = d_src + 1`` across a connection.  A direct
(identity) spike edge whose source is ``D > 1`` steps ahead (a residual skip) holds its spikes ``D - 1``
extra steps in a synaptic delay (:class:`~.lava_procs.processes.DiagonalSynapse`: Lava's ``DelayDense``
in O(N) per step; Loihi's synapses carry a delay, up to 63 steps on Loihi 2), so that residual sums add the
same simulator step at no extra compartments or neuron updates.
Before its ``d_k``, a population would integrate only its bias (and stale activations of the previous
call, including spikes still held in a delay); the host process therefore zeroes ``u`` and ``v`` of each
population after the call's step ``d_k - 1`` (:func:`reset_offset`; after the previous call's last step
when ``d_k = 1``; its earlier spikes reach the next population before that one's own reset).  Then every
state equals the simulator's bit for bit (fixed_pt), and the read-out population's ``v`` at the call's
step ``d_R + T - 1`` (:attr:`StagePlan.run_steps`) is the simulator's ``v`` at its last step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spkdiff.errors import SpkdiffError

from .nir_graph import bias_map, neuron_constants, trace_back

__all__ = ["Connection", "Population", "StagePlan", "build_plan", "chw_to_whc", "host_current",
           "input_shape", "readout_value", "reset_offset", "whc_shape", "whc_to_chw"]


def chw_to_whc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(2, 1, 0)) if np.ndim(x) == 3 else np.asarray(x)


def whc_to_chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(2, 1, 0)) if np.ndim(x) == 3 else np.asarray(x)


@dataclass
class Population:
    """A LIF population (torch layout ``shape``); ``params``: du, dv, vth, bias_mant, bias_exp (ints in fixed
    mode, floats in float mode, bias per neuron in torch layout)."""

    name: str
    shape: tuple[int, ...]
    params: dict[str, Any]
    depth: int = 1
    scale: float = 1.0  # read-out value = v / scale
    spiking: bool = True


@dataclass
class Connection:
    """``src`` (a population or ``"input"``) -> ``dst`` through a Conv (``weight`` torch layout, ``weight_exp``
    folded in for fixed mode) or a Dense with a diagonal ``weight`` (per-neuron vector) and ``weight_exp``."""

    src: str
    dst: str
    kind: str  # "conv" | "diag"
    weight: np.ndarray
    weight_exp: int = 0
    geometry: dict[str, Any] = field(default_factory=dict)
    synapse: str = ""  # the NIR synapse node (conv) or the direct edge's source (diag)
    delay: int = 0  # "diag": steps its spikes are held beyond the connection's own one (a residual skip)


@dataclass
class StagePlan:
    mode: str  # "fixed" | "float"
    populations: dict[str, Population]
    connections: list[Connection]
    input_name: str
    input_shape: tuple[int, ...]
    input_kind: str  # "spikes": host OutPort -> Conv;  "current": host computes a, host OutPort -> LIF a_in
    input_target: str  # the population (current) fed by the host
    input_synapse: Any  # simulator op that turns a graded input into the current (current inputs)
    readout: str
    steps: int

    @property
    def run_steps(self) -> int:
        """Lava steps per run: the read-out's simulator step ``T - 1`` happens at Lava step ``d_R + T - 1``."""
        return self.populations[self.readout].depth + self.steps - 1


def _neuron_params(name: str, op: Any, mode: str, syn_biases: list[np.ndarray]) -> tuple[dict, float, bool]:
    if mode == "fixed":  # the integers the simulator runs (a bundle's), read as they are
        q = op.quant
        return ({"du": int(q.du), "dv": int(q.dv), "vth": int(q.vth),
                 "bias_mant": np.asarray(q.bias_mant, dtype=np.int64).reshape(op.in_shape),
                 "bias_exp": np.asarray(q.bias_exp, dtype=np.int64).reshape(op.in_shape)}, float(q.scale),
                bool(q.spiking))
    c = neuron_constants(name, op.node, op.dt)
    tau_in = c.tau if c.tau is not None else 1.0
    bias = sum(syn_biases, np.zeros(op.in_shape)) * c.r / tau_in
    return ({"du": 1.0, "dv": 0.0 if c.tau is None else 1.0 / c.tau, "vth": c.v_th if c.spiking else 1e30,
             "bias_mant": bias, "bias_exp": 0, "gain": c.r / tau_in}, 1.0, c.spiking)


def build_plan(sim: Any, steps: int, graded_input: bool = False) -> StagePlan:
    """The Lava graph of a simulator (``sim.mode`` fixed or float) running ``steps`` SNN steps per input;
    ``graded_input``: the input is an analog map whose first synapse the host computes (generator).
    Fixed mode reads the integers the simulator was given (a bundle's ``loihi[stage]``)."""
    from spkdiff.simulator.ops import AffineOp, ConvOp, NeuronOp, SynapseOp

    flat, ops, mode = sim.flat, sim.ops, sim.mode
    if len(flat.inputs) != 1 or len(flat.outputs) != 1:
        raise SpkdiffError("Lava stage graphs need exactly one input and one output")
    inp = flat.inputs[0]
    pops: dict[str, Population] = {}
    conns: list[Connection] = []
    input_kind, input_target, input_syn = "spikes", "", None
    for name in flat.order:
        op = ops[name]
        if op.kind != "neuron":
            continue
        if not isinstance(op, NeuronOp):
            raise SpkdiffError(f"Lava: {name}: no Lava model")
        incoming: list[tuple[str, Connection | None]] = []  # (source, connection)
        biases: list[np.ndarray] = []
        for p in flat.preds[name]:
            src = trace_back(flat, p)
            sop = ops[src]
            if isinstance(sop, SynapseOp):
                base = getattr(sop, "base", sop)  # the float op under a fixed-mode synapse: its geometry
                pre = trace_back(flat, flat.preds[src][0])
                if pre == inp and graded_input:
                    input_kind, input_target, input_syn = "current", name, sop
                    incoming.append(("input-current", None))
                    if mode == "float":
                        biases.append(bias_map(base.node, op.in_shape))
                    continue
                if not isinstance(base, ConvOp | AffineOp):
                    raise SpkdiffError(f"Lava: {src}: {type(base).__name__} has no Lava connection here")
                if mode == "fixed":
                    syn = op.quant.synapses.get(src)
                    if syn is None:
                        raise SpkdiffError(f"Lava: {src}: no integer weights")
                    w, e = np.asarray(syn.weight_int, dtype=np.int64), int(syn.weight_exp)
                else:
                    w, e = base.weight.double().numpy(), 0
                    biases.append(bias_map(base.node, op.in_shape))
                if isinstance(base, ConvOp):
                    if mode == "fixed":
                        if e < 0:
                            raise SpkdiffError(f"Lava: {src}: Lava's Conv cannot apply weight_exp {e} < 0")
                        w, e = w << e, 0
                    geo = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation,
                           "groups": base.groups, "in_shape": tuple(base.in_shape)}
                    conn = Connection(pre if pre != inp else "input", name, "conv", w, e, geo, src)
                else:
                    raise SpkdiffError(f"Lava: {src}: dense layers are not wired yet (the stages are convolutional)")
                incoming.append((conn.src, conn))
            elif getattr(sop, "kind", "") == "neuron" or src == inp:
                if mode == "fixed":
                    w, e = (int(v) for v in op.quant.direct[p])
                else:
                    w, e = 1.0, 0
                vec = np.full(int(np.prod(op.in_shape)), w, dtype=np.int64 if mode == "fixed" else np.float64)
                tail = src if src != inp else "input"
                incoming.append((tail, Connection(tail, name, "diag", vec, int(e), synapse=p)))
            else:
                raise SpkdiffError(f"Lava: {name}: unsupported input {src!r}")
        params, scale, spiking = _neuron_params(name, op, mode, biases)

        def depth_of(src: str) -> int:
            return 1 if src in ("input", "input-current") else pops[src].depth

        need = [depth_of(s) + (0 if s == "input-current" else 1) for s, _ in incoming]
        d = max(need)
        for (_, conn), arrive in zip(incoming, need):
            if conn is None:
                if arrive != d:
                    raise SpkdiffError(f"Lava: {name}: the host current cannot be delayed")
                continue
            if arrive != d:
                if conn.kind != "diag":
                    raise SpkdiffError(f"Lava: {name}: a convolution input arrives {d - arrive} steps early")
                conn.delay = d - arrive
            conns.append(conn)
        pops[name] = Population(name, tuple(op.in_shape), params, d, scale, spiking)
    out = trace_back(flat, flat.preds[flat.outputs[0]][0])
    if out not in pops:
        raise SpkdiffError(f"Lava: the output {out!r} is not a neuron population")
    return StagePlan(mode, pops, conns, inp, tuple(sim.inputs[inp]), input_kind, input_target, input_syn, out, steps)


def host_current(plan: StagePlan, x: torch.Tensor) -> np.ndarray:
    """The current the host sends into ``plan.input_target`` for graded inputs ``x`` (B, *input_shape): the
    simulator's rounded integer current (fixed) or ``gain * conv(x)`` without bias (float)."""
    from spkdiff.simulator.ops import Signal

    op = plan.input_synapse
    with torch.no_grad():
        if plan.mode == "fixed":
            a = op.run(Signal(x.float(), True, False), 1, None).data
            return a.to(torch.int64).numpy()
        a = op.current(x.double(), op.weight.double())
        return (a * plan.populations[plan.input_target].params["gain"]).numpy()


def readout_value(plan: StagePlan, raw: np.ndarray) -> torch.Tensor:
    """The read-out ``v`` in the simulator's units (float32): ``v_int / scale`` (fixed), ``v`` (float)."""
    v = torch.from_numpy(np.asarray(raw))
    if plan.mode == "fixed":
        return (v.to(torch.int64).double() / plan.populations[plan.readout].scale).float()
    return v.float()


def whc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Lava's (W, H, C) shape of a torch (C, H, W) shape."""
    return tuple(reversed(shape)) if len(shape) == 3 else tuple(shape)


def input_shape(plan: StagePlan) -> tuple[int, ...]:
    """Lava shape of what the host sends into the stage: the spikes, or the input population's current."""
    if plan.input_kind == "current":
        return whc_shape(plan.populations[plan.input_target].shape)
    return whc_shape(plan.input_shape)


def reset_offset(pop: Population) -> int:
    """Population ``k`` is zeroed (u and v) after call-relative Lava step ``d_k - 1`` (0: before the call)."""
    return pop.depth - 1
