"""Stage 2: absorbing-state forward process (Eq 10-12), loss weights (Eq 14), samplers, deployability."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_bench_script
from torch import nn

from spkdiff.cli import main
from spkdiff.errors import SpkdiffError
from spkdiff.host import MaskSampler, sdid_input_spikes
from spkdiff.train.sdid import (
    SDID,
    ResidualBlock,
    SDIDConfig,
    diffusion_loss,
    elbo_bits_per_token,
    held_out_cross_entropy,
    loss_weight,
    mask_at,
    training_mask,
)
from spkdiff.train.snn import LIF, ConvBN, SpikingConv

K, TD = 16, 49


def test_eq_12_schedule_gives_mask_rate_t_over_td():
    # Product of keep probabilities (1 - gamma_s), gamma_s = 1/(T_d - s + 1), equals (T_d - t)/T_d.
    for t in (1, 7, 25, 49):
        keep = math.prod(1 - 1 / (TD - s + 1) for s in range(1, t + 1))
        assert keep == pytest.approx((TD - t) / TD, abs=1e-12)
    # The training mask draws t uniformly and masks each token with probability t/T_d.
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (20000, 7, 7), generator=gen)
    t, masked, h_t = training_mask(tokens, K, TD, gen)
    assert t.min() == 1 and t.max() == TD
    counts = torch.bincount(t, minlength=TD + 1)[1:].float()
    assert (counts / counts.mean() - 1).abs().max() < 0.25
    rate_by_t = [(masked[t == s].float().mean().item(), s / TD) for s in (5, 25, 45)]
    for observed, expected in rate_by_t:
        assert observed == pytest.approx(expected, abs=0.03)
    assert torch.equal(h_t == K, masked) and torch.equal(h_t[~masked], tokens[~masked])


def test_loss_weighting_by_hand():
    # Two samples, 2x2 grid (N = 4), K = 2 codes, uniform logits: CE = ln 2 per masked token.
    logits = torch.zeros(2, 2, 2, 2)
    target = torch.zeros(2, 2, 2, dtype=torch.long)
    masked = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 0]]], dtype=torch.bool)
    t = torch.tensor([10, 40])
    # Per sample: sum_masked CE / (ln2 * N) = masked_count / 4.
    per = torch.tensor([1 / 4, 3 / 4])
    rew = diffusion_loss(logits, target, masked, t, TD, "reweighted")
    assert rew.item() == pytest.approx(((1 - t / TD) * per).mean().item(), rel=1e-6)
    elbo = diffusion_loss(logits, target, masked, t, TD, "elbo")
    assert elbo.item() == pytest.approx(((TD / t) * per).mean().item(), rel=1e-6)
    assert loss_weight(torch.tensor([49]), TD, "reweighted").item() == 0.0
    with pytest.raises(ValueError):
        loss_weight(t, TD, "other")


def test_input_spikes_are_binary_one_hot():
    tokens = torch.tensor([[[0, K], [3, 5]]])
    x = sdid_input_spikes(tokens, torch.tensor([49]), K, TD, 7)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x[:, : K + 1].sum(1), torch.ones(1, 2, 2))  # exactly one token channel
    assert x[0, K + 1 + 6].sum() == 4 and x[0, K + 1: K + 7].sum() == 0  # t = T_d -> last time bin


def _tiny_sdid() -> SDID:
    torch.manual_seed(0)
    return SDID(SDIDConfig(num_codes=K, channels=8, blocks=1, time_steps=2)).eval()


@pytest.mark.parametrize("method,steps", [("paper", None), ("confidence", 6), ("coarse", 6)])
def test_samples_never_masked_and_deterministic(method: str, steps: int | None):
    sdid = _tiny_sdid()
    sampler = MaskSampler(K, TD, steps, method, temperature=1.0)
    with torch.no_grad():
        a = sampler.sample(sdid, 5, (7, 7), torch.Generator().manual_seed(1))
        b = sampler.sample(sdid, 5, (7, 7), torch.Generator().manual_seed(1))
        c = sampler.sample(sdid, 5, (7, 7), torch.Generator().manual_seed(2))
    assert (a < K).all() and a.min() >= 0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_remasking_keeps_the_schedule_and_redraws_earlier_tokens():
    """ReMDM-cap (remask = eta): the masked fraction after each step follows the 1/t schedule's (step_t - 1)/S in
    expectation, a token unmasked before a step is masked again w.p. sigma = min(eta, (1 - alpha_s)/alpha_t), the
    last step leaves nothing masked, and eta = 0 is the 1/t rule draw for draw."""
    steps, eta, batch, grid = 12, 0.1, 400, (7, 7)
    sampler = MaskSampler(K, TD, steps, "paper", remask=eta)
    state, generator = sampler.start(batch, grid), torch.Generator().manual_seed(0)
    remasked_total = 0
    while state.i < steps:
        step_t = steps - state.i
        before = state.masked.clone()
        sampler.update(state, torch.randn(batch, K, *grid, generator=generator), generator)
        assert torch.equal(state.tokens == K, state.masked)
        expected = (step_t - 1) / steps
        assert abs(state.masked.float().mean().item() - expected) < 0.02
        p_unmask, sigma = sampler.remask_probabilities(step_t)
        again = (~before & state.masked).sum().item()
        if (~before).sum() > 2000:
            assert abs(again / (~before).sum().item() - sigma) < 0.02
        remasked_total += again
    assert remasked_total > 0 and not state.masked.any()
    assert sampler.remask_probabilities(1) == (1.0, 0.0)  # the last step unmasks all, re-masks none
    plain, zero = MaskSampler(K, TD, steps, "paper"), MaskSampler(K, TD, steps, "paper", remask=0.0)
    sdid = _tiny_sdid()
    with torch.no_grad():
        assert torch.equal(plain.sample(sdid, 3, grid, torch.Generator().manual_seed(4)),
                           zero.sample(sdid, 3, grid, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="paper sampler only"):
        MaskSampler(K, TD, steps, "confidence", remask=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MaskSampler(K, TD, steps, "paper", remask=1.5)


def test_remask_setting_belongs_to_the_default_method():
    """A run's remasking rate applies to its own method; another method, or an explicit --remask, overrides it."""
    from spkdiff.errors import SpkdiffError
    from spkdiff.generation import resolve_sampler_settings

    run = {"method": "paper", "steps": 24, "temperature": 0.8, "remask": 0.05}
    assert resolve_sampler_settings(run).remask == 0.05
    assert resolve_sampler_settings(run, remask=0.0).remask == 0.0
    assert resolve_sampler_settings(run, method="coarse").remask == 0.0
    with pytest.raises(SpkdiffError, match="paper sampler only"):
        resolve_sampler_settings(run, method="confidence", remask=0.1)


