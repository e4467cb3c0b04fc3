"""Context layers in the generator (``decoder_context``): spiking 3x3 convs at half the image side, grown into a
trained generator as exact relays (spkdiff.train.vqsvae.grow_generator, VQSVAE.relay_context_)."""

from __future__ import annotations

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
from spkdiff.train.snn import dense_macs
from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig, grow_generator


def _deep(source: VQSVAE, layers: int) -> VQSVAE:
    torch.manual_seed(1)
    return VQSVAE(VQSVAEConfig.from_dict(source.cfg.to_dict() | {"decoder_context": layers}))


def test_grown_context_layers_relay_the_spikes_exactly(tiny_run: Path, tmp_path: Path) -> None:
    source = load_stage(activated_copy(tiny_run, tmp_path / "active"), "vqsvae")
    deep = _deep(source, 2)
    weights, new_layers = grow_generator(deep, source.state_dict())
    assert new_layers == [1, 2]
    deep.load_state_dict(weights)
    images = torch.rand(16, 1, 28, 28) - 0.5
    deep.relay_context_(new_layers, images)
    assert_same_generator_function(source, deep, images)  # in eval mode and on this training batch's own statistics
    spikes: list[torch.Tensor] = []
    deep.train()
    deep(images, spikes=spikes)["loss"].backward()
    # spikes: ASG, decoder 0, the two relays, the last decoder layer; the relays repeat decoder 0's spikes.
    assert len(spikes) == 5 and spikes[1].mean() > 0.05
    assert torch.equal(spikes[2], spikes[1]) and torch.equal(spikes[3], spikes[1])
    # The relays are not frozen identities: every tap of their kernels gets a gradient.
    grad = deep.decoder[1].synapse[0].weight.grad
    assert grad is not None and (grad.abs().sum((0, 1)) > 0).all()


def test_context_layers_count_in_the_energy_terms(tiny_run: Path) -> None:
    source = load_stage(tiny_run, "vqsvae")
    deep = _deep(source, 1)
    channels = TINY_DECODER[0]
    context = deep.decoder[1].synapse[0]
    # a 3x3 'same' conv on 14x14: 40 x 40 (input, output) position pairs per channel pair (fewer at the borders)
    assert dense_macs(context, (14, 14)) == channels * channels * 40 * 40
    assert deep.generator_dense_macs() == pytest.approx(source.generator_dense_macs() + channels**2 * 1600)
    fan_outs = deep.generator_fan_outs()  # of the spikes of the ASG, decoder 0 (read by the context layer), ...
    assert len(fan_outs) == 4 and (fan_outs[1][7, 7].item(), fan_outs[1][0, 0].item()) == (9 * channels, 4 * channels)


def test_a_context_fine_tune_keeps_its_tokens_and_exports_spike_for_spike(
        tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    import shutil

    source = activated_copy(tiny_run, tmp_path / "source")
    run = tmp_path / "deep"
    assert train_vqsvae(run, grown_generator_preset(tmp_path, source, decoder_context=1), shared_data_root) == 0
    before, after = load_stage(source, "vqsvae"), load_stage(run, "vqsvae")
    assert len(after.decoder) == 3
    images = load_tensor("mnist", shared_data_root, "test", limit=8)[0] - 0.5
    assert torch.equal(before.encode_tokens(images), after.encode_tokens(images))
    # Training moved the relay off the identity kernel (its off-centre taps started at zero).
    kernel = after.decoder[1].synapse[0].weight
    assert kernel[:, :, 0, 0].abs().sum() > 0
    shutil.copy(source / "sdid.safetensors", run / "sdid.safetensors")  # same tokens: the same prior serves it
    manifest, _ = assert_nir_stages_match_torch(activated_copy(run, tmp_path / "active"), images[:4], tmp_path / "nir")
    layers = {layer["name"]: layer for layer in manifest["stages"]["generator"]["layers"]}
    assert layers["dec1_lif"]["fine_shape"] == [TINY_DECODER[0], 14, 14]
    assert layers["dec2_lif"]["fine_shape"] == [TINY_DECODER[1], 28, 28]


def test_context_layers_are_never_removed(tiny_run: Path) -> None:
    source = load_stage(tiny_run, "vqsvae")
    deep = _deep(source, 2)
    with pytest.raises(SpkdiffError, match="the source has 2 context layers, this model 1") as err:
        grow_generator(_deep(source, 1), deep.state_dict())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [-1, 9, 1.5, True])
def test_bad_decoder_context_is_one_line(bad: object) -> None:
    with pytest.raises(SpkdiffError, match="decoder_context must be a layer count from 0 to 8") as err:
        VQSVAEConfig.from_dict({"decoder_context": bad})
    assert "\n" not in str(err.value)


def test_a_preset_with_bad_decoder_context_is_one_line(tmp_path: Path) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump({"base": "fast_adversarial", "vqsvae": {"model": {"decoder_context": 12}}}))
    with pytest.raises(SpkdiffError, match=r"vqsvae.model.decoder_context = 12 is outside") as err:
        load_preset(str(preset))
    assert "\n" not in str(err.value)
