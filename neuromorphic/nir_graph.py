"""NIR graph analysis for the Loihi mapping: which nodes form one neuron population with its inputs.

Shared by the quantizer (:mod:`.quantize`), the simulator's fixed mode and the Lava graph, so all three
read a NIR graph the same way.  Node roles::

    synapse  Affine, Linear, Conv1d, Conv2d, SumPool2d, AvgPool2d, Scale   (weights; folded into a neuron)
    neuron   LIF, LI, IF, I (Loihi models), CubaLIF, CubaLI, Threshold       (no Loihi model)
    reshape  every other non-I/O node: Flatten, Delay, the simulator's subgraph Passthrough

A neuron node's inputs (:func:`neuron_inputs`): each incoming edge is traced back through single-input
reshapes; if it ends at a synapse, that synapse folds into the neuron (it must feed nothing else), else
the edge is a direct spike edge (a residual skip, identity weights), named by its own predecessor.

The neuron constants (:class:`NeuronConstants`) map NIR's continuous-time parameters onto the discrete
LIF ``H = V + (r X - V) / tau`` (``tau`` in steps, ``tau = tau_nir / dt``) or ``H = V + r dt X``
(IF/I, ``tau = None``); Loihi needs them uniform over the population, ``v_leak = 0`` and ``v_reset = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nir
import numpy as np

from spkdiff.errors import SpkdiffError

__all__ = ["NEURON_TYPES", "SYNAPSE_TYPES", "GraphView", "NeuronConstants", "NeuronInputs", "bias_map",
           "broadcast_outputs", "consumers",
           "conv_padding", "integer_capable", "is_reshape", "neuron_constants", "neuron_inputs", "population_shape",
           "trace_back", "view"]

SYNAPSE_TYPES = (nir.Affine, nir.Linear, nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d, nir.Scale)
NEURON_TYPES = (nir.LIF, nir.LI, nir.IF, nir.I, nir.CubaLIF, nir.CubaLI, nir.Threshold)
_IO_TYPES = (nir.Input, nir.Output)


class GraphView(Protocol):
    """A flat NIR graph: nodes and per-node predecessor/successor lists in edge order (the simulator's
    ``FlatGraph`` is one; :func:`view` makes one from a ``nir.NIRGraph``)."""

    nodes: Mapping[str, nir.NIRNode]
    preds: Mapping[str, Sequence[str]]
    succs: Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class _View:
    nodes: dict[str, nir.NIRNode]
    preds: dict[str, list[str]]
    succs: dict[str, list[str]]


def view(graph: nir.NIRGraph | GraphView) -> GraphView:
    """``graph`` itself if it has ``preds``/``succs``, else those lists of a flat ``nir.NIRGraph``."""
    if hasattr(graph, "preds") and hasattr(graph, "succs"):
        return graph
    nested = [n for n, node in graph.nodes.items() if isinstance(node, nir.NIRGraph)]
    if nested:
        raise SpkdiffError(f"nested NIR subgraphs {nested}: pass the flattened graph (spkdiff.simulator's FlatGraph)")
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    succs: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for s, d in graph.edges:
        if s not in graph.nodes or d not in graph.nodes:
            raise SpkdiffError(f"edge ({s!r}, {d!r}) names an unknown node")
        preds[d].append(s)
        succs[s].append(d)
    return _View(dict(graph.nodes), preds, succs)


def check_graph_finite(graph: nir.NIRGraph, where: str, error: type[SpkdiffError] = SpkdiffError) -> None:
    """NaN/Inf in any node parameter, subgraphs included (a NaN model exports and simulates to garbage with exit
    0): one-line ``error`` naming ``where``, the node and the field."""
    for node_name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            check_graph_finite(node, f"{where}: {node_name}", error)
            continue
        for key, value in vars(node).items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "fc" and not np.isfinite(value).all():
                raise error(f"{where}: node {node_name}.{key} holds NaN or Inf")


def is_reshape(node: nir.NIRNode) -> bool:
    return not isinstance(node, SYNAPSE_TYPES + NEURON_TYPES + _IO_TYPES)


def trace_back(g: GraphView, name: str) -> str:
    """Follow single-input reshapes upstream to the node that produces the values."""
    while is_reshape(g.nodes[name]) and len(g.preds[name]) == 1:
        name = g.preds[name][0]
    return name


def consumers(g: GraphView, name: str) -> list[str]:
    """The nodes that read ``name``'s values, through reshapes."""
    out: list[str] = []
    for s in g.succs[name]:
        out.extend(consumers(g, s) if is_reshape(g.nodes[s]) else [s])
    return out


@dataclass(frozen=True)
class NeuronInputs:
    """``synapses``: the synaptic nodes folded into the neuron; ``direct``: its direct spike edges (named by
    the edge's source node, which may be a reshape)."""

    synapses: list[str]
    direct: list[str]


