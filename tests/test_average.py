"""Averaging the generators of several fine-tunes of one stage 1 (spkdiff.train.average, SWA)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_preset

from spkdiff.checkpoint import load_checkpoint
from spkdiff.cli import main
from spkdiff.data import load_tensor
from spkdiff.train.average import main as average_main
from spkdiff.train.loop import is_tokenizer, load_stage

BN_IMAGES = 64  # fewer than the recompute's batch, so its statistics are those of one batch


def _fine_tune(source: Path, out: Path, data: Path, seed: int) -> Path:
    preset = tiny_preset(out.parent, "vqsvae", init_from=str(source), train_parts="generator", epochs=1)
    assert main(["train", "--stage", "vqsvae", "--preset", str(preset), "--dataset", "mnist", "--out", str(out),
                 "--data-root", str(data), "--seed", str(seed)]) == 0
    return out


@pytest.fixture(scope="module")
def two_fine_tunes(tiny_run: Path, shared_data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("fine_tunes")
    first = _fine_tune(tiny_run, folder / "first", shared_data_root, seed=0)
    second = _fine_tune(first, folder / "second", shared_data_root, seed=1)
    shutil.copy(tiny_run / "sdid.safetensors", second)  # the prior on these tokens, as a shipped run holds it
    return first, second


def test_the_average_is_the_mean_generator_on_the_same_tokens(two_fine_tunes, tiny_run: Path,
                                                              shared_data_root: Path, tmp_path: Path) -> None:
    first, second = two_fine_tunes
    out = tmp_path / "average"
    average_main([str(first), str(second), "--out", str(out), "--data-root", str(shared_data_root),
                  "--bn-images", str(BN_IMAGES)])
    runs = [load_checkpoint(r / "vqsvae.safetensors").model for r in (first, second)]
    averaged = load_checkpoint(out / "vqsvae.safetensors").model
    trained = [k for k in averaged if not torch.equal(runs[0][k], runs[1][k]) and "running" not in k
               and runs[0][k].is_floating_point()]
    assert trained and all(k.startswith(("asg.", "decoder.", "readout.")) for k in trained)
    for key in trained:  # theta_SWA = (theta_1 + theta_2) / 2
        torch.testing.assert_close(averaged[key], (runs[0][key] + runs[1][key]) / 2)
    for key in [k for k in averaged if is_tokenizer(k)]:  # every image keeps its tokens
        assert torch.equal(averaged[key], runs[0][key])
    assert (out / "sdid.safetensors").read_bytes() == (second / "sdid.safetensors").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["vqsvae"]["train"]["averaged_from"] == [str(first), str(second)]
    assert config["sdid"] == json.loads((second / "config.json").read_text())["sdid"]  # its prior and sampler

    # The generator's BatchNorm statistics are measured on the averaged weights, not averaged: they are the
    # input statistics of one batch of the first BN_IMAGES training images, the generator's norms in train mode.
    model = load_stage(out, "vqsvae")
    images, _ = load_tensor("mnist", str(shared_data_root), "train", limit=BN_IMAGES)
    norm = model.decoder[1].synapse[1]
    seen: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0].detach()))
    for part in (model.asg, model.decoder):
        part.train()
    with torch.no_grad():
        model(images - 0.5)
    hook.remove()
    measured = seen[0].transpose(0, 1).flatten(1).mean(1)  # BN2d over (T*B, C, H, W): per-channel mean
    torch.testing.assert_close(norm.running_mean, measured, rtol=1e-4, atol=1e-5)
    plain_mean = (runs[0]["decoder.1.synapse.1.running_mean"] + runs[1]["decoder.1.synapse.1.running_mean"]) / 2
    assert not torch.allclose(norm.running_mean, plain_mean)

    # --batch-norm average: the runs' statistics averaged like the weights, no data read.
    average_main([str(first), str(second), "--out", str(tmp_path / "plain"), "--batch-norm", "average",
                  "--data-root", str(tmp_path / "no-data")])
    plain = load_checkpoint(tmp_path / "plain" / "vqsvae.safetensors").model
    torch.testing.assert_close(plain["decoder.1.synapse.1.running_mean"], plain_mean)
    torch.testing.assert_close(plain["readout.weight"], averaged["readout.weight"])


def test_runs_with_different_tokens_are_refused(tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert main(["train", "--stage", "vqsvae", "--preset", "tiny", "--dataset", "mnist", "--out", str(other),
                 "--data-root", str(shared_data_root), "--seed", "3"]) == 0
    with pytest.raises(SystemExit, match="its tokenizer differs") as exit_info:
        average_main([str(tiny_run), str(other), "--out", str(tmp_path / "avg"), "--data-root",
                      str(shared_data_root)])
    assert "\n" not in str(exit_info.value)
    with pytest.raises(SystemExit, match="at least two runs"):
        average_main([str(tiny_run), "--out", str(tmp_path / "avg1"), "--data-root", str(shared_data_root)])
    assert not (tmp_path / "avg").exists() and not (tmp_path / "avg1").exists()
