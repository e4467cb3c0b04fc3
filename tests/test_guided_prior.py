"""bench/prior/guided_prior.py: autoguidance of one SDID by another, merged exactly into one SDID."""

from __future__ import annotations

import pytest
import torch
from conftest import load_bench_script

from spkdiff.errors import SpkdiffError
from spkdiff.train.sdid import SDID, SDIDConfig


@pytest.fixture(scope="module")
def guided():
    return load_bench_script("prior/guided_prior.py")


def _prior(channels: int, seed: int, **overrides) -> SDID:
    """A small random SDID in eval mode with trained-looking BatchNorm statistics (so eval mode tests them)."""
    torch.manual_seed(seed)
    cfg = dict(num_codes=16, grid=7, channels=channels, blocks=2, time_steps=2, diffusion_steps=49, time_bins=7)
    model = SDID(SDIDConfig(**(cfg | overrides)))
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):  # strong enough synapses that every layer spikes
            m.weight.data.mul_(8.0)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 2.0)
    model.readout.weight.data.mul_(30.0)  # logits of a trained prior's size, so the comparison has a scale
    return model.eval()


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_merged_prior_gives_the_guided_logits(guided, weight: float) -> None:
    """W * good + (1 - W) * bad, for priors of different widths; no synapse joins the two halves."""
    good, bad = _prior(12, 0), _prior(8, 1)
    merged = SDID(guided.guided_config(good.cfg, bad.cfg)).eval()
    merged.load_state_dict(guided.guided_weights(good, bad, weight))
    assert merged.cfg.channels == 20
    assert torch.equal(merged.blocks[0].first.synapse[0].weight[:12, 12:], torch.zeros(12, 8, 3, 3))
    assert torch.equal(merged.blocks[1].second[0].weight[12:, :12], torch.zeros(8, 12, 3, 3))
    tokens = torch.randint(0, 17, (6, 7, 7))
    t = torch.randint(1, 50, (6,))
    spikes: list[torch.Tensor] = []
    with torch.no_grad():
        expected = weight * good(tokens, t) + (1 - weight) * bad(tokens, t)
        got = merged(tokens, t, spikes)
    assert all(s[:, :, :12].sum() > 0 and s[:, :, 12:].sum() > 0 for s in spikes)  # both halves are alive
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_priors_that_differ_beyond_width_are_refused(guided) -> None:
    good = _prior(12, 0)
    with pytest.raises(SpkdiffError, match="differ in time_steps"):
        guided.guided_config(good.cfg, _prior(8, 1, time_steps=1).cfg)
    with pytest.raises(SpkdiffError, match="LIF constants"):
        guided.guided_config(good.cfg, _prior(8, 1, neuron={"tau": 3.0}).cfg)
