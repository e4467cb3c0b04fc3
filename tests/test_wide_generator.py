"""A wider generator grown from a trained one (``decoder_hidden``, spkdiff.train.vqsvae.grow_generator)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    TINY_DECODER,
    activated_copy,
    assert_nir_stages_match_torch,
    assert_same_generator_function,
    grown_generator_preset,
    train_vqsvae,
)

from spkdiff.config import load_preset
from spkdiff.data import load_tensor
from spkdiff.errors import SpkdiffError
from spkdiff.train.loop import load_stage
from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig, grow_generator

WIDE_DECODER = [24, 12]


def test_the_grown_generator_computes_what_the_narrow_one_did(tiny_run: Path, tmp_path: Path) -> None:
    active = activated_copy(tiny_run, tmp_path / "active")  # every layer fires, so silent channels would show
    narrow = load_stage(active, "vqsvae")
    torch.manual_seed(1)
    wide = VQSVAE(VQSVAEConfig.from_dict(narrow.cfg.to_dict() | {"decoder_hidden": WIDE_DECODER}))
    wide.load_state_dict(grow_generator(wide, narrow.state_dict())[0])
    assert wide.decoder[0].synapse[0].weight.shape[1] == WIDE_DECODER[0]
    images = torch.rand(8, 1, 28, 28) - 0.5
    assert_same_generator_function(narrow, wide, images)
    # The added channels are not dead weight: in training they fire and reach the read-out's gradient.
    wide.train()
    spikes: list[torch.Tensor] = []
    wide(images, spikes=spikes)["loss"].backward()
    added = spikes[2][:, :, TINY_DECODER[1]:]
    assert added.mean() > 0.01
    assert wide.readout.weight.grad[TINY_DECODER[1]:].abs().sum() > 0


def test_a_grown_generator_grows_again_exactly(tiny_run: Path, tmp_path: Path) -> None:
    """Growth from an already grown (and then trained) generator keeps its function: the twentieth session's
    256 / 128 decoder came from the 128 / 64 one. Only the source's own shapes may decide what is zeroed."""
    narrow = load_stage(activated_copy(tiny_run, tmp_path / "active"), "vqsvae")
    config = narrow.cfg.to_dict()
    torch.manual_seed(1)
    wide = VQSVAE(VQSVAEConfig.from_dict(config | {"decoder_hidden": WIDE_DECODER}))
    wide.load_state_dict(grow_generator(wide, narrow.state_dict())[0])
    with torch.no_grad():  # stands in for training: the first growth's added channels now reach the old ones
        # transposed-conv weights are (in, out, kh, kw): the rows of the first growth's added input channels
        for reader, old_in in ((wide.decoder[1].synapse[0].weight, TINY_DECODER[0]),
                               (wide.readout.weight, TINY_DECODER[1])):
            reader[old_in:] += 0.1 * torch.randn_like(reader[old_in:])
    wider = VQSVAE(VQSVAEConfig.from_dict(config | {"decoder_hidden": [2 * c for c in WIDE_DECODER]}))
    wider.load_state_dict(grow_generator(wider, wide.state_dict())[0])
    images = torch.rand(8, 1, 28, 28) - 0.5
    assert_same_generator_function(wide, wider, images)
    spikes: list[torch.Tensor] = []
    wider(images, spikes=spikes)
    assert spikes[2][:, :, WIDE_DECODER[1]:].mean() > 0.01  # the second growth's channels fire: they must be silent


def test_a_grown_generator_fine_tunes_keeps_its_tokens_and_exports_spike_for_spike(
        tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    source = activated_copy(tiny_run, tmp_path / "source")  # a tiny run barely spikes: the added channels would not
    run = tmp_path / "wide"
    preset = grown_generator_preset(tmp_path, source, decoder_hidden=WIDE_DECODER)
    assert train_vqsvae(run, preset, shared_data_root) == 0
    before, after = load_stage(source, "vqsvae"), load_stage(run, "vqsvae")
    assert after.cfg.decoder_channels == tuple(WIDE_DECODER)
    images = load_tensor("mnist", shared_data_root, "test", limit=8)[0] - 0.5
    assert torch.equal(before.encode_tokens(images), after.encode_tokens(images))
    # The read-out's synapses from the added channels started at zero; training moved them.
    assert after.readout.weight[TINY_DECODER[1]:].abs().sum() > 0
    shutil.copy(source / "sdid.safetensors", run / "sdid.safetensors")  # the tokens are the same: so is the prior
    active = activated_copy(run, tmp_path / "active")
    manifest, _ = assert_nir_stages_match_torch(active, images[:4], tmp_path / "nir")
    layers = {layer["name"]: layer for layer in manifest["stages"]["generator"]["layers"]}
    assert layers["dec0_lif"]["fine_shape"] == [WIDE_DECODER[0], 14, 14]
    assert layers["dec1_lif"]["fine_shape"] == [WIDE_DECODER[1], 28, 28]


def test_a_generator_cannot_shrink(tiny_run: Path, shared_data_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    preset = grown_generator_preset(tmp_path, tiny_run, decoder_hidden=[8, 8])
    assert train_vqsvae(tmp_path / "narrow", preset, shared_data_root) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot grow the generator" in err[0] and "decoder.0" in err[0]


@pytest.mark.parametrize("bad", [[16], [16, 0], [16, 8, 4], [16, 2.5]])
def test_bad_decoder_hidden_is_one_line(bad: list) -> None:
    with pytest.raises(SpkdiffError, match="decoder_hidden must be two positive channel counts") as err:
        VQSVAEConfig.from_dict({"decoder_hidden": bad})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad,match", [
    ([128, 100_000], r"vqsvae.model.decoder_hidden\[1\] = 100000 is outside"),
    ([128], "vqsvae.model.decoder_hidden must list 2 channel counts, got 1"),
    ("wide", "vqsvae.model.decoder_hidden"),
])
def test_a_preset_with_bad_decoder_hidden_is_one_line(bad: object, match: str, tmp_path: Path) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump({"base": "fast_adversarial", "vqsvae": {"model": {"decoder_hidden": bad}}}))
    with pytest.raises(SpkdiffError, match=match) as err:
        load_preset(str(preset))
    assert "\n" not in str(err.value)
