"""Chip mapping: neurons to neurocores under Loihi-like limits, per-core load and step latency.

Model
-----
* A *compartment layer* is a neuron node, or a synaptic node whose output does not go straight
  (through reshapes only) into exactly one neuron node (it then needs relay compartments).
  Every other synaptic node is *folded* into the neuron layer it feeds.
* A core holds neurons of one layer, at most ``compartments_per_core`` of them, and their incoming
  synapses (non-zero weights, convolutions expanded per output position; a spike edge straight
  into a neuron is one synapse) at ``synapse_bits`` each within ``synapse_memory_bytes``.
  Layers are cut greedily in flattened (C, H, W) order.
* Cores work in parallel and synchronise every step, so a step takes as long as the busiest
  core's synaptic operations: ``latency[t] = max_core SOPs_core[t] * time_per_sop``.  Exact with
  counters from ``run(per_neuron=True)``; otherwise each core gets its layer's SOPs in proportion
  to its synapses (``latency_exact = False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np

from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic.nir_graph import consumers

from .counters import Counters
from .energy import sop_time_ns
from .engine import Simulator
from .ops import SynapseOp


@dataclass(frozen=True)
class ChipLimits:
    """Neurocore limits; defaults are Loihi's (Davies et al., IEEE Micro 2018)."""

    cores_per_chip: int = 128
    compartments_per_core: int = 1024
    synapse_memory_bytes: int = 128 * 1024
    synapse_bits: int = 8  # bits per stored synapse, from the weight format
    time_per_sop_ns: float = field(default_factory=sop_time_ns)  # the loihi profile's time_ns.sop

    def __post_init__(self) -> None:
        for k in ("cores_per_chip", "compartments_per_core", "synapse_memory_bytes", "synapse_bits"):
            if getattr(self, k) <= 0:
                raise SpkdiffError(f"chip limit {k} must be positive")


@dataclass
class CoreLoad:
    """One neurocore: which neurons of which layer, its synapses and its SOPs per step (sample mean)."""

    core: int
    chip: int
    layer: str
    start: int  # first neuron (flattened index in the layer)
    stop: int
    synapses: int
    sops_per_step: np.ndarray | None = None  # (T,)

    @property
    def compartments(self) -> int:
        return self.stop - self.start

    def synapse_bytes(self, bits: int) -> float:
        return self.synapses * bits / 8


@dataclass
class Mapping:
    """Result of :func:`map_to_chip`."""

    limits: ChipLimits
    cores: list[CoreLoad]
    layers: dict[str, list[int]]  # compartment layer -> its core ids
    folded: dict[str, str]  # synaptic node -> compartment layer holding its synapses
    latency_per_step_s: np.ndarray | None = None  # (T,)
    latency_exact: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_cores(self) -> int:
        return len(self.cores)

    @property
    def n_chips(self) -> int:
        return math.ceil(self.n_cores / self.limits.cores_per_chip)

    @property
    def busiest_core(self) -> CoreLoad | None:
        if not self.cores or self.cores[0].sops_per_step is None:
            return None
        return max(self.cores, key=lambda c: float(c.sops_per_step.max()))

    def summary(self) -> dict[str, Any]:
        bits = self.limits.synapse_bits
        out: dict[str, Any] = {
            "cores": self.n_cores, "chips": self.n_chips,
            "compartments": sum(c.compartments for c in self.cores),
            "synapses": sum(c.synapses for c in self.cores),
            "max_compartments_per_core": max((c.compartments for c in self.cores), default=0),
            "max_synapse_bytes_per_core": max((c.synapse_bytes(bits) for c in self.cores), default=0),
            "per_layer_cores": {k: len(v) for k, v in self.layers.items()},
        }
        if self.latency_per_step_s is not None:
            out["latency_per_step_s_mean"] = float(self.latency_per_step_s.mean())
            out["latency_per_step_s_max"] = float(self.latency_per_step_s.max())
            out["latency_total_s"] = float(self.latency_per_step_s.sum())
            out["latency_exact"] = self.latency_exact
        return out


def _source_is_event(sim: Simulator, name: str) -> bool:
    """Does a non-synaptic edge source carry spikes (spiking neuron or graph input, through reshapes)?"""
    op = sim.ops[name]
    if op.kind == "input" or (op.kind == "neuron" and op.spiking):
        return True
    if op.kind == "shape":
        return all(_source_is_event(sim, p) for p in sim.flat.preds[name])
    return False


