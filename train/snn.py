"""Spiking building blocks: the LIF neuron as one autograd function over the fused kernels of
:mod:`spkdiff.neuron` (where Eq 1-3 and the ATan surrogate are defined), PSP/SFR read-outs (Eq 4-5).

Tensors are time-major: ``(T, B, ...)``.  The neuron is SpikingJelly's ``LIFNode(tau=2,
decay_input=True, v_threshold=1, v_reset=0, surrogate_function=ATan(alpha=2))`` in multi-step
mode, re-implemented as one autograd function so the time loop allocates little; the tests check
it against SpikingJelly bit for bit (forward) and to float precision (gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spkdiff import neuron
from spkdiff.errors import SpkdiffError
from spkdiff.neuron import LIFStepParameters, lif_sequence


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
        neuron.lif_forward_kernel(_as_2d(x_seq), constant, steps, np.float32(p.tau), np.float32(p.v_threshold),
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
        neuron.lif_backward_kernel(_as_2d(grad_spikes.float()), _as_2d(hs), ctx.constant, np.float32(p.tau),
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


# ----------------------------------------------------------------------------- growing a trained network


def grow_channels(ours: dict[str, torch.Tensor], source: dict[str, torch.Tensor],
                  readers: dict[str, nn.Conv2d | nn.ConvTranspose2d], what: str) -> dict[str, torch.Tensor]:
    """Net2Net-style widening: weights for a model whose state is ``ours`` (its fresh initialisation) from a
    ``source`` state with the same keys and the same or fewer channels, such that the wider model computes
    exactly what the source did.

    Each source tensor that is smaller than ours fills the leading slice of it; the added channels keep the fresh
    initialisation (random synapses in, so they spike and learn; BatchNorm at its defaults), except that every
    synapse *from* an added channel *into* a channel the source had starts at zero, in each weight named in
    ``readers`` (key -> its conv: Conv2d weights are (out, in, kh, kw), ConvTranspose2d (in, out, kh, kw)). The
    added channels thus see the old ones but feed nothing old until training moves those synapses off zero. Keys
    missing from ``source`` keep ours (the caller decides whether that is allowed)."""
    weights = dict(source)
    for key, tensor in ours.items():
        theirs = source.get(key)
        if theirs is None or theirs.shape == tensor.shape:
            continue
        if theirs.dim() != tensor.dim() or any(a > b for a, b in zip(theirs.shape, tensor.shape)):
            raise SpkdiffError(f"cannot grow the {what}: source tensor {key} has shape {tuple(theirs.shape)}, "
                               f"ours {tuple(tensor.shape)} (only channels may grow)")
        grown = tensor.detach().to(theirs.dtype, copy=True)
        grown[tuple(slice(0, n) for n in theirs.shape)] = theirs
        weights[key] = grown
    for key, conv in readers.items():
        if key in source and weights[key] is not source[key]:
            if isinstance(conv, nn.ConvTranspose2d):
                old_in, old_out = source[key].shape[:2]
                weights[key][old_in:, :old_out] = 0
            else:
                old_out, old_in = source[key].shape[:2]
                weights[key][:old_out, old_in:] = 0
    return weights


# ----------------------------------------------------------------------------- synaptic operations (energy lever)


def synapse_taps(conv: nn.Conv2d | nn.ConvTranspose2d, in_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W): outputs each input position of an ``in_hw`` map reaches per output channel (fewer at the borders).

    It is the gradient of the summed output of the same geometry with a kernel of ones: input position p
    feeds one output per kernel tap that lands inside the output map."""
    ones = torch.ones(1, 1, *conv.kernel_size)
    x = torch.ones(1, 1, *in_hw, requires_grad=True)
    geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    with torch.enable_grad():
        if isinstance(conv, nn.ConvTranspose2d):
            y = F.conv_transpose2d(x, ones, output_padding=conv.output_padding, **geometry)
        else:
            y = F.conv2d(x, ones, **geometry)
        (taps,) = torch.autograd.grad(y.sum(), x)
    return taps[0, 0]


def fan_out(conv: nn.Conv2d | nn.ConvTranspose2d, in_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W): synapses one input spike drives, as the chip counts SOPs."""
    return synapse_taps(conv, in_hw) * (conv.out_channels // conv.groups)


def dense_macs(conv: nn.Conv2d | nn.ConvTranspose2d, in_hw: tuple[int, int]) -> float:
    """MACs of one pass of the layer as an ANN: every (input, weight, output) triple inside the maps."""
    return float(fan_out(conv, in_hw).sum() * conv.in_channels)


def sop_fraction(spikes: list[torch.Tensor], fan_outs: list[torch.Tensor], macs: float) -> torch.Tensor:
    """R = sum_l sum_{t,c,h,w} s_l[t,c,h,w] f_l[h,w] / (B MACs_dense): the SOPs of one pass per sample (batch
    mean), each layer's spikes (T, B, C, H, W) weighted by their fan-out, relative to the dense MACs of the same
    network as an ANN.  Differentiable through the surrogate spikes.  On Loihi a SOP costs about 5x an ANN MAC
    at 45 nm (23.6 vs 4.6 pJ), so R < 0.2 is where the chip starts to pay off."""
    sops = sum((s.sum((0, 2)) * f.to(s)).sum() for s, f in zip(spikes, fan_outs, strict=True))
    return sops / (spikes[0].shape[1] * macs)
