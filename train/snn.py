"""Spiking building blocks: the LIF neuron (Eq 1-3; its float step is :func:`spkdiff.neuron.lif_step`) as a
fused training kernel, its ATan surrogate, PSP/SFR read-outs (Eq 4-5).

Tensors are time-major: ``(T, B, ...)``.  The neuron is SpikingJelly's ``LIFNode(tau=2,
decay_input=True, v_threshold=1, v_reset=0, surrogate_function=ATan(alpha=2))`` in multi-step
mode, re-implemented as one autograd function so the time loop allocates little; the tests check
it against SpikingJelly bit for bit (forward) and to float precision (gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.neuron import LIFStepParameters, lif_sequence

numba.config.THREADING_LAYER = "workqueue"  # numba's OpenMP layer fights torch's OpenMP pool


@dataclass(frozen=True)
class LIFParams:
    """LIF constants (SpikingJelly defaults, as in the paper's code); a run sets them in its config as each
    stage's ``model.neuron`` (``tau``, ``v_threshold``, ``v_reset``, ``alpha``), and export reads them from
    the trained layers, so the NIR graph, the simulator and the chip use the run's values."""

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float = 0.0
    alpha: float = 2.0  # ATan surrogate sharpness

    @property
    def step(self) -> LIFStepParameters:
        """The float step's constants (SpikingJelly: the membrane leaks towards V_reset)."""
        return LIFStepParameters(self.tau, self.v_reset, self.v_threshold, self.v_reset)

    @classmethod
    def from_dict(cls, d: dict | None) -> LIFParams:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpkdiffError(f"unknown neuron parameter(s) {sorted(unknown)}: known tau, v_threshold, v_reset, alpha")
        p = cls(**{k: float(v) for k, v in d.items()})
        if not p.tau > 1 or not p.v_threshold > p.v_reset or not p.alpha > 0:
            raise SpkdiffError(f"neuron parameters need tau > 1, v_threshold > v_reset and alpha > 0, got {p}")
        return p


def atan_surrogate_grad(h_minus_threshold: torch.Tensor, alpha: float) -> torch.Tensor:
    """g'(x) = alpha / (2 (1 + (pi/2 alpha x)^2)) for g(x) = arctan(pi/2 alpha x)/pi + 1/2."""
    return alpha / 2 / (1 + (math.pi / 2 * alpha * h_minus_threshold).square())


_BLOCK = 8192  # neurons per parallel chunk: each chunk runs the whole time loop, vectorised over neurons


@numba.njit(parallel=True, cache=True)
def _lif_forward_kernel(x, constant, steps, tau, v_th, v_reset, spikes, hs):  # pragma: no cover (compiled)
    """Eq 1-3 for all neurons; x is (T, N), or (1, N) with ``constant`` (same input at every step)."""
    n = spikes.shape[1]
    one = np.float32(1.0)
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(lo + _BLOCK, n)
        v = np.full(hi - lo, v_reset, dtype=np.float32)
        for t in range(steps):
            row = 0 if constant else t
            for j in range(lo, hi):
                vj = v[j - lo]
                h = vj + (x[row, j] - (vj - v_reset)) / tau
                s = one if h >= v_th else np.float32(0.0)
                spikes[t, j] = s
                hs[t, j] = h
                v[j - lo] = s * v_reset + (one - s) * h


@numba.njit(parallel=True, cache=True)
def _lif_backward_kernel(grad_spikes, hs, constant, tau, v_th, v_reset, alpha, grad_x):  # pragma: no cover
    """BPTT through Eq 1-3: surrogate g'(H - V_th) for Theta, gradient through the hard reset."""
    steps, n = hs.shape
    one = np.float32(1.0)
    half_pi_alpha = np.float32(math.pi / 2) * alpha
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
                z = half_pi_alpha * (h - v_th)
                sg = alpha / np.float32(2.0) / (one + z * z)
                fired = one if h >= v_th else np.float32(0.0)
                # dV[t]/dH[t] = (1 - S) + (V_reset - H) S'(H);  dH[t]/dV[t-1] = 1 - 1/tau
                gh = grad_spikes[t, j] * sg + grad_v[j - lo] * ((one - fired) + (v_reset - h) * sg)
                if constant:
                    grad_x[0, j] += gh / tau
                else:
                    grad_x[row, j] = gh / tau
                grad_v[j - lo] = gh - gh / tau


def _as_2d(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().view(x.shape[0], -1).numpy()


class _LIFMultiStep(torch.autograd.Function):
    """Multi-step LIF as one fused kernel (forward and BPTT backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, steps: int, constant: bool, p: LIFParams) -> torch.Tensor:  # type: ignore[override]
        if x.dtype != torch.float32:
            raise TypeError("LIF kernels run in float32")
        x_seq = x.unsqueeze(0) if constant else x
        shape = (steps, *x_seq.shape[1:])
        spikes = torch.empty(shape, dtype=torch.float32)
        hs = torch.empty(shape, dtype=torch.float32)
        _lif_forward_kernel(_as_2d(x_seq), constant, steps, np.float32(p.tau), np.float32(p.v_threshold),
                            np.float32(p.v_reset), spikes.view(steps, -1).numpy(), hs.view(steps, -1).numpy())
        ctx.save_for_backward(hs)
        ctx.constant, ctx.p, ctx.in_shape = constant, p, x.shape
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):  # type: ignore[override]
        (hs,) = ctx.saved_tensors
        p: LIFParams = ctx.p
        rows = 1 if ctx.constant else hs.shape[0]
        grad_x = torch.empty((rows, *hs.shape[1:]), dtype=torch.float32)
        _lif_backward_kernel(_as_2d(grad_spikes.float()), _as_2d(hs), ctx.constant, np.float32(p.tau),
                             np.float32(p.v_threshold), np.float32(p.v_reset), np.float32(p.alpha),
                             grad_x.view(rows, -1).numpy())
        return grad_x.view(ctx.in_shape), None, None, None


def lif_multi_step(x: torch.Tensor, p: LIFParams = LIFParams(), steps: int | None = None) -> torch.Tensor:
    """Run Eq 1-3 from V[0] = V_reset and return the spike train (T, ...).

    ``x`` is the input current (T, ...), or, with ``steps`` given, one current (...) applied at every
    one of ``steps`` steps (direct encoding / constant input): the same result as repeating it.
    """
    constant = steps is not None
    return _LIFMultiStep.apply(x, steps if constant else x.shape[0], constant, p)


def lif_multi_step_reference(x_seq: torch.Tensor, p: LIFParams = LIFParams()) -> torch.Tensor:
    """Plain-torch Eq 1-3 loop (:func:`spkdiff.neuron.lif_sequence`, the definition the fused kernel is tested
    against)."""
    return lif_sequence(x_seq, p.step)


class LIF(nn.Module):
    """Multi-step LIF layer (stateless between calls: every forward starts from V = V_reset)."""

    def __init__(self, params: LIFParams = LIFParams()):
        super().__init__()
        self.params = params

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        return lif_multi_step(x, self.params, steps)

    def extra_repr(self) -> str:
        return f"tau={self.params.tau}, v_threshold={self.params.v_threshold}, v_reset={self.params.v_reset}"


def sfr(spikes: torch.Tensor) -> torch.Tensor:
    """Eq 4: spike firing rate SFR = (1/T) sum_t z_t over the time axis 0."""
    return spikes.mean(0)


def merge_time(x: torch.Tensor) -> torch.Tensor:
    """(T, B, ...) -> (T*B, ...) so stateless layers run once over all steps."""
    return x.flatten(0, 1)


def split_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    return x.unflatten(0, (steps, -1))


class ConvBN(nn.Sequential):
    """Conv2d (or ConvTranspose2d) + BatchNorm2d; BN is folded into the conv at export.

    Activations stay NCHW: channels-last would make oneDNN's transposed convolutions 1.5-2x faster, but
    their rounding then depends on the batch size, so a run split over ranks would no longer equal the
    single-process run (spikes flip at the threshold)."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, batch_norm: bool = True):
        super().__init__(conv, nn.BatchNorm2d(conv.out_channels) if batch_norm else nn.Identity())


class SpikingConv(nn.Module):
    """ConvBN -> LIF over time. ``constant_input=True`` means the input is the same at every step
    (direct encoding, ASG, token spikes): the conv then runs once and its output is repeated,
    which gives the same currents (and BN batch statistics) as running it T times."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, lif: LIFParams = LIFParams(), batch_norm: bool = True):
        super().__init__()
        self.synapse = ConvBN(conv, batch_norm)
        self.neuron = LIF(lif)

    def forward(self, x: torch.Tensor, steps: int, constant_input: bool = False) -> torch.Tensor:
        if constant_input:
            return self.neuron(self.synapse(x), steps)
        return self.neuron(split_time(self.synapse(merge_time(x)), steps))