def _cut(fan_in: np.ndarray, limits: ChipLimits, layer: str) -> list[tuple[int, int]]:
    """Greedy contiguous cut of a layer's neurons into cores."""
    bits = fan_in.astype(np.float64) * limits.synapse_bits
    mem = limits.synapse_memory_bytes * 8
    if bits.size and bits.max() > mem:
        raise SpkdiffError(f"layer {layer!r}: one neuron has {int(fan_in.max())} synapses "
                           f"({bits.max() / 8:.0f} B), more than a core's {limits.synapse_memory_bytes} B")
    csum = np.concatenate([[0.0], np.cumsum(bits)])
    cuts: list[tuple[int, int]] = []
    start, n = 0, fan_in.size
    while start < n:
        by_mem = int(np.searchsorted(csum, csum[start] + mem, side="right")) - 1
        stop = min(start + limits.compartments_per_core, by_mem, n)
        cuts.append((start, stop))
        start = stop
    return cuts


def map_to_chip(graph: nir.NIRGraph | str | Path | Simulator, limits: ChipLimits | None = None,
                counters: Counters | None = None) -> Mapping:
    """Assign every compartment layer of ``graph`` to neurocores; with ``counters`` estimate latency."""
    limits = limits or ChipLimits()
    sim = graph if isinstance(graph, Simulator) else Simulator(graph)
    folded: dict[str, str] = {}
    comp_layers: list[str] = []
    for name in sim.flat.order:
        op = sim.ops[name]
        if op.kind == "neuron":
            comp_layers.append(name)
        elif op.kind == "synapse":
            cons = consumers(sim.flat, name)
            if len(cons) == 1 and sim.ops[cons[0]].kind == "neuron":
                folded[name] = cons[0]
            else:
                folded[name] = name
                comp_layers.append(name)

    fan_in: dict[str, np.ndarray] = {}
    for layer in comp_layers:
        op = sim.ops[layer]
        n = int(np.prod(op.out_shape))
        f = np.zeros(n)
        for syn, home in folded.items():
            if home == layer:
                sop = sim.ops[syn]
                assert isinstance(sop, SynapseOp)
                f += sop.fan_in(mask=True).numpy().reshape(-1)
        if op.kind == "neuron":
            for p in sim.flat.preds[layer]:
                if sim.ops[p].kind != "synapse" and _source_is_event(sim, p):
                    f += 1.0
        fan_in[layer] = f

    cores: list[CoreLoad] = []
    layers: dict[str, list[int]] = {}
    for layer in comp_layers:
        layers[layer] = []
        for start, stop in _cut(fan_in[layer], limits, layer):
            cid = len(cores)
            cores.append(CoreLoad(cid, cid // limits.cores_per_chip, layer, start, stop,
                                  int(fan_in[layer][start:stop].sum())))
            layers[layer].append(cid)

    mapping = Mapping(limits, cores, layers, folded)
    if counters is not None:
        _attach_sops(mapping, counters, fan_in)
    return mapping


def _attach_sops(mapping: Mapping, counters: Counters, fan_in: dict[str, np.ndarray]) -> None:
    """Per-core SOPs per step (sample mean) and the step latency."""
    exact = True
    steps, batch = counters.steps, counters.batch
    for layer, core_ids in mapping.layers.items():
        parts = [n for n, home in mapping.folded.items() if home == layer]
        if layer not in parts:
            parts.append(layer)  # a neuron layer's own direct spike edges
        per_neuron = np.zeros((steps, fan_in[layer].size))
        layer_sops = np.zeros(steps)
        have_all = True
        for n in parts:
            lc = counters.layers.get(n)
            if lc is None:
                raise SpkdiffError(f"counters have no layer {n!r}: they come from another graph")
            layer_sops += lc.sops.mean(axis=1)
            if lc.sops.any():
                if lc.incoming_sops is None:
                    have_all = False
                else:
                    per_neuron += lc.incoming_sops.reshape(steps, -1) / batch
        exact &= have_all
        total_syn = max(float(fan_in[layer].sum()), 1.0)
        for cid in core_ids:
            core = mapping.cores[cid]
            if have_all:
                core.sops_per_step = per_neuron[:, core.start:core.stop].sum(axis=1)
            else:
                core.sops_per_step = layer_sops * (core.synapses / total_syn)
    mapping.latency_exact = exact
    loads = np.stack([c.sops_per_step for c in mapping.cores]) if mapping.cores else np.zeros((1, steps))
    mapping.latency_per_step_s = loads.max(axis=0) * mapping.limits.time_per_sop_ns * 1e-9
    if not exact:
        mapping.notes.append("per-core SOPs estimated from layer totals (run with per_neuron=True for exact)")
