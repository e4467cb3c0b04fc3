"""A finer token grid (``latent_stride: 2`` in ``vqsvae.model``: 14x14 tokens on 28x28 images, issue 15).

The second conv down keeps the size and the first transposed conv up is a stride-1 one; everything after stage 1
(the SDID's grid, the tokens, the export's phase layout, the simulator, the host sampler) follows the config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_PRESET, activated_copy, assert_nir_stages_match_torch, run_on_tokens_of, train_sdid

from spkdiff.cli import export_main, main
from spkdiff.data import load_tensor
from spkdiff.errors import SpkdiffError
from spkdiff.export.nir_graphs import load_models
from spkdiff.train.sdid import SDIDConfig
from spkdiff.train.vqsvae import VQSVAEConfig

N_TRAIN = 64


@pytest.fixture(scope="module")
def fine_run(shared_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both stages of the tiny preset at latent_stride 2, its SDID block dilated by 2 (as the fine grid's priors
    may be), on the first 64 MNIST training images. Read-only."""
    folder = tmp_path_factory.mktemp("fine_grid")
    preset = yaml.safe_load(TINY_PRESET.read_text())
    preset["vqsvae"]["model"]["latent_stride"] = 2
    preset["sdid"]["model"]["dilations"] = [2]
    (folder / "preset.yaml").write_text(yaml.safe_dump(preset))
    run = folder / "run"
    assert main(["train", "--stage", "all", "--preset", str(folder / "preset.yaml"), "--dataset", "mnist",
                 "--out", str(run), "--data-root", str(shared_data_root), "--limit", str(N_TRAIN),
                 "--seed", "0"]) == 0
    return run


