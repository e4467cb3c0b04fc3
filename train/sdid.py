"""SDID: a fully spiking denoiser for absorbing-state diffusion over the VQ-SVAE's token grid (stage 2).

Input spikes (the same at each of T SNN steps): one-hot token channels incl. [MASK] and a one-hot
time channel (see :func:`spkdiff.host.sdid_input_spikes`); with ``patch`` p > 1 each position carries a
p x p patch of tokens (space-to-depth) and reads out its p^2 K logits (depth-to-space on the host).
Body: Conv3x3+BN+LIF stem, residual blocks whose skip is a *sum of synaptic inputs* into the block's
second LIF (two NIR edges into one node), and a 1x1 conv read-out into non-spiking integrators (NIR ``I``):
the logits are the time mean of the read-out currents, i.e. the integrator's final state / T (the authors'
"time-mean of the last layer's output").  Softmax and sampling are host-side (spkdiff.host.MaskSampler).

Energy lever (``sop_weight`` in the SDID train settings): :meth:`SDID.sop_fraction` is the synaptic
operations of one call per sample, each layer's spikes weighted by their fan-out (synapses per spike),
relative to the dense MACs of the same network as an ANN (one pass):
``R = sum_l sum_{t,c,h,w} s_l[t,c,h,w] f_l[h,w] / MACs_dense``.  On Loihi a SOP costs about 5x an ANN
MAC at 45 nm (23.6 vs 4.6 pJ), so R < 0.2 is where the chip starts to pay off.

Training objective (training's alone; the host side of sampling is :mod:`spkdiff.host`): the forward
masking q(h_t | h_0) (:func:`training_mask`, Eq 10-12) and the weighted cross-entropy (:func:`diffusion_loss`,
Eq 14); optionally (``distill_from`` / ``distill_weight``) the same weighted KL to a trained teacher prior's
predictions (:func:`distillation_loss`), so that a narrow, low-rate student keeps the teacher's quality.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.host import patch_logits, sdid_input_spikes
from spkdiff.train.snn import (
    LIF,
    ConvBN,
    LIFParams,
    SpikingConv,
    dense_macs,
    fan_out,
    grow_channels,
    merge_time,
    sop_fraction,
    split_time,
)
from spkdiff.validate import check_value


@dataclass
class SDIDConfig:
    num_codes: int = 128
    grid: int = 7  # side of the token grid: the VQ-SVAE's latent_grid (set by spkdiff.train.run)
    channels: int = 128
    blocks: int = 3
    time_steps: int = 4
    diffusion_steps: int = 49
    time_bins: int = 7
    neuron: dict = field(default_factory=dict)  # LIF constants (LIFParams.from_dict): tau, v_threshold, ...
    # One dilation per residual block (both its 3x3 convs), None for all 1. Growing dilations widen the
    # receptive field on a fine token grid at no extra synapses: (1, 2, 4) sees 31x31 tokens, (1, 1, 1) 15x15.
    dilations: list[int] | None = None
    # Tokens per side of the patch one SDID position reads and predicts (space-to-depth on the host): with
    # patch 2 a 14x14 token grid runs as a 7x7 network that sees p^2 (K+1) token channels and reads out
    # p^2 K logits per position, so it costs what a 7x7 prior costs and sees the whole grid as one does.
    patch: int = 1

    def __post_init__(self) -> None:
        check_value(self.patch, (int, 1, 8), "sdid patch")
        if self.grid % self.patch:
            raise SpkdiffError(f"sdid patch {self.patch} does not divide the {self.grid}x{self.grid} token grid")
        if self.dilations is not None:
            check_value(self.dilations, (list, None, None), "sdid dilations")
            if len(self.dilations) != self.blocks:
                raise SpkdiffError(f"sdid dilations {self.dilations} must give one value per block ({self.blocks})")
            for i, d in enumerate(self.dilations):
                check_value(d, (int, 1, 64), f"sdid dilations[{i}]")

    @classmethod
    def from_dict(cls, d: dict) -> SDIDConfig:
        return cls(**d)

    @property
    def block_dilations(self) -> list[int]:
        return self.dilations if self.dilations is not None else [1] * self.blocks

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def in_channels(self) -> int:
        return self.patch ** 2 * (self.num_codes + 1) + self.time_bins

    @property
    def chip_grid(self) -> int:
        """Side of the grid the network runs on: the token grid over the patch."""
        return self.grid // self.patch


class ResidualBlock(nn.Module):
    """s -> LIF(ConvBN(LIF(ConvBN(s))) + s): the skip adds the input spikes to the second LIF's current.
    Both 3x3 convs are dilated by ``dilation`` (padded to keep the grid)."""

    def __init__(self, channels: int, lif: LIFParams, dilation: int = 1):
        super().__init__()
        self.first = SpikingConv(nn.Conv2d(channels, channels, 3, 1, dilation, dilation=dilation), lif)
        self.second = ConvBN(nn.Conv2d(channels, channels, 3, 1, dilation, dilation=dilation))
        self.neuron = LIF(lif)

    def forward(self, s: torch.Tensor, steps: int, spikes: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = self.first(s, steps)
        if spikes is not None:
            spikes.append(h)
        return self.neuron(split_time(self.second(merge_time(h)), steps) + s)


class SDID(nn.Module):
    def __init__(self, cfg: SDIDConfig):
        super().__init__()
        self.cfg = cfg
        lif = LIFParams.from_dict(cfg.neuron)
        self.stem = SpikingConv(nn.Conv2d(cfg.in_channels, cfg.channels, 3, 1, 1), lif)
        self.blocks = nn.ModuleList([ResidualBlock(cfg.channels, lif, d) for d in cfg.block_dilations])
        self.readout = nn.Conv2d(cfg.channels, cfg.patch ** 2 * cfg.num_codes, 1)

    def input_spikes(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return sdid_input_spikes(tokens, t, c.num_codes, c.diffusion_steps, c.time_bins, c.patch)

    def forward_spikes(self, x: torch.Tensor, spikes: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Input spikes (B, C_in, h, w), constant over time -> the read-out (B, p^2 K, h, w) on the chip's grid
        (the logits themselves for patch 1); ``spikes`` (a list) collects every LIF layer's output
        (T, B, C, h, w) in the order of :meth:`fan_outs`."""
        steps = self.cfg.time_steps
        s = self.stem(x, steps, constant_input=True)
        for block in self.blocks:
            if spikes is not None:
                spikes.append(s)
            s = block(s, steps, spikes)
        if spikes is not None:
            spikes.append(s)
        # Integrator read-out: v_T = sum_t (W s_t + b); logits = v_T / T.  Summing spikes first is the
        # same linear map, computed once.
        return self.readout(s.mean(0))

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, spikes: list[torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Tokens (B, H, W) with [MASK] = K at time t (B,) -> logits (B, K, H, W)."""
        return patch_logits(self.forward_spikes(self.input_spikes(tokens, t), spikes), self.cfg.patch)

    def fan_outs(self) -> list[torch.Tensor]:
        """Synapses per spike (H, W) of each spiking layer, as the chip counts SOPs: a block's input feeds
        its first conv and its skip (one synapse), its hidden layer the second conv, the last output the
        read-out."""
        hw = (self.cfg.chip_grid,) * 2
        out = []
        for block in self.blocks:
            out += [fan_out(block.first.synapse[0], hw) + 1, fan_out(block.second[0], hw)]
        return [*out, fan_out(self.readout, hw)]

    def dense_macs(self) -> float:
        """MACs of one pass of the same network as an ANN (every conv, all positions)."""
        hw = (self.cfg.chip_grid,) * 2
        return sum(dense_macs(c, hw) for c in self.modules() if isinstance(c, nn.Conv2d))

    def sop_fraction(self, spikes: list[torch.Tensor]) -> torch.Tensor:
        """R per sample, batch mean (:func:`spkdiff.train.snn.sop_fraction`).  The input spikes' SOPs are left
        out: the model cannot change them."""
        return sop_fraction(spikes, self.fan_outs(), self.dense_macs())


def grow_prior(model: SDID, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights for ``model`` from a trained SDID ``source`` with fewer (or as many) ``channels`` and otherwise the
    same shape, such that ``model`` computes exactly the source's logits (:func:`spkdiff.train.snn.grow_channels`):
    the added channels of the stem and of every block listen to the token spikes and to the old channels, and
    every synapse from them into an old channel or the read-out starts at zero. A residual block's skip is
    channel-wise (each channel's input spikes into the same channel's second LIF), so it needs no weights."""
    readers = {f"{name}.weight": conv for name, conv in model.named_modules() if isinstance(conv, nn.Conv2d)}
    return grow_channels(model.state_dict(), source, readers, "prior")


# ----------------------------------------------------------------------------- training objective (Eq 10-14)


def training_mask(tokens: torch.Tensor, num_codes: int, diffusion_steps: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward process at a random time: t ~ U{1..T_d}; each token masked independently w.p. t/T_d.

    This is q(h_t | h_0) of Eq 10-12: with gamma_t = 1/(T_d - t + 1) the product of the per-step
    keep probabilities prod_{s<=t} (1 - gamma_s) = (T_d - t)/T_d, so P(masked at t) = t/T_d.
    Returns (t (B,), masked (B, H, W) bool, h_t with [MASK] = num_codes).
    """
    t = torch.randint(1, diffusion_steps + 1, (tokens.shape[0],), generator=generator)
    return (t, *mask_at(tokens, t, num_codes, diffusion_steps, generator))


def mask_at(tokens: torch.Tensor, t: torch.Tensor, num_codes: int, diffusion_steps: int,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q(h_t | h_0) at given times t (B,): each token masked independently w.p. t/T_d (Eq 10-12).
    Returns (masked (B, H, W) bool, h_t with [MASK] = num_codes)."""
    rate = (t.float() / diffusion_steps).view(-1, 1, 1)
    masked = torch.rand(tokens.shape, generator=generator) < rate
    return masked, tokens.masked_fill(masked, num_codes)


def loss_weight(t: torch.Tensor, diffusion_steps: int, kind: str = "reweighted") -> torch.Tensor:
    """Per-sample weight of sum_masked CE / (ln 2 * N) (Unleashing-Transformers convention).

    "elbo" (Eq 14): 1/t times 1/p(t) = T_d/t;  "reweighted" (the authors' code): 1 - t/T_d.
    """
    t = t.float()
    if kind == "elbo":
        return diffusion_steps / t
    if kind == "reweighted":
        return 1.0 - t / diffusion_steps
    raise ValueError(f"unknown loss weighting {kind!r} (elbo or reweighted)")


def diffusion_loss(logits: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                   diffusion_steps: int, kind: str = "reweighted") -> torch.Tensor:
    """Mean over the batch of weight(t) * sum_{masked} -log p(h_0 | h_t) / (ln 2 * N); logits (B, K, H, W)."""
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")  # (B, H, W)
    return _weighted_masked_mean(ce, masked, t, diffusion_steps, kind)


def _weighted_masked_mean(per_position: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, diffusion_steps: int,
                          kind: str) -> torch.Tensor:
    """Batch mean of weight(t) * sum over the masked positions of ``per_position`` (B, H, W) / (ln 2 * N)."""
    per_sample = (per_position * masked).flatten(1).sum(1) / (math.log(2) * masked[0].numel())
    return (loss_weight(t, diffusion_steps, kind) * per_sample).mean()


@dataclass
class HeldOutCrossEntropy:
    """The prior's cross-entropy on held-out token grids, per diffusion time t = 1..T_d (index t - 1).

    ``bits``: the sum over grids and masked positions of -log2 p(h_0 | h_t); ``masked``: how many positions were
    masked; ``grids``: how many grids were scored (one time each); ``tokens_per_grid``: N = H W.
    """

    bits: torch.Tensor  # (T_d,)
    masked: torch.Tensor  # (T_d,)
    grids: int
    tokens_per_grid: int

    def per_masked_token(self) -> torch.Tensor:
        """Bits per masked token at each t (T_d,): where the prior is unsure, by how much of the grid is hidden
        (NaN at a t where no position happened to be masked)."""
        return torch.where(self.masked > 0, self.bits / self.masked.clamp_min(1), math.nan)

    def elbo_bits_per_token(self) -> float:
        """Eq 14's bound on -log2 p(h_0) per token, the mean over grids of (T_d / t) sum_masked CE / N."""
        steps = self.bits.shape[0]
        weight = loss_weight(torch.arange(1, steps + 1), steps, "elbo").double()
        return float((weight * self.bits).sum() / (self.tokens_per_grid * self.grids))


@torch.no_grad()
def held_out_cross_entropy(model: SDID, tokens: torch.Tensor, batch_size: int = 256,
                           seed: int = 0) -> HeldOutCrossEntropy:
    """Score the prior on held-out token grids (B, H, W), one masked copy per grid, by diffusion time.

    The times are stratified, t_i = 1 + (i mod T_d), instead of drawn, so every t is seen equally often and the
    estimate does not move with how t falls; the masks (Eq 10-12, P(masked) = t/T_d) come from a generator
    seeded with ``seed``, so the numbers are reproducible.
    """
    c = model.cfg
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    bits = torch.zeros(c.diffusion_steps, dtype=torch.float64)
    masked_count = torch.zeros(c.diffusion_steps, dtype=torch.float64)
    for start in range(0, tokens.shape[0], batch_size):
        h0 = tokens[start:start + batch_size].long()
        t = 1 + (torch.arange(start, start + h0.shape[0]) % c.diffusion_steps)
        masked, h_t = mask_at(h0, t, c.num_codes, c.diffusion_steps, generator)
        ce = F.cross_entropy(model(h_t, t), h0, reduction="none") / math.log(2)  # (B, H, W) bits
        bits.index_add_(0, t - 1, (ce * masked).flatten(1).sum(1).double())
        masked_count.index_add_(0, t - 1, masked.flatten(1).sum(1).double())
    return HeldOutCrossEntropy(bits, masked_count, tokens.shape[0], tokens[0].numel())


def elbo_bits_per_token(model: SDID, tokens: torch.Tensor, batch_size: int = 256, seed: int = 0) -> float:
    """Upper bound on -log2 p(h_0) per token of held-out token grids (B, H, W): Eq 14 with its ELBO weight,

        -log p(h_0) <= sum_{t=1}^{T_d} E_q(h_t|h_0) [ (1/t) sum_{masked} -log p(h_0 | h_t) ],

    estimated by :func:`held_out_cross_entropy` (one seeded masked copy per grid, stratified times).
    The prior's held-out likelihood: what selects its training length without looking at any sample metric.
    """
    return held_out_cross_entropy(model, tokens, batch_size, seed).elbo_bits_per_token()


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                      diffusion_steps: int, kind: str = "reweighted") -> torch.Tensor:
    """Knowledge distillation from a trained prior: KL(p_teacher(h_0 | h_t) || p(h_0 | h_t)) at the masked
    positions, weighted and normalised as :func:`diffusion_loss` (Eq 14 with the teacher's distribution as the
    target).  The teacher's full distribution carries what one sampled token cannot: how likely each other code
    is, which a small, sparse student cannot learn from one-hot targets in few epochs."""
    log_p_teacher = F.log_softmax(teacher_logits, 1)
    kl = (log_p_teacher.exp() * (log_p_teacher - F.log_softmax(logits, 1))).sum(1)  # (B, H, W)
    return _weighted_masked_mean(kl, masked, t, diffusion_steps, kind)
