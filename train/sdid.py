"""SDID: a fully spiking denoiser for absorbing-state diffusion over the 7x7 token grid (stage 2).

Input spikes (the same at each of T SNN steps): one-hot token channels incl. [MASK] and a one-hot
time channel (see :func:`spkdiff.host.sdid_input_spikes`).  Body: Conv3x3+BN+LIF stem, residual
blocks whose skip is a *sum of synaptic inputs* into the block's second LIF (two NIR edges into one
node), and a 1x1 conv read-out into non-spiking integrators (NIR ``I``): the logits are the time
mean of the read-out currents, i.e. the integrator's final state / T (the authors' "time-mean of
the last layer's output").  Softmax and sampling are host-side (spkdiff.host.MaskSampler).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from spkdiff.host import sdid_input_spikes
from spkdiff.train.snn import LIF, ConvBN, LIFParams, SpikingConv, merge_time, split_time


@dataclass
class SDIDConfig:
    num_codes: int = 128
    grid: int = 7
    channels: int = 128
    blocks: int = 3
    time_steps: int = 4
    diffusion_steps: int = 49
    time_bins: int = 7

    @classmethod
    def from_dict(cls, d: dict) -> SDIDConfig:
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def in_channels(self) -> int:
        return self.num_codes + 1 + self.time_bins


class ResidualBlock(nn.Module):
    """s -> LIF(ConvBN(LIF(ConvBN(s))) + s): the skip adds the input spikes to the second LIF's current."""

    def __init__(self, channels: int, lif: LIFParams):
        super().__init__()
        self.first = SpikingConv(nn.Conv2d(channels, channels, 3, 1, 1), lif)
        self.second = ConvBN(nn.Conv2d(channels, channels, 3, 1, 1))
        self.neuron = LIF(lif)

    def forward(self, s: torch.Tensor, steps: int) -> torch.Tensor:
        h = self.first(s, steps)
        return self.neuron(split_time(self.second(merge_time(h)), steps) + s)


class SDID(nn.Module):
    def __init__(self, cfg: SDIDConfig):
        super().__init__()
        self.cfg = cfg
        lif = LIFParams()
        self.stem = SpikingConv(nn.Conv2d(cfg.in_channels, cfg.channels, 3, 1, 1), lif)
        self.blocks = nn.ModuleList([ResidualBlock(cfg.channels, lif) for _ in range(cfg.blocks)])
        self.readout = nn.Conv2d(cfg.channels, cfg.num_codes, 1)

    def input_spikes(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return sdid_input_spikes(tokens, t, c.num_codes, c.diffusion_steps, c.time_bins)

    def forward_spikes(self, x: torch.Tensor) -> torch.Tensor:
        """Input spikes (B, C_in, H, W), constant over time -> logits (B, K, H, W)."""
        steps = self.cfg.time_steps
        s = self.stem(x, steps, constant_input=True)
        for block in self.blocks:
            s = block(s, steps)
        # Integrator read-out: v_T = sum_t (W s_t + b); logits = v_T / T.  Summing spikes first is the
        # same linear map, computed once.
        return self.readout(s.mean(0))

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward_spikes(self.input_spikes(tokens, t))