@pytest.fixture(scope="module")
def patch_run(fine_run: Path, shared_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prior with ``patch: 2`` on ``fine_run``'s 14x14 tokens: a 7x7 network over 2x2 token patches."""
    folder = tmp_path_factory.mktemp("patch_prior")
    preset = yaml.safe_load(TINY_PRESET.read_text())
    preset["vqsvae"]["model"]["latent_stride"] = 2
    preset["sdid"]["model"]["patch"] = 2
    (folder / "preset.yaml").write_text(yaml.safe_dump(preset))
    run = run_on_tokens_of(fine_run, folder / "run")
    assert train_sdid(run, folder / "preset.yaml", shared_data_root, "--limit", str(N_TRAIN)) == 0
    return run


def test_the_token_grid_is_14_by_14(fine_run: Path) -> None:
    config = json.loads((fine_run / "config.json").read_text())
    assert (config["vqsvae"]["model"]["latent_stride"], config["sdid"]["model"]["grid"]) == (2, 14)
    assert config["sdid"]["model"]["dilations"] == [2]
    assert np.load(fine_run / "tokens_train.npy").shape == (N_TRAIN, 14, 14)
    vq, _ = load_models(fine_run)
    with torch.no_grad():
        x = torch.zeros(2, 1, 28, 28)
        tokens, z_q = vq.quantize(vq.features(vq.encode_spikes(x)))
        assert tokens.shape == (2, 14, 14) and vq.generator_potential(z_q).shape == (2, 1, 28, 28)


def test_nir_stages_match_torch_spike_for_spike(fine_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    """The written NIR files of all three stages on real test images: every LIF layer fires and spikes as in
    torch; the generator's stride-1 transposed conv is a native conv, the read-out keeps its 2x2 phases."""
    active = activated_copy(fine_run, tmp_path / "active")
    x = load_tensor("mnist", shared_data_root, "test", limit=4)[0] - 0.5
    m, vq = assert_nir_stages_match_torch(active, x, tmp_path / "nir")
    assert m["stages"]["generator"]["input"]["shape"] == [vq.latent_channels, 14, 14]
    layers = {layer["name"]: layer for layer in m["stages"]["generator"]["layers"]}
    assert layers["readout_conv"]["phase_factor"] == 2 and layers["readout_conv"]["shape"] == [4, 14, 14]
    assert m["host"]["mask_sampler"]["grid"] == [14, 14]


def test_the_fixed_point_simulator_samples_on_the_fine_grid(fine_run: Path, tmp_path: Path) -> None:
    from spkdiff.simulator.generate import generate

    bundle = tmp_path / "bundle"
    assert export_main(["--run", str(fine_run), "--target", "lava", "--out", str(bundle)]) == 0
    gen = generate(bundle, 2, fixed=True, steps=3, seed=0)
    assert gen.tokens.shape == (2, 14, 14) and gen.images.shape == (2, 1, 28, 28)
    mask_token = load_models(fine_run)[1].cfg.num_codes  # the absorbing [MASK]: one past the codebook
    assert not (gen.tokens == mask_token).any()  # every position was unmasked


@pytest.mark.parametrize("bad,match", [({"latent_stride": 3}, "latent_stride 3 is not supported"),
                                       ({"latent_stride": 2, "image_size": 27}, "not a multiple of the latent")])
def test_bad_latent_stride_is_one_line(bad: dict, match: str) -> None:
    with pytest.raises(SpkdiffError, match=match) as err:
        VQSVAEConfig(**bad)
    assert "\n" not in str(err.value)


def test_a_patch_prior_runs_as_a_7x7_network_and_samples_the_14x14_grid(patch_run: Path, shared_data_root: Path,
                                                                       tmp_path: Path) -> None:
    """``patch: 2``: the chip sees 4 (K+1) token channels plus the time bins on 7x7 and reads out 4 K logits per
    position; the host's space-to-depth and depth-to-space make the simulator's logits equal torch's."""
    from spkdiff.neuromorphic.bundle import load_bundle
    from spkdiff.simulator.generate import SimulatorPipeline, generate

    active = activated_copy(patch_run, tmp_path / "active")
    x = load_tensor("mnist", shared_data_root, "test", limit=4)[0] - 0.5
    m, _ = assert_nir_stages_match_torch(active, x, tmp_path / "nir")
    _, sdid = load_models(active)
    k, bins = sdid.cfg.num_codes, sdid.cfg.time_bins
    assert m["stages"]["sdid"]["input"]["shape"] == [4 * (k + 1) + bins, 7, 7]
    assert (m["host"]["mask_sampler"]["grid"], m["host"]["mask_sampler"]["patch"]) == ([14, 14], 2)

    bundle = tmp_path / "bundle"
    assert export_main(["--run", str(active), "--target", "lava", "--out", str(bundle)]) == 0
    tokens = torch.randint(0, k + 1, (3, 14, 14), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 20, 49])
    with torch.no_grad():
        want = sdid(tokens, t)
    got = SimulatorPipeline.from_bundle(load_bundle(bundle), fixed=False).denoise(tokens, t)
    assert got.shape == (3, k, 14, 14)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    gen = generate(bundle, 2, fixed=True, steps=3, seed=0)
    assert gen.tokens.shape == (2, 14, 14) and not (gen.tokens == k).any()
    # a manifest whose patch disagrees with the SDID's grid, or cannot tile the token grid: one line each
    from spkdiff.validate import check_manifest

    manifest = json.loads((bundle / "manifest.json").read_text())
    for patch, match in ((1, "grid of 1x1 token patches"), (4, "patch 4 does not divide the 14x14"),
                         (True, "must be a integer")):
        manifest["host"]["mask_sampler"]["patch"] = patch
        with pytest.raises(SpkdiffError, match=match) as err:
            check_manifest(manifest, "bundle")
        assert "\n" not in str(err.value)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("run_name", ["fine_run", "patch_run"])
def test_lava_fixed_pt_runs_the_fine_grid_bit_for_bit(run_name: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    """Lava on the 14x14 bundles equals the fixed-point simulator, tokens and images: ``fine_run`` through Lava's
    own Conv processes with their dilation, ``patch_run`` through the sampler process's space-to-depth and
    depth-to-space of the patch prior."""
    pytest.importorskip("spkdiff.export.lava_target")
    from spkdiff.backends import sample_images
    from spkdiff.simulator.generate import generate

    bundle = tmp_path / "bundle"
    assert export_main(["--run", str(request.getfixturevalue(run_name)), "--target", "lava", "--out",
                        str(bundle)]) == 0
    images, tokens, _ = sample_images("lava", bundle=bundle, n=1, steps=2, seed=5, fixed=True, timeout=400)
    ref = generate(bundle, 1, fixed=True, steps=2, seed=5, count=False)
    assert tokens.shape == (1, 14, 14) and torch.equal(tokens, ref.tokens) and torch.equal(images, ref.images)


@pytest.mark.parametrize("bad,match", [({"patch": 0}, "sdid patch = 0 is outside"),
                                       ({"patch": 2, "grid": 7}, "patch 2 does not divide the 7x7 token grid"),
                                       ({"patch": "2"}, "sdid patch")])
def test_bad_patch_is_one_line(bad: dict, match: str) -> None:
    with pytest.raises(SpkdiffError, match=match) as err:
        SDIDConfig(**bad)
    assert "\n" not in str(err.value)
