"""The SDID's SOP regulariser (``sop_weight``): fan-out-weighted spikes, it lowers the spike count, and the
prior fine-tune (``--stage sdid --init-from RUN``) that applies it to a trained SDID on the same tokens."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_on_tokens_of, tiny_preset, train_sdid, train_vqsvae

from spkdiff.checkpoint import load_checkpoint, save_checkpoint
from spkdiff.cli import main
from spkdiff.errors import SpkdiffError
from spkdiff.train.loop import TrainSettings, _sdid_step, _vqsvae_step, initial_weights, load_stage
from spkdiff.train.sdid import SDID, SDIDConfig, grow_prior
from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig


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


# --- the prior fine-tune: `spkdiff train --stage sdid --init-from RUN` on RUN's tokens


def _finetune_preset(tmp_path: Path, **sdid_train: object) -> Path:
    return tiny_preset(tmp_path, "sdid", **sdid_train)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.named_parameters()}


def test_sdid_finetune_starts_from_the_source_prior(tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    """At lr 0 one fine-tune step leaves every weight the source's; at lr > 0 with the regulariser it moves on
    from there, not from a fresh initialisation (its first loss is the trained prior's)."""
    frozen = run_on_tokens_of(tiny_run, tmp_path / "frozen")
    preset = _finetune_preset(tmp_path, lr=0.0, weight_decay=0.0, sop_weight=0.5)
    assert train_sdid(frozen, preset, shared_data_root, "--init-from", str(tiny_run), "--max-steps", "1") == 0
    source, tuned = _params(load_stage(tiny_run, "sdid")), _params(load_stage(frozen, "sdid"))
    assert all(torch.equal(source[k], tuned[k]) for k in source)

    fresh, moving = run_on_tokens_of(tiny_run, tmp_path / "fresh"), run_on_tokens_of(tiny_run,
                                                                                                tmp_path / "moving")
    preset = _finetune_preset(tmp_path, sop_weight=0.5, log_every=1)
    assert train_sdid(fresh, preset, shared_data_root, "--max-steps", "1") == 0
    assert train_sdid(moving, preset, shared_data_root, "--init-from", str(tiny_run), "--max-steps", "2") == 0

    def first_loss(run: Path) -> float:
        with open(run / "sdid_log.csv") as f:
            return float(next(csv.DictReader(f))["loss"])

    assert first_loss(moving) < first_loss(fresh)
    tuned = _params(load_stage(moving, "sdid"))
    assert any(not torch.equal(source[k], tuned[k]) for k in source)


def test_sdid_finetune_to_fewer_time_steps(tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    """T per call is not part of the weights: a T = 2 prior fine-tunes to T = 1 from its own weights, and the
    result runs one SNN step per call (half the spike tensors' time axis)."""
    preset = _finetune_preset(tmp_path, lr=0.0, weight_decay=0.0, sop_weight=0.5)
    cfg = yaml.safe_load(preset.read_text())
    assert cfg["sdid"]["model"]["time_steps"] == 2
    cfg["sdid"]["model"]["time_steps"] = 1
    preset.write_text(yaml.safe_dump(cfg))
    one_step = run_on_tokens_of(tiny_run, tmp_path / "one_step")
    assert train_sdid(one_step, preset, shared_data_root, "--init-from", str(tiny_run), "--max-steps", "1") == 0
    source, tuned = load_stage(tiny_run, "sdid"), load_stage(one_step, "sdid")
    assert (source.cfg.time_steps, tuned.cfg.time_steps) == (2, 1)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), tuned.parameters(), strict=True))
    tokens = torch.zeros(2, tuned.cfg.grid, tuned.cfg.grid, dtype=torch.long)
    spikes: list[torch.Tensor] = []
    with torch.no_grad():
        tuned(tokens, torch.tensor([10, 20]), spikes)
    assert {s.shape[0] for s in spikes} == {1}