def test_confidence_sampler_calls_denoiser_steps_times():
    calls = []

    def denoise(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(((tokens == K).sum().item(), t[0].item()))
        return torch.zeros(tokens.shape[0], K, 7, 7)

    MaskSampler(K, TD, 8, "confidence").sample(denoise, 2, (7, 7), torch.Generator().manual_seed(0))
    assert len(calls) == 8
    masked_counts = [c[0] for c in calls]
    assert masked_counts[0] == 2 * 49 and masked_counts == sorted(masked_counts, reverse=True)
    assert calls[0][1] == TD and calls[-1][1] == math.ceil(TD / 8)


def test_coarse_sampler_fixes_the_sub_lattice_first_and_never_draws_neighbours_together():
    grid, steps = (14, 14), 12
    sampler = MaskSampler(K, TD, steps, "coarse")
    state = sampler.start(3, grid)
    generator = torch.Generator().manual_seed(0)
    unmasked_at = torch.full((3, *grid), -1)
    while state.i < steps:
        before = state.masked.clone()
        logits = torch.randn(3, K, *grid, generator=generator)
        sampler.update(state, logits, generator)
        unmasked_at[before & ~state.masked] = state.i - 1
    assert (unmasked_at >= 0).all() and not state.masked.any() and (state.tokens < K).all()
    # the paper's pace: round(N (i + 1) / S) tokens unmasked after step i, in every sample
    counts = torch.stack([(unmasked_at <= i).flatten(1).sum(1) for i in range(steps)], 1)
    assert counts.tolist() == [[round(196 * (i + 1) / steps) for i in range(steps)]] * 3
    # no two neighbours (4-connected) drawn in the same step
    assert not (unmasked_at[:, 1:] == unmasked_at[:, :-1]).any()
    assert not (unmasked_at[:, :, 1:] == unmasked_at[:, :, :-1]).any()
    # phase order: (even, even), then (odd, odd), then (even, odd), then (odd, even)
    phases = [unmasked_at[:, r::2, c::2] for r, c in ((0, 0), (1, 1), (0, 1), (1, 0))]
    for earlier, later in zip(phases, phases[1:]):
        assert earlier.amax() <= later.amin()
    assert (phases[0] <= 2).all()  # 49 of 196 tokens: the coarse layout within the first quarter of the steps
    # within a phase the order is random: each sample has its own
    assert not torch.equal(unmasked_at[0], unmasked_at[1])


def _positions_reached_from_a_corner(dilations: list[int] | None) -> int:
    """Positions of a 14x14 grid whose logits change when only the far corner's token changes."""
    torch.manual_seed(0)
    cfg = SDIDConfig(num_codes=K, grid=14, channels=32, blocks=3, time_steps=2, dilations=dilations,
                     neuron={"v_threshold": 0.05})  # a low threshold so that the untrained layers fire
    sdid = SDID(cfg).eval()
    tokens = torch.randint(0, K + 1, (32, 14, 14), generator=torch.Generator().manual_seed(1))
    moved = tokens.clone()
    moved[:, 13, 13] = (moved[:, 13, 13] + 5) % K
    t = torch.full((32,), 10)
    with torch.no_grad():
        change = (sdid(tokens, t) - sdid(moved, t)).abs().amax((0, 1))
    return int((change > 0).sum())


def test_dilated_blocks_see_the_whole_fine_grid():
    """Seven 3x3 convs reach 7 positions each way (8x8 of the grid from a corner); dilations (1, 2, 4) reach
    15, the whole 14x14 grid, with the same synapses per spike."""
    assert _positions_reached_from_a_corner(None) == 8 * 8
    assert _positions_reached_from_a_corner([1, 2, 4]) == 14 * 14
    plain, dilated = (SDID(SDIDConfig(num_codes=K, grid=14, channels=8, blocks=3, dilations=d))
                      for d in (None, [1, 2, 4]))
    assert [f.max() for f in dilated.fan_outs()] == [f.max() for f in plain.fan_outs()]
    assert dilated.dense_macs() < plain.dense_macs()  # the dilated taps that fall off the grid are not MACs


@pytest.mark.parametrize("dilations,match", [([1, 2], "one value per block"),
                                             ([1, 0, 2], r"dilations\[1\] = 0 is outside"),
                                             ([1, True, 2], r"dilations\[1\] must be a integer"),
                                             (5, "dilations must be a list")])
def test_bad_dilations_are_one_line(dilations: list[int], match: str):
    with pytest.raises(SpkdiffError, match=match) as err:
        SDIDConfig(blocks=3, dilations=dilations)
    assert "\n" not in str(err.value)


def test_heldout_elbo_of_a_uniform_prior_is_log2_k_bits():
    """A prior that knows nothing (zero read-out: uniform logits) costs log2 K bits per token: the bound's
    weight T_d / t undoes the masking rate t / T_d, so the estimate is log2 K up to the masks' noise."""
    sdid = _tiny_sdid()
    nn.init.zeros_(sdid.readout.weight)
    nn.init.zeros_(sdid.readout.bias)
    tokens = torch.randint(0, K, (2000, 7, 7), generator=torch.Generator().manual_seed(0))
    bits = elbo_bits_per_token(sdid, tokens, batch_size=500, seed=0)
    assert bits == pytest.approx(math.log2(K), rel=0.03)
    assert elbo_bits_per_token(sdid, tokens, batch_size=333, seed=0) == pytest.approx(bits, rel=1e-6)  # seeded
    assert elbo_bits_per_token(sdid, tokens, batch_size=500, seed=1) != bits


def test_heldout_cross_entropy_by_time_adds_up_to_the_elbo():
    """The per-time scores are the bound's terms: weighting each t's masked-token bits by T_d / t and averaging
    over grids gives Eq 14's estimate, batch by batch as diffusion_loss computes it with the "elbo" weight."""
    sdid = _tiny_sdid()
    tokens = torch.randint(0, K, (300, 7, 7), generator=torch.Generator().manual_seed(2))
    scores = held_out_cross_entropy(sdid, tokens, batch_size=128, seed=3)
    steps = sdid.cfg.diffusion_steps
    assert scores.bits.shape == scores.masked.shape == (steps,)
    assert scores.grids == 300 and scores.tokens_per_grid == 49

    generator, total = torch.Generator().manual_seed(3), 0.0
    with torch.no_grad():
        for start in range(0, 300, 128):
            h0 = tokens[start:start + 128]
            t = 1 + (torch.arange(start, start + h0.shape[0]) % steps)
            masked, h_t = mask_at(h0, t, K, steps, generator)
            total += float(diffusion_loss(sdid(h_t, t), h0, masked, t, steps, "elbo")) * h0.shape[0]
    assert scores.elbo_bits_per_token() == pytest.approx(total / 300, rel=1e-5)
    assert elbo_bits_per_token(sdid, tokens, batch_size=128, seed=3) == scores.elbo_bits_per_token()


def test_heldout_cross_entropy_of_a_uniform_prior_is_log2_k_at_every_time():
    sdid = _tiny_sdid()
    nn.init.zeros_(sdid.readout.weight)
    nn.init.zeros_(sdid.readout.bias)
    tokens = torch.randint(0, K, (200, 7, 7), generator=torch.Generator().manual_seed(0))
    scores = held_out_cross_entropy(sdid, tokens, batch_size=100)
    per_token, seen = scores.per_masked_token(), scores.masked > 0
    assert seen.sum() >= 40 and per_token[~seen].isnan().all()  # a t with no masked position has no score
    assert torch.allclose(per_token[seen], torch.full_like(per_token[seen], math.log2(K)), rtol=1e-5)


def test_heldout_elbo_rewards_the_prior_that_predicts_the_tokens():
    """A read-out that puts its mass on the true tokens scores far below one that spreads it evenly."""
    sdid = _tiny_sdid()
    tokens = torch.randint(0, K, (300, 7, 7), generator=torch.Generator().manual_seed(1))

    class KnowsTheTokens(nn.Module):  # one batch of all the grids, so it can answer from the truth
        cfg = sdid.cfg

        def forward(self, h_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return 8.0 * F.one_hot(tokens, K).permute(0, 3, 1, 2).float()

    assert elbo_bits_per_token(KnowsTheTokens(), tokens, batch_size=300) < 0.01
    assert elbo_bits_per_token(sdid, tokens, batch_size=300) > 1.0


def test_sdid_has_only_deployable_layers():
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.Identity, LIF, ConvBN, SpikingConv, ResidualBlock, nn.ModuleList, SDID)
    for name, module in _tiny_sdid().named_modules():
        assert isinstance(module, allowed), f"{name}: {type(module).__name__} is not deployable"
    assert not any(isinstance(m, nn.MaxPool2d | nn.ConvTranspose2d) for m in _tiny_sdid().modules())


def test_train_and_sample_cli(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert (tiny_run / "sdid.safetensors").exists() and (tiny_run / "tokens_train.npy").exists()
    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(tiny_run), "--n", "6", "--steps", "4", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 denoiser calls" in printed and "images/s" in printed
    tokens = np.load(out.with_suffix(".tokens.npy"))
    assert tokens.shape == (6, 7, 7) and tokens.max() < 16
    out2 = tmp_path / "grid2.png"
    assert main(["sample", "--run", str(tiny_run), "--n", "6", "--steps", "4", "--seed", "3", "--out", str(out2)]) == 0
    assert np.array_equal(tokens, np.load(out2.with_suffix(".tokens.npy")))
    assert out.read_bytes() == out2.read_bytes()


def test_token_statistics_divergences_by_hand():
    """bench/prior/token_statistics.py: JS in bits is 0 for equal histograms and 1 for disjoint ones; a grid of
    one repeated code is far from varied grids in layout and in pairs."""
    stats = load_bench_script("prior/token_statistics.py")
    assert float(stats.js_bits(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 6.0]))) == pytest.approx(0.0, abs=1e-7)
    assert float(stats.js_bits(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0]))) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    varied, also_varied = torch.randint(0, K, (2, 400, 7, 7), generator=g)
    collapsed = torch.zeros(400, 7, 7, dtype=torch.long)
    assert stats.layout_divergence(varied, also_varied, K) < 0.1 < stats.layout_divergence(varied, collapsed, K)
    assert stats.pair_divergence(varied, also_varied, K) < 0.2 < stats.pair_divergence(varied, collapsed, K)


