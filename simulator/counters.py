"""Operation counters: per layer, per time step and per sample.

Definitions (``x`` = a synaptic layer's input at one step, ``f_nz``/``f`` = per-input fan-out over
non-zero/all weights that reach a valid output, see :meth:`SynapseOp.fan_out`):

* ``sops``   synaptic operations, input is spike events: ``sum_i x_i * f_nz_i`` (each spike times its
  actual fan-out; a spike edge straight into a neuron counts 1 per spike);
* ``macs``   dense multiply-accumulates, input is analog: ``sum_i f_i`` (every step, constant or not);
* ``neuron_updates`` neurons x steps of every neuron node;
* ``spikes`` output spikes of spiking neurons.

``ann_macs``/``ann_adds`` are the ANN-equivalent network's dense counts for ONE pass (no time):
weights as MACs, pooling as adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COUNT_KEYS = ("sops", "macs", "neuron_updates", "spikes")


@dataclass
class LayerCounts:
    """Counts of one node; each count array is ``(T, B)`` (time step, sample)."""

    name: str
    nir_type: str
    kind: str  # "synapse" or "neuron"
    neurons: int  # output elements of the node
    synapses: int  # non-zero weights (weight-sharing expanded: conv = per output position)
    sops: np.ndarray
    macs: np.ndarray
    neuron_updates: np.ndarray
    spikes: np.ndarray
    incoming_sops: np.ndarray | None = None  # (T, *out_shape): SOPs arriving at each output, summed over batch

    def total(self, key: str) -> np.ndarray:
        """Per sample, summed over time: ``(B,)``."""
        return getattr(self, key).sum(axis=0)

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron per step, averaged over the batch."""
        steps, batch = self.spikes.shape
        return float(self.spikes.sum() / max(self.neurons * steps * batch, 1))


@dataclass
class Counters:
    """All layers' counts for one run of a graph."""

    steps: int
    batch: int
    layers: dict[str, LayerCounts] = field(default_factory=dict)
    ann_macs: int = 0
    ann_adds: int = 0

    def per_sample(self, key: str) -> np.ndarray:
        """``(B,)``: a count summed over layers and time for each sample."""
        out = np.zeros(self.batch)
        for layer in self.layers.values():
            out += layer.total(key)
        return out

    def per_step(self, key: str) -> np.ndarray:
        """``(T,)``: a count summed over layers, averaged over samples."""
        out = np.zeros(self.steps)
        for layer in self.layers.values():
            out += getattr(layer, key).mean(axis=1)
        return out

    def totals(self) -> dict[str, float]:
        """Mean per sample of every count, plus the ANN-equivalent counts."""
        out = {k: float(self.per_sample(k).mean()) for k in COUNT_KEYS}
        out["ann_macs"] = float(self.ann_macs)
        out["ann_adds"] = float(self.ann_adds)
        return out

    def summary(self) -> list[dict[str, float | str | int]]:
        """One row per layer: mean per-sample totals and the firing rate (for tables and JSON)."""
        rows: list[dict[str, float | str | int]] = []
        for layer in self.layers.values():
            row: dict[str, float | str | int] = {"layer": layer.name, "type": layer.nir_type, "kind": layer.kind,
                                                 "neurons": layer.neurons, "synapses": layer.synapses}
            for k in COUNT_KEYS:
                row[k] = float(layer.total(k).mean())
            row["firing_rate"] = layer.firing_rate
            rows.append(row)
        return rows
