"""Loihi-style discrete-time simulator of NIR graphs (reads NIR only, from any framework).

Conventions
-----------
* Time step ``dt`` in NIR time units (default 1: NIR time constants are in steps); forward Euler
  with SpikingJelly's ``decay_input=True`` operation order.  NIR ``LIF(tau, r, v_leak, v_threshold,
  v_reset)``::

      h = v + (r * x - (v - v_leak)) / (tau / dt)      # = v + (dt/tau) (v_leak - v + r x)
      s = h >= v_threshold                              # Heaviside with H(0) = 1
      v = v_reset if s else h                           # hard reset

  so SpikingJelly ``LIFNode(tau=2, decay_input=True, v_reset=0, v_threshold=1)`` = NIR
  ``LIF(tau=2, r=1, v_leak=0, v_threshold=1, v_reset=0)`` gives bit-identical spikes.  IF, LI, I,
  CubaLIF/CubaLI and Threshold follow the same pattern (see :mod:`spkdiff.simulator.ops`).
* Several edges into one node sum their inputs; feed-forward graphs only (cycles are an error).
* Conv/Affine biases are added every step.  Tensors are time-major ``(T, B, *shape)``.

API
---
``Simulator(graph, mode="float"|"fixed", quant=None).run(inputs, record=False) -> SimResult``,
``load_profile(name_or_path)``, ``energy(counters, profile)``, ``map_to_chip(graph, limits)``::

    sim = Simulator("bundle/encoder.nir")                  # or a nir.NIRGraph
    res = sim.run({"input": images}, steps=16)            # (B, C, H, W): constant in time, computed once
    res.outputs["output"]                                  # (T, B, ...)
    res.counters.totals()                                  # SOPs, MACs, neuron updates, spikes per sample
    energy(res.counters, "loihi").to_dict()                # J per sample, per layer, vs the ANN equivalent
    map_to_chip(sim, ChipLimits(), res.counters).summary() # cores, chips, per-core load, latency per step

``mode="fixed"`` runs the Loihi integer model (:mod:`spkdiff.simulator.fixed`).
"""

from .counters import Counters, LayerCounts
from .energy import EnergyReport, Profile, energy, load_profile
from .engine import SimResult, Simulator
from .mapping import ChipLimits, CoreLoad, Mapping, map_to_chip

__all__ = [
    "ChipLimits",
    "CoreLoad",
    "Counters",
    "EnergyReport",
    "LayerCounts",
    "Mapping",
    "Profile",
    "SimResult",
    "Simulator",
    "energy",
    "load_profile",
    "map_to_chip",
]