def neuron_inputs(g: GraphView, name: str) -> NeuronInputs:
    syns: list[str] = []
    direct: list[str] = []
    for p in g.preds[name]:
        src = trace_back(g, p)
        if isinstance(g.nodes[src], SYNAPSE_TYPES):
            if consumers(g, src) != [name]:
                raise SpkdiffError(f"synapse {src!r} feeds several nodes; Loihi needs one target neuron population "
                                   "per synapse")
            syns.append(src)
        else:
            direct.append(p)
    return NeuronInputs(syns, direct)


def population_shape(node: nir.NIRNode) -> tuple[int, ...]:
    """A neuron node's population shape (NIR: the shape of its parameters)."""
    return tuple(int(s) for s in np.asarray(node.input_type["input"]).reshape(-1))


@dataclass(frozen=True)
class NeuronConstants:
    """Uniform constants of a LIF/IF/LI/I node: ``tau`` in steps (None: no leak), input gain ``r`` (``r dt``
    for IF/I), ``v_th`` (1 for read-outs) and whether it spikes."""

    tau: float | None
    r: float
    v_th: float
    spiking: bool


def _uniform(name: str, value: Any, what: str) -> float:
    flat = np.asarray(value, dtype=np.float64).reshape(-1)
    if flat.size == 0 or not np.all(flat == flat[0]):
        raise SpkdiffError(f"Loihi: {name}: {what} must be the same for all neurons")
    return float(flat[0])


def neuron_constants(name: str, node: nir.NIRNode, dt: float = 1.0) -> NeuronConstants:
    """The Loihi-relevant constants of a neuron node; one-line errors for what Loihi cannot run."""
    if isinstance(node, nir.LIF | nir.LI):
        spiking = isinstance(node, nir.LIF)
        if _uniform(name, node.v_leak, "v_leak") != 0.0 or (spiking and _uniform(name, node.v_reset, "v_reset") != 0.0):
            raise SpkdiffError(f"Loihi: {name}: Loihi needs v_leak = v_reset = 0")
        tau = _uniform(name, np.asarray(node.tau, dtype=np.float64) / dt, "tau")
        if tau < 1:
            raise SpkdiffError(f"Loihi: {name}: tau/dt = {tau} < 1 step has no Loihi decay")
        v_th = _uniform(name, node.v_threshold, "v_threshold") if spiking else 1.0
        return NeuronConstants(tau, _uniform(name, node.r, "r"), v_th, spiking)
    if isinstance(node, nir.IF | nir.I):
        spiking = isinstance(node, nir.IF)
        if spiking and _uniform(name, node.v_reset, "v_reset") != 0.0:
            raise SpkdiffError(f"Loihi: {name}: Loihi needs v_reset = 0")
        v_th = _uniform(name, node.v_threshold, "v_threshold") if spiking else 1.0
        return NeuronConstants(None, _uniform(name, np.asarray(node.r, dtype=np.float64) * dt, "r"), v_th, spiking)
    raise SpkdiffError(f"Loihi: {name}: NIR {type(node).__name__} has no Loihi fixed-point model "
                       "(supported: LIF, IF, LI, I)")


def conv_padding(node: nir.Conv1d | nir.Conv2d) -> tuple[int, ...] | str:
    """Zero padding per spatial axis; ``"same"`` stays a string only when it is asymmetric (odd total)."""
    w = np.asarray(node.weight)
    nd = w.ndim - 2

    def tup(v: object) -> tuple[int, ...]:
        arr = np.asarray(v).reshape(-1)
        return tuple(int(a) for a in (np.repeat(arr, nd) if arr.size == 1 else arr))

    if isinstance(node.padding, str):
        if node.padding == "valid":
            return (0,) * nd
        total = [d * (k - 1) for d, k in zip(tup(node.dilation), w.shape[2:])]
        if node.padding == "same" and all(t % 2 == 0 for t in total):
            return tuple(t // 2 for t in total)  # symmetric
        return node.padding
    return tup(node.padding)


def integer_capable(node: nir.NIRNode) -> bool:
    """Whether spikes through this synapse have a Loihi integer synapse (Dense, or Conv2d with zero padding)."""
    return isinstance(node, nir.Affine | nir.Linear) or (
        isinstance(node, nir.Conv2d) and not isinstance(conv_padding(node), str))


def broadcast_outputs(node: nir.NIRNode, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-output-channel (convolutions, channel-major) or per-output-feature (Affine, last axis) ``values``
    spread over the population ``shape``."""
    v = np.asarray(values).reshape(-1)
    n = int(np.prod(shape))
    if v.size == 0 or n % v.size:
        raise SpkdiffError(f"{v.size} per-output values do not fit a population of shape {shape}")
    full = np.repeat(v, n // v.size) if isinstance(node, nir.Conv1d | nir.Conv2d) else np.tile(v, n // v.size)
    return full.reshape(shape)


def bias_map(node: nir.NIRNode, shape: tuple[int, ...]) -> np.ndarray:
    """The synapse's constant output current per neuron (its float32 bias as float64; zeros without one)."""
    b = getattr(node, "bias", None)
    if b is None:
        return np.zeros(shape)
    return broadcast_outputs(node, np.asarray(b, dtype=np.float32).astype(np.float64), shape)