def test_sdid_finetune_refuses_other_tokens_another_shape_and_stage_all(
        tiny_run: Path, shared_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = _finetune_preset(tmp_path)
    # a stage 1 with another codebook gives other tokens: the source prior would predict the wrong ones
    other_tokens = run_on_tokens_of(tiny_run, tmp_path / "other_tokens")
    ckpt = load_checkpoint(other_tokens / "vqsvae.safetensors", stage="vqsvae")
    weights = dict(ckpt.model) | {"codebook": ckpt.model["codebook"] + 0.25}
    save_checkpoint(other_tokens / "vqsvae.safetensors", model=weights, config=ckpt.config, stage="vqsvae")
    assert train_sdid(other_tokens, preset, shared_data_root, "--init-from", str(tiny_run)) != 0
    err = capsys.readouterr().err.strip()
    assert "predicts other tokens" in err and "codebook" in err and len(err.splitlines()) == 1
    assert "init_from_other_tokens: true starts from it anyway" in err

    for name, change, message in (("deeper", {"blocks": 2}, "differs in blocks"),
                                  ("narrower", {"channels": 8}, "cannot grow the prior")):
        other = _finetune_preset(tmp_path, sop_weight=0.5)
        cfg = yaml.safe_load(other.read_text())
        cfg["sdid"]["model"].update(change)
        other.write_text(yaml.safe_dump(cfg))
        assert train_sdid(run_on_tokens_of(tiny_run, tmp_path / name), other, shared_data_root,
                          "--init-from", str(tiny_run)) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (name, err)

    rc = main(["train", "--stage", "all", "--preset", str(preset), "--dataset", "mnist", "--out",
               str(tmp_path / "all"), "--data-root", str(shared_data_root), "--init-from", str(tiny_run)])
    assert rc != 0 and "--init-from needs --stage vqsvae or --stage sdid" in capsys.readouterr().err


def test_sdid_finetune_onto_other_tokens_when_asked(
        tiny_run: Path, shared_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """init_from_other_tokens starts a prior from a source trained on another tokenizer's tokens (at lr 0 every
    weight stays the source's); it is refused without init_from and in stage 1."""
    other_tokens = run_on_tokens_of(tiny_run, tmp_path / "other_tokens")
    ckpt = load_checkpoint(other_tokens / "vqsvae.safetensors", stage="vqsvae")
    weights = dict(ckpt.model) | {"codebook": ckpt.model["codebook"] + 0.25}
    save_checkpoint(other_tokens / "vqsvae.safetensors", model=weights, config=ckpt.config, stage="vqsvae")
    preset = _finetune_preset(tmp_path, lr=0.0, weight_decay=0.0, init_from_other_tokens=True)
    assert train_sdid(other_tokens, preset, shared_data_root, "--init-from", str(tiny_run), "--max-steps", "1") == 0
    source, tuned = load_stage(tiny_run, "sdid"), load_stage(other_tokens, "sdid")
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), tuned.parameters(), strict=True))

    assert train_sdid(run_on_tokens_of(tiny_run, tmp_path / "no_source"), preset, shared_data_root) != 0
    assert "init_from_other_tokens needs init_from" in capsys.readouterr().err
    stage1 = tiny_preset(tmp_path, "vqsvae", init_from_other_tokens=True)
    assert train_vqsvae(tmp_path / "stage1", stage1, shared_data_root, "--max-steps", "1") != 0
    err = capsys.readouterr().err.strip()
    assert "init_from_other_tokens is a stage-2 (sdid) setting" in err and len(err.splitlines()) == 1


def test_grown_prior_computes_the_source_logits() -> None:
    """A prior widened by grow_prior gives the source's logits, in training mode (batch statistics) and in eval
    mode, while its added channels spike; their synapses into old channels and the read-out are zero."""
    torch.manual_seed(0)
    source = SDID(_cfg())
    for m in source.modules():  # trained-looking BatchNorm statistics, so eval mode tests them too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 2.0)
    wide = SDID(SDIDConfig(**(_cfg().to_dict() | {"channels": 24})))
    wide.load_state_dict(grow_prior(wide, source.state_dict()))
    assert torch.equal(wide.readout.weight[:, 16:], torch.zeros(16, 8, 1, 1))
    assert torch.equal(wide.blocks[0].first.synapse[0].weight[:16, 16:], torch.zeros(16, 8, 3, 3))
    tokens = torch.randint(0, 17, (6, 7, 7))
    t = torch.randint(1, 50, (6,))
    for train in (True, False):
        source.train(train), wide.train(train)
        spikes: list[torch.Tensor] = []
        with torch.no_grad():
            assert torch.allclose(source(tokens, t), wide(tokens, t, spikes), atol=1e-5, rtol=0)
        # the added channels spike under batch statistics, so they learn (eval mode has BN's fresh defaults)
        assert not train or all(s[:, :, 16:].sum() > 0 for s in spikes)


