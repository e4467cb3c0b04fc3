"""The SDID's SOP regulariser (``sop_weight``): fan-out-weighted spikes, and it lowers the spike count."""

from __future__ import annotations

import pytest
import torch

from spkdiff.train.loop import TrainSettings, _sdid_step
from spkdiff.train.sdid import SDID, SDIDConfig


def _cfg() -> SDIDConfig:
    return SDIDConfig(num_codes=16, channels=16, blocks=1, time_steps=2, diffusion_steps=49, time_bins=7)


def test_fan_outs_and_dense_macs_by_hand():
    """3x3 same conv on 7x7: an input reaches 4 (corner), 6 (edge) or 9 outputs per output channel."""
    m = SDID(_cfg())
    block_in, hidden, last = m.fan_outs()
    assert (block_in[0, 0].item(), block_in[0, 3].item(), block_in[3, 3].item()) == (4 * 16 + 1, 6 * 16 + 1,
                                                                                      9 * 16 + 1)
    assert hidden[3, 3].item() == 9 * 16 and bool((last == 16).all())
    taps = 4 * 4 + 20 * 6 + 25 * 9  # valid taps of a 3x3 same conv on 7x7
    assert m.dense_macs() == taps * (m.cfg.in_channels * 16 + 16 * 16 * 2) + 49 * 16 * 16
    spikes = [torch.zeros(2, 3, 16, 7, 7) for _ in range(3)]
    spikes[1][0, 0, 0, 3, 3] = 1  # one hidden spike: 144 synapses, for 1 of 3 samples
    assert m.sop_fraction(spikes).item() == pytest.approx(144 / 3 / m.dense_macs())


def _train(sop_weight: float, steps: int = 25) -> float:
    """A tiny stage-2 run through the training step; returns the SOP fraction on a held-out batch."""
    torch.manual_seed(0)
    model = SDID(_cfg())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    step = _sdid_step(TrainSettings(sop_weight=sop_weight))
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, 16, (32, 7, 7), generator=torch.Generator().manual_seed(2))
    for i in range(steps):
        out = step(model, data, gen, i)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        tokens = torch.randint(0, 17, (16, 7, 7), generator=torch.Generator().manual_seed(3))
        spikes: list[torch.Tensor] = []
        model(tokens, torch.full((16,), 25), spikes)
        return float(model.sop_fraction(spikes))


def test_regulariser_lowers_sops():
    base, regularised = _train(0.0), _train(100.0)
    assert regularised < 0.7 * base, (base, regularised)
