"""The LIF neuron's float step (Eq 1-3): one implementation for training's reference, the ONNX export, the
simulator's float mode and the quantizer's error analysis (Norse style: parameters and state in, new state out).

Eq 1: H[t] = V[t-1] + (X[t] - (V[t-1] - V_leak)) / tau      (leaky; ``tau=None``: H[t] = V[t-1] + X[t])
Eq 2: S[t] = Theta(H[t] - V_th)                               (Theta(0) = 1, as SpikingJelly)
Eq 3: V[t] = H[t] (1 - S[t]) + V_reset S[t]                   (hard reset; no spike, no reset for a read-out)

With ``V_leak = V_reset`` this is SpikingJelly's ``LIFNode(decay_input=True)`` operation for operation, so the
spikes are bit-identical; it is also NIR's LIF (``r`` folded into X) integrated with forward Euler at dt = 1.
The fixed-point counterpart is :func:`spkdiff.neuromorphic.loihi.lif_step_fixed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

Value = float | torch.Tensor


@dataclass(frozen=True)
class LIFStepParameters:
    """Constants of one step: scalars, or tensors broadcastable to the population."""

    tau: Value | None = 2.0  # in steps; None: a perfect integrator (IF, I)
    v_leak: Value = 0.0
    v_threshold: Value = 1.0
    v_reset: Value = 0.0
    spiking: bool = True  # False: a read-out (LI, I) that neither spikes nor resets


class LIFStep(NamedTuple):
    spike: torch.Tensor  # S[t] (zeros for a read-out)
    v: torch.Tensor  # V[t]


def _is_zero(value: Value) -> bool:
    return isinstance(value, float | int) and value == 0


def lif_step(x: torch.Tensor, v: torch.Tensor, p: LIFStepParameters) -> LIFStep:
    """One step of Eq 1-3 from state ``v`` and input current ``x``."""
    if p.tau is None:
        h = torch.add(v, x)
    else:
        # SpikingJelly's order v + (x - (v - v_leak)) / tau, evaluated as ((x - d) / tau) + v (the same number)
        h = torch.sub(x, v if _is_zero(p.v_leak) else v - p.v_leak).div_(p.tau).add_(v)
    if not p.spiking:
        return LIFStep(torch.zeros_like(h), h)
    spike = (h >= p.v_threshold).to(h.dtype)
    if _is_zero(p.v_reset):
        v_next = h.addcmul_(h, spike, value=-1.0)  # h - h s: exactly h, or +0 after a spike (h is this step's)
    else:
        v_next = torch.where(spike.bool(), torch.as_tensor(p.v_reset, dtype=h.dtype), h)
    return LIFStep(spike, v_next)


def lif_sequence(x: torch.Tensor, p: LIFStepParameters, steps: int | None = None) -> torch.Tensor:
    """Eq 1-3 from V[0] = V_reset over time axis 0 of ``x`` (T, ...), or, with ``steps``, the same current
    ``x`` (...) at every step (direct encoding); returns the spikes (T, ...) (``v`` for a read-out).

    A plain loop (traceable for ONNX, the definition the training's fused kernel is tested against)."""
    constant = steps is not None
    v = torch.zeros_like(x if constant else x[0]).add_(p.v_reset)
    out = []
    for t in range(steps if constant else x.shape[0]):
        step = lif_step(x if constant else x[t], v, p)
        v = step.v
        out.append(step.spike if p.spiking else step.v)
    return torch.stack(out)