def test_token_statistics_seed_mean():
    """bench/prior/token_statistics.py's mean over seeds: per-score mean and sample std, the seeds listed, the
    setting's keys kept and the per-seed ones dropped."""
    stats = load_bench_script("prior/token_statistics.py")
    base = {"temperature": 0.9, "steps": 49, "method": "paper", "remask": 0.0, "latent_precision": 0.5,
            "latent_recall": 0.8, "pixel_precision": 0.7, "pixel_recall": 0.6}
    rows = [{**base, "layout": 0.04, "pairs": 0.05, "sum": 0.09, "seed": 0, "seconds": 2.0},
            {**base, "layout": 0.02, "pairs": 0.07, "sum": 0.09, "pixel_precision": 0.5, "seed": 1, "seconds": 3.0}]
    mean = stats.seed_mean(rows)
    assert mean["layout"] == pytest.approx(0.03) and mean["layout_std"] == pytest.approx(0.02 / 2 ** 0.5)
    assert mean["sum"] == pytest.approx(0.09) and mean["sum_std"] == pytest.approx(0.0, abs=1e-12)
    assert mean["pixel_precision"] == pytest.approx(0.6) and mean["pixel_recall_std"] == 0.0
    assert mean["seeds"] == [0, 1] and mean["seconds"] == 5.0 and "seed" not in mean
    assert (mean["temperature"], mean["steps"], mean["method"], mean["remask"]) == (0.9, 49, "paper", 0.0)


def test_token_statistics_precision_recall_see_a_collapsed_sampler():
    """The latent and pixel precision / recall of bench/prior/token_statistics.py: a sample set equal to the
    reference scores 1 / 1; one that repeats a single reference item is precise but recalls almost nothing."""
    stats = load_bench_script("prior/token_statistics.py")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (200, 7, 7), generator=g)
    codebook = torch.randn(K, 4, generator=g)
    collapsed = tokens[:1].expand(200, -1, -1)
    assert stats.latent_precision_recall(tokens, tokens, codebook) == (1.0, 1.0)
    precision, recall = stats.latent_precision_recall(tokens, collapsed, codebook)
    assert precision == 1.0 and recall < 0.05
    images = torch.rand(200, 1, 28, 28, generator=g)
    assert stats.pixel_precision_recall(images, images) == (1.0, 1.0)
    precision, recall = stats.pixel_precision_recall(images, images[:1].expand(200, -1, -1, -1))
    assert precision == 1.0 and recall < 0.05