def test_sdid_finetune_to_more_channels(tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    """``--init-from`` with more sdid channels grows the source prior: at lr 0 one step keeps every source weight
    in the leading slice, and the grown run samples like any other."""
    preset = _finetune_preset(tmp_path, lr=0.0, weight_decay=0.0)
    cfg = yaml.safe_load(preset.read_text())
    channels = cfg["sdid"]["model"]["channels"]
    cfg["sdid"]["model"]["channels"] = channels + 8
    preset.write_text(yaml.safe_dump(cfg))
    wide = run_on_tokens_of(tiny_run, tmp_path / "wide")
    assert train_sdid(wide, preset, shared_data_root, "--init-from", str(tiny_run), "--max-steps", "1") == 0
    source, grown = _params(load_stage(tiny_run, "sdid")), _params(load_stage(wide, "sdid"))
    assert load_stage(wide, "sdid").cfg.channels == channels + 8
    for key, theirs in source.items():
        assert torch.equal(grown[key][tuple(slice(0, n) for n in theirs.shape)], theirs), key
    assert torch.equal(grown["readout.weight"][:, channels:], torch.zeros_like(grown["readout.weight"][:, channels:]))
    assert main(["sample", "--run", str(wide), "--n", "2", "--out", str(tmp_path / "wide.png"), "--seed", "0"]) == 0
    assert (tmp_path / "wide.png").stat().st_size > 0


@pytest.mark.parametrize("stage", ["vqsvae", "sdid"])
def test_init_from_compares_resolved_neuron_constants(tiny_run: Path, stage: str) -> None:
    """An omitted LIF constant means its default, for either stage: a source config that spells the defaults out
    matches one that leaves them out, and a source with another constant is refused in one line."""
    model_cfg = load_checkpoint(tiny_run / f"{stage}.safetensors", stage=stage).config[stage]["model"]
    spelled_out = dict(model_cfg) | {"neuron": {"tau": 2.0, "v_threshold": 1.0, "v_reset": 0.0}}
    weights = initial_weights(str(tiny_run), stage, dict(model_cfg) | {"neuron": {}})
    assert weights.keys() == initial_weights(str(tiny_run), stage, spelled_out).keys()
    with pytest.raises(SpkdiffError, match="differs in neuron"):
        initial_weights(str(tiny_run), stage, dict(model_cfg) | {"neuron": {"tau": 3.0}})


# --- stage 1: the generator's SOP regulariser (`sop_weight` in vqsvae.train)


def _vqsvae() -> VQSVAE:
    torch.manual_seed(0)
    return VQSVAE(VQSVAEConfig(hidden=(8, 16), latent_channels=8, codebook_size=16, time_steps=4))


def test_generator_fan_outs_and_dense_macs_by_hand():
    """A 3x3 stride-2 transposed conv (padding 1, output padding 1) maps input i to outputs 2i-1..2i+1 of 14:
    per axis 2 taps at i = 0 and 3 elsewhere; the 3x3 read-out on 28x28 has 4 / 6 / 9 taps."""
    m = _vqsvae()
    dec0, dec1, readout = m.generator_fan_outs()
    assert (dec0[0, 0].item(), dec0[0, 3].item(), dec0[6, 6].item()) == (4 * 16, 6 * 16, 9 * 16)
    assert (dec1[0, 0].item(), dec1[13, 13].item()) == (4 * 8, 9 * 8)
    assert (readout[0, 0].item(), readout[0, 5].item(), readout[5, 5].item()) == (4, 6, 9)
    stride2 = lambda n: (2 + 3 * (n - 1)) ** 2  # noqa: E731 - summed taps of one stride-2 map
    same = (4 * 4 + 4 * 26 * 6 + 26 * 26 * 9)  # 3x3 same conv on 28x28
    assert m.generator_dense_macs() == 49 * 8 * 8 + stride2(7) * 8 * 16 + stride2(14) * 16 * 8 + same * 8
    spikes = [torch.zeros(4, 2, c, h, h) for c, h in ((8, 7), (16, 14), (8, 28))]
    spikes[1][3, 1, 5, 13, 13] = 1  # one decoder spike: 72 synapses, for 1 of 2 images
    assert m.generator_sop_fraction(spikes).item() == pytest.approx(72 / 2 / m.generator_dense_macs())


def _train_generator(sop_weight: float, steps: int = 20) -> tuple[float, torch.Tensor]:
    """A tiny generator fine-tune through the stage-1 step; returns the generator's SOP fraction on held-out
    images and the held-out tokens."""
    model = _vqsvae()
    data = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(2)) - 0.5
    with torch.no_grad():  # a tokenizer that has seen the data: BatchNorm statistics, codes from its features
        for bn in model.encoder.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.momentum = None  # cumulative: one pass sets the batch's statistics
        model.encode_spikes(data)
        model.freeze_tokenizer_()
        model.init_codebook_(model.features(model.encode_spikes(data)), torch.Generator().manual_seed(4))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    step = _vqsvae_step(1.0, TrainSettings(sop_weight=sop_weight), None)
    held_out = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(3)) - 0.5
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        out = step(model, data, gen, i)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():  # batch statistics: 20 steps leave BatchNorm's running ones near their start
        spikes: list[torch.Tensor] = []
        model(held_out, 1.0, spikes)
        return float(model.generator_sop_fraction(spikes)), model.encode_tokens(held_out)


def test_generator_regulariser_lowers_sops_and_keeps_the_tokens():
    (base, tokens), (regularised, same_tokens) = _train_generator(0.0), _train_generator(5.0)
    assert regularised < 0.7 * base, (base, regularised)
    assert torch.equal(tokens, same_tokens)  # train_parts generator: the prior's tokens stay valid


def test_generator_regulariser_reaches_the_decoder():
    m = _vqsvae()
    spikes: list[torch.Tensor] = []
    m(torch.rand(4, 1, 28, 28) - 0.5, 1.0, spikes)
    m.generator_sop_fraction(spikes).backward()
    assert all(layer.synapse[0].weight.grad.abs().sum() > 0 for layer in [m.asg, *m.decoder])
