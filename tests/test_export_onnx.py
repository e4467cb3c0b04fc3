"""``spkdiff-export --target onnx`` on the tiny-trained run: checker, and onnxruntime against torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from spkdiff.data import load_tensor
from spkdiff.export.onnx_models import SamplerStepCoarse, SamplerStepConfidence, SamplerStepRemask
from spkdiff.export.onnx_target import export_graph, onnx_graphs, run_onnx
from spkdiff.host import MaskSampler, leaky_sum, unmask_schedule
from spkdiff.train.snn import merge_time, split_time

FILES = ["codebook_lookup.onnx", "encoder.onnx", "generator.onnx", "manifest.json", "sampler_step.onnx", "sdid.onnx"]


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    return tiny_export("onnx")


@pytest.fixture(scope="module")
def images(shared_data_root: Path) -> torch.Tensor:
    x, _ = load_tensor("mnist", shared_data_root, "test", limit=10)  # not the export's example batch size
    return x - 0.5


def test_files_manifest_and_checker(exported: Path):
    assert sorted(p.name for p in exported.iterdir()) == FILES
    m = json.loads((exported / "manifest.json").read_text())
    assert m["target"] == "onnx"
    for stage in ("encoder", "generator", "sdid"):
        assert m["stages"][stage]["file"] == f"{stage}.onnx" and m["stages"][stage]["unrolled_over_time"]
        assert m["stages"][stage]["inputs"][next(iter(m["stages"][stage]["inputs"]))]["shape"][0] == "B"
    assert m["host"]["codebook_lookup"]["file"] == "codebook_lookup.onnx"
    assert m["host"]["mask_sampler"]["file"] == "sampler_step.onnx"
    for name in FILES[:-1]:
        if name != "manifest.json":
            onnx.checker.check_model(onnx.load(str(exported / name)), full_check=True)


def test_stages_match_torch_on_real_images(exported: Path, models, images: torch.Tensor):
    vq, sdid = models
    with torch.no_grad():
        spikes = vq.encode_spikes(images)
        tokens, z_q = vq.quantize(vq.features(spikes))
        s = vq.asg_spikes(z_q)
        for layer in vq.decoder:
            s = layer(s, vq.steps)
        v_t = leaky_sum(split_time(vq.readout(merge_time(s)), vq.steps), vq.cfg.readout_decay)
        t = torch.full((images.shape[0],), 20)
        sdid_in = sdid.input_spikes(tokens, t)
        logits = sdid.forward_spikes(sdid_in)
    (got_spikes,) = run_onnx(exported / "encoder.onnx", {"image": images})
    assert np.array_equal(got_spikes, spikes.numpy())
    got_tokens, got_zq = run_onnx(exported / "codebook_lookup.onnx", {"spikes": spikes})
    assert np.array_equal(got_tokens, tokens.numpy()) and np.array_equal(got_zq, z_q.numpy())
    readout, image = run_onnx(exported / "generator.onnx", {"z_q": z_q})
    np.testing.assert_allclose(readout, v_t.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(image, torch.tanh(v_t).numpy(), rtol=0, atol=1e-5)
    (got_logits,) = run_onnx(exported / "sdid.onnx", {"spikes": sdid_in})
    np.testing.assert_allclose(got_logits, logits.numpy(), rtol=0, atol=1e-5)


def test_sampler_step_matches_torch_and_runs_a_full_sampling_loop(exported: Path, models):
    """The host step in ONNX equals the torch module, and ONNX sdid + sampler steps unmask every token
    following the cosine schedule."""
    _, sdid = models
    k, grid, batch = sdid.cfg.num_codes, sdid.cfg.grid, 3
    sampler = MaskSampler(k, sdid.cfg.diffusion_steps, steps=8, method="confidence")
    step = SamplerStepConfidence(1.0)
    remaining = unmask_schedule(sampler.steps, grid * grid, "cosine")
    g = torch.Generator().manual_seed(0)
    tokens = torch.full((batch, grid, grid), k, dtype=torch.long)
    masked = torch.ones(batch, grid, grid, dtype=torch.bool)
    for i, step_t in enumerate(range(sampler.steps, 0, -1)):
        t = torch.full((batch,), sampler.model_time(step_t))
        (logits,) = run_onnx(exported / "sdid.onnx", {"spikes": sdid.input_spikes(tokens, t)})
        inputs = {"logits": torch.from_numpy(logits), "tokens": tokens, "masked": masked,
                  "u": torch.rand(batch, grid, grid, generator=g), "n_keep_masked": torch.full((batch,), remaining[i])}
        new_tokens, new_masked = run_onnx(exported / "sampler_step.onnx", inputs)
        ref_tokens, ref_masked = step(*inputs.values())
        assert np.array_equal(new_tokens, ref_tokens.numpy()) and np.array_equal(new_masked, ref_masked.numpy())
        tokens, masked = torch.from_numpy(new_tokens), torch.from_numpy(new_masked)
        assert (masked.flatten(1).sum(1) == remaining[i]).all()
        assert ((tokens == k) == masked).all()
    assert not masked.any() and int(tokens.max()) < k


def test_inverse_cdf_draw_follows_the_softmax():
    """With one dominant logit the draw is that code; with equal logits u picks the code floor(u K)."""
    step = SamplerStepConfidence(1.0)
    logits = torch.full((1, 4, 1, 2), -50.0)
    logits[0, 2, 0, 0] = logits[0, 1, 0, 1] = 50.0
    tokens = torch.full((1, 1, 2), 4)
    out, masked = step(logits, tokens, torch.ones(1, 1, 2, dtype=torch.bool), torch.rand(1, 1, 2), torch.tensor([0]))
    assert out.tolist() == [[[2, 1]]] and not masked.any()
    out, _ = step(torch.zeros(1, 4, 1, 2), tokens, torch.ones(1, 1, 2, dtype=torch.bool),
                  torch.tensor([[[0.1, 0.6]]]), torch.tensor([0]))
    assert out.tolist() == [[[0, 2]]]


def test_coarse_sampler_step_exports_and_unmasks_as_the_host_sampler(models, tmp_path: Path):
    """The coarse-order step in ONNX equals its torch module, and it unmasks exactly the positions the host
    sampler (:class:`MaskSampler`, method "coarse") unmasks from the same ranks."""
    vq, sdid = models
    (graph,) = [g for g in onnx_graphs(vq, sdid, "coarse") if g.name == "sampler_step"]
    export_graph(graph, tmp_path / "sampler_step.onnx")
    tokens_out, masked_out = run_onnx(tmp_path / "sampler_step.onnx", graph.inputs)
    ref_tokens, ref_masked = graph.module(*graph.inputs.values())
    assert np.array_equal(tokens_out, ref_tokens.numpy()) and np.array_equal(masked_out, ref_masked.numpy())

    k, grid, steps = sdid.cfg.num_codes, sdid.cfg.grid, 4
    sampler = MaskSampler(k, sdid.cfg.diffusion_steps, steps=steps, method="coarse")
    state = sampler.start(2, (grid, grid))
    g = torch.Generator().manual_seed(0)
    step = SamplerStepCoarse(1.0)
    masked = state.masked.clone()
    for i in range(steps):
        logits = torch.randn(2, k, grid, grid, generator=g)
        sampler.update(state, logits, g)
        n_unmasked = torch.full((2,), round(grid * grid * (i + 1) / steps))
        _, masked = step(logits, state.tokens, masked, torch.rand(2, grid, grid), state.rank, n_unmasked)
        assert torch.equal(masked, state.masked)
    assert not masked.any()


def test_remask_sampler_step_exports_and_masks_as_the_host_sampler(models, tmp_path: Path):
    """The remasking step in ONNX equals its torch module, and from the host's uniforms it unmasks and masks
    again exactly the positions :class:`MaskSampler` (paper, remask > 0) does."""
    vq, sdid = models
    (graph,) = [g for g in onnx_graphs(vq, sdid, "paper", remask=0.2) if g.name == "sampler_step"]
    assert isinstance(graph.module, SamplerStepRemask)
    export_graph(graph, tmp_path / "sampler_step.onnx")
    tokens_out, masked_out = run_onnx(tmp_path / "sampler_step.onnx", graph.inputs)
    ref_tokens, ref_masked = graph.module(*graph.inputs.values())
    assert np.array_equal(tokens_out, ref_tokens.numpy()) and np.array_equal(masked_out, ref_masked.numpy())

    k, grid, steps = sdid.cfg.num_codes, sdid.cfg.grid, 6
    sampler = MaskSampler(k, sdid.cfg.diffusion_steps, steps=steps, method="paper", remask=0.2)
    state = sampler.start(4, (grid, grid))
    g = torch.Generator().manual_seed(0)
    step = SamplerStepRemask(1.0)
    again = 0
    for _ in range(steps):
        logits = torch.randn(4, k, grid, grid, generator=g)
        p_unmask, sigma = sampler.remask_probabilities(steps - state.i)
        masked, tokens = state.masked.clone(), state.tokens.clone()
        host = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        probe = host.get_state()
        sampler.update(state, logits, host)
        host.set_state(probe)
        sampler.draw(logits, host)  # the host draws its tokens first, then one uniform per token
        u_unmask = torch.rand(masked.shape, generator=host)
        out, out_masked = step(logits, tokens, masked, torch.rand(4, grid, grid), u_unmask,
                               torch.full((4,), p_unmask), torch.full((4,), sigma))
        assert torch.equal(out_masked, state.masked) and torch.equal(out == k, state.masked)
        again += int((~masked & out_masked).sum())
    assert again > 0 and not state.masked.any()
