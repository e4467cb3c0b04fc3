"""Operation counters: per layer, per time step and per sample.

Definitions (``x`` = a synaptic layer's input at one step, ``f_nz``/``f`` = per-input fan-out over
non-zero/all weights that reach a valid output, see :meth:`SynapseOp.fan_out`):

* ``sops``   synaptic operations, input is spike events: ``sum_i x_i * f_nz_i`` (each spike times its
  actual fan-out; a spike edge straight into a neuron counts 1 per spike);
* ``macs``   dense multiply-accumulates, input is analog: ``sum_i f_i`` (every step, constant or not);
* ``effective_macs`` analog input, NeuroBench's convention: ``sum_i [x_i != 0] * f_nz_i`` (zero inputs
  and zero weights skipped, bias not counted);
* ``neuron_updates`` neurons x steps of every neuron node;
* ``active_updates`` the *active* part of ``neuron_updates``: a compartment is active at step ``t`` if
  it received a non-zero input current, or its state (``v``, and ``i``/``u`` where it has one) differs
  from step ``t - 1``, or it spiked.  A compartment at rest with no input is inactive (at ``t = 0`` only
  input and spikes count: the state before the first step is the rest state);
* ``spikes`` output spikes of spiking neurons.

``ann_macs``/``ann_adds`` are the ANN-equivalent network's counts for ONE pass (no time): every input times
every weight that is non-zero in the float graph, weights as MACs, pooling as adds. The ANN runs the layers
themselves, so the zero taps of an exact ConvTranspose lowering (and the absent synapses of block-diagonal
weights) are not its MACs: the count equals the torch layers' dense MACs (``spkdiff.train.snn.dense_macs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: counts priced by an energy profile
COUNT_KEYS = ("sops", "macs", "neuron_updates", "spikes")
#: every ``(T, B)`` count array of a layer
ARRAY_KEYS = (*COUNT_KEYS, "active_updates", "effective_macs")


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
    active_updates: np.ndarray | None = None  # None: not measured, every update counts as active
    effective_macs: np.ndarray | None = None  # None: not measured, equal to ``macs``
    incoming_sops: np.ndarray | None = None  # (T, *out_shape): SOPs arriving at each output, summed over batch
    spiking: bool = False  # a spiking neuron node (its output counts in ActivationSparsity)

    def __post_init__(self) -> None:
        if self.active_updates is None:
            self.active_updates = self.neuron_updates.copy()
        if self.effective_macs is None:
            self.effective_macs = self.macs.copy()

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
        out = {k: float(self.per_sample(k).mean()) for k in ARRAY_KEYS}
        out["ann_macs"] = float(self.ann_macs)
        out["ann_adds"] = float(self.ann_adds)
        return out

    def summary(self) -> list[dict[str, float | str | int]]:
        """One row per layer: mean per-sample totals and the firing rate (for tables and JSON)."""
        rows: list[dict[str, float | str | int]] = []
        for layer in self.layers.values():
            row: dict[str, float | str | int] = {"layer": layer.name, "type": layer.nir_type, "kind": layer.kind,
                                                 "neurons": layer.neurons, "synapses": layer.synapses}
            for k in ARRAY_KEYS:
                row[k] = float(layer.total(k).mean())
            row["firing_rate"] = layer.firing_rate
            rows.append(row)
        return rows

    @staticmethod
    def concat(parts: Sequence[Counters], axis: int, ann_scale: int = 1) -> Counters:
        """Concatenate along time (``axis=0``, one graph run after another) or samples (``axis=1``);
        the ANN-equivalent counts are one run's times ``ann_scale``."""
        first = parts[0]
        steps = sum(p.steps for p in parts) if axis == 0 else first.steps
        batch = sum(p.batch for p in parts) if axis == 1 else first.batch
        out = Counters(steps, batch, ann_macs=first.ann_macs * ann_scale, ann_adds=first.ann_adds * ann_scale)
        for name, lc in first.layers.items():
            layers = [p.layers[name] for p in parts]
            arrays = {k: np.concatenate([getattr(x, k) for x in layers], axis=axis) for k in ARRAY_KEYS}
            out.layers[name] = LayerCounts(name, lc.nir_type, lc.kind, lc.neurons, lc.synapses, **arrays,
                                           spiking=lc.spiking)
        return out


