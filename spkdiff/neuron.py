"""The LIF neuron's float equations (Eq 1-3) and their surrogate gradient: the one definition used by training
(:func:`lif_forward_kernel` and :func:`lif_backward_kernel` compile these functions with numba), the ONNX
export, the simulator's float mode and the quantizer's error analysis (Norse style: parameters and state in,
new state out).

Eq 1: H[t] = V[t-1] + (X[t] - (V[t-1] - V_leak)) / tau      (leaky; ``tau=None``: H[t] = V[t-1] + X[t])
Eq 2: S[t] = Theta(H[t] - V_th)                               (Theta(0) = 1, as SpikingJelly)
Eq 3: V[t] = H[t] (1 - S[t]) + V_reset S[t]                   (hard reset; no spike, no reset for a read-out)

:func:`charge`, :func:`fire` and :func:`reset` are Eq 1, 2 and 3 written as plain arithmetic, so that the same
function runs on torch tensors (:func:`lif_step`) and, compiled by numba, on float32 scalars (training's kernel).
A new neuron model changes these functions (and, for the chip, its fixed-point step).

With ``V_leak = V_reset`` this is SpikingJelly's ``LIFNode(decay_input=True)`` operation for operation, so the
spikes are bit-identical; it is also NIR's LIF (``r`` folded into X) integrated with forward Euler at dt = 1.
The fixed-point counterpart is :func:`spkdiff.neuromorphic.loihi.lif_step_fixed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
import torch

Value = float | torch.Tensor
numba.config.THREADING_LAYER = "workqueue"  # numba's OpenMP layer fights torch's OpenMP pool


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


# Eq 1-3 as plain arithmetic on tensors or scalars (see the module docstring): free of torch calls, and of
# Python number literals, which numba would widen to float64 (the constants below are float32).
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_HALF_PI = np.float32(math.pi / 2)


def charge(v, x, tau, v_leak):  # tensors, or float32 scalars in compiled code
    """Eq 1: H = V + (X - (V - V_leak)) / tau, in SpikingJelly's order of operations."""
    return v + (x - (v - v_leak)) / tau


def fire(h, v_threshold):
    """Eq 2: S = Theta(H - V_th) with Theta(0) = 1, as a boolean."""
    return h >= v_threshold


def reset(h, spike, v_reset):
    """Eq 3: V = H (1 - S) + V_reset S, computed as H - H S + V_reset S: for S in {0, 1} exactly H, or exactly
    V_reset after a spike."""
    return h - h * spike + v_reset * spike


def charge_backward(grad_h, tau):
    """Eq 1 backwards: (dL/dX, dL/dV[t-1]) = (g / tau, g (1 - 1/tau)) for g = dL/dH."""
    grad_x = grad_h / tau
    return grad_x, grad_h - grad_x


def reset_grad(h, v_threshold, v_reset, surrogate):
    """dV/dH of Eq 3 with Theta' replaced by the surrogate g'(H - V_th): (1 - S) + (V_reset - H) g'."""
    return (v_reset - h) * surrogate + (h < v_threshold)


def atan_surrogate_grad(h_minus_threshold, alpha):
    """The ATan surrogate of Theta': g'(x) = alpha / (2 (1 + (pi/2 alpha x)^2)) for g = arctan(pi/2 alpha x)/pi
    + 1/2 (SpikingJelly's ``surrogate.ATan``)."""
    z = _HALF_PI * alpha * h_minus_threshold
    return _HALF * alpha / (_ONE + z * z)


_BLOCK = 8192  # neurons per parallel chunk: each chunk runs the whole time loop, vectorised over neurons
# The equations above, compiled into the kernels below (inlined, so the loops vectorise). The kernels live in
# this file because numba's disk cache only notices edits of the file that defines the cached function.
_charge, _fire, _reset = (numba.njit(f, inline="always") for f in (charge, fire, reset))
_charge_backward, _reset_grad, _surrogate_grad = (
    numba.njit(f, inline="always") for f in (charge_backward, reset_grad, atan_surrogate_grad))


@numba.njit(parallel=True, cache=True)
def lif_forward_kernel(x, constant, steps, tau, v_th, v_reset, spikes, hs):  # pragma: no cover (compiled)
    """Eq 1-3 for all neurons, training's fused forward: x is (T, N) float32, or (1, N) with ``constant`` (the
    same input at every step); writes the spikes and H[t] (for the backward) into (T, N) arrays."""
    n = spikes.shape[1]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(lo + _BLOCK, n)
        v = np.full(hi - lo, v_reset, dtype=np.float32)
        for t in range(steps):
            row = 0 if constant else t
            for j in range(lo, hi):
                h = _charge(v[j - lo], x[row, j], tau, v_reset)
                s = np.float32(1.0) if _fire(h, v_th) else np.float32(0.0)
                spikes[t, j] = s
                hs[t, j] = h
                v[j - lo] = _reset(h, s, v_reset)


@numba.njit(parallel=True, cache=True)
def lif_backward_kernel(grad_spikes, hs, constant, tau, v_th, v_reset, alpha, grad_x):  # pragma: no cover
    """BPTT through Eq 1-3: the surrogate for Theta', the gradient through the hard reset."""
    steps, n = hs.shape
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(lo + _BLOCK, n)
        grad_v = np.zeros(hi - lo, dtype=np.float32)
        if constant:
            for j in range(lo, hi):
                grad_x[0, j] = 0.0
        for t in range(steps - 1, -1, -1):
            row = 0 if constant else t
            for j in range(lo, hi):
                h = hs[t, j]
                sg = _surrogate_grad(h - v_th, alpha)
                gh = grad_spikes[t, j] * sg + grad_v[j - lo] * _reset_grad(h, v_th, v_reset, sg)
                gx, gv = _charge_backward(gh, tau)
                if constant:
                    grad_x[0, j] += gx
                else:
                    grad_x[row, j] = gx
                grad_v[j - lo] = gv


def lif_step(x: torch.Tensor, v: torch.Tensor, p: LIFStepParameters) -> LIFStep:
    """One step of Eq 1-3 from state ``v`` and input current ``x``."""
    h = torch.add(v, x) if p.tau is None else charge(v, x, p.tau, p.v_leak)
    if not p.spiking:
        return LIFStep(torch.zeros_like(h), h)
    spike = fire(h, p.v_threshold).to(h.dtype)
    return LIFStep(spike, reset(h, spike, p.v_reset))


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