class CountsLog:
    """The counters of successive runs of one graph, laid end to end in time: what
    ``Counters.concat(runs, axis=0, ann_scale=len(runs))`` returns, without keeping every run's arrays alive.

    A sampler calls its denoiser tens of times per batch; each call's counts are a few hundred small arrays made
    between the call's large activations.  Kept until the batch ends, they pin the freed activation space and the
    heap grows with every call (measured on the MNIST bundle at 98 calls: 5-7 MB of resident memory per call at
    16 images, while the bytes in use stayed flat).  Here each run is copied into arrays allocated once
    (``capacity_runs`` runs, doubled if exceeded).
    """

    def __init__(self, capacity_runs: int = 1) -> None:
        self.capacity_runs = max(1, capacity_runs)
        self.runs = 0
        self.steps = 0
        self._capacity_steps = 0
        self._shape: Counters | None = None  # the first run's batch, ANN counts and layers, without their arrays
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def append(self, run: Counters) -> None:
        """Add one run's counts after those already logged (same graph, same batch)."""
        if self._shape is None:
            self._shape = Counters(run.steps, run.batch, ann_macs=run.ann_macs, ann_adds=run.ann_adds)
            empty = np.zeros((0, run.batch))
            for name, lc in run.layers.items():
                self._shape.layers[name] = LayerCounts(name, lc.nir_type, lc.kind, lc.neurons, lc.synapses,
                                                       **{k: empty for k in ARRAY_KEYS}, spiking=lc.spiking)
            self._capacity_steps = run.steps * self.capacity_runs
            self._arrays = {name: {k: np.empty((self._capacity_steps, run.batch)) for k in ARRAY_KEYS}
                            for name in run.layers}
        elif run.batch != self._shape.batch or run.layers.keys() != self._shape.layers.keys():
            raise ValueError(f"a run of batch {run.batch} and layers {list(run.layers)} cannot follow runs of batch "
                             f"{self._shape.batch} and layers {list(self._shape.layers)}")
        end = self.steps + run.steps
        if end > self._capacity_steps:
            self._capacity_steps = max(end, 2 * self._capacity_steps)
            for arrays in self._arrays.values():
                for k, a in arrays.items():
                    arrays[k] = np.concatenate([a[:self.steps], np.empty((self._capacity_steps - self.steps,
                                                                          a.shape[1]))])
        for name, lc in run.layers.items():
            for k, a in self._arrays[name].items():
                a[self.steps:end] = getattr(lc, k)
        self.steps, self.runs = end, self.runs + 1

    def counters(self) -> Counters:
        """All logged runs as one :class:`Counters` (time = every run's steps; ANN counts one run's times the
        number of runs)."""
        if self._shape is None:
            raise ValueError("no run logged")
        shape = self._shape
        out = Counters(self.steps, shape.batch, ann_macs=shape.ann_macs * self.runs,
                       ann_adds=shape.ann_adds * self.runs)
        for name, lc in shape.layers.items():
            arrays = {k: a[:self.steps] for k, a in self._arrays[name].items()}
            out.layers[name] = LayerCounts(name, lc.nir_type, lc.kind, lc.neurons, lc.synapses, **arrays,
                                           spiking=lc.spiking)
        return out


@dataclass(frozen=True)
class NeuroBenchMetrics:
    """Workload metrics under NeuroBench's names and conventions (``neurobench.metrics.workload``), per sample.

    * ``Effective_ACs``  synaptic ops of layers whose input is spikes: ``sum_t sum_i s_i f_nz_i`` (= ``sops``);
    * ``Effective_MACs`` ops of layers whose input is not spikes, zero inputs and weights skipped:
      ``sum_t sum_i [x_i != 0] f_nz_i`` (``effective_macs``; not the dense ``macs``);
    * ``ActivationSparsity`` ``1 - nonzero outputs / all outputs`` over the spiking neuron layers, all
      steps and samples (a ratio, not a count);
    * ``MembraneUpdates`` every neuron at the first step, then each neuron whose membrane state changed
      (or that spiked): ``sum_layers (N + sum_{t >= 1} active_t)``, one forward pass per call.
    """

    Effective_ACs: float
    Effective_MACs: float
    ActivationSparsity: float
    MembraneUpdates: float

    @staticmethod
    def of(counters: Counters | Mapping[str, Counters], steps_per_call: Mapping[str, int] | int | None = None
           ) -> NeuroBenchMetrics:
        """From one graph's counters or per-stage counters; ``steps_per_call`` (per stage): the SNN steps of
        one forward pass when a stage's time axis holds several calls (each call starts from rest)."""
        stages = {"graph": counters} if isinstance(counters, Counters) else dict(counters)
        acs = macs = updates = nonzero = total = 0.0
        for stage, ctr in stages.items():
            per_call = steps_per_call.get(stage) if isinstance(steps_per_call, Mapping) else steps_per_call
            per_call = per_call or ctr.steps
            first = np.arange(ctr.steps) % per_call == 0  # the first step of each call
            for lc in ctr.layers.values():
                acs += float(lc.total("sops").mean())
                macs += float(lc.total("effective_macs").mean())
                if lc.kind != "neuron":
                    continue
                updates += float((lc.active_updates[~first].sum(axis=0) + lc.neurons * first.sum()).mean())
                if lc.spiking:
                    nonzero += float(lc.spikes.sum())
                    total += float(lc.neurons * ctr.steps * ctr.batch)
        sparsity = 1.0 - nonzero / total if total else 0.0
        return NeuroBenchMetrics(acs, macs, sparsity, updates)

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)
