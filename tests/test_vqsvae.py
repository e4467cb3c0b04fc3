"""Stage 1: LIF (Eq 1-3), PSP/SFR (Eq 4-5), VQ-SVAE gradients, training, checkpoints, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spkdiff.checkpoint import load_checkpoint, save_checkpoint
from spkdiff.cli import main
from spkdiff.config import load_preset
from spkdiff.errors import CheckpointError
from spkdiff.host import encoder_features, psp_final, psp_sequence
from spkdiff.train.snn import LIFParams, lif_multi_step, lif_multi_step_reference, sfr
from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig


def test_lif_matches_eq_1_to_3_by_hand():
    # tau = 2, V_th = 1, V_reset = 0: H = V + (X - V)/2.
    x = torch.tensor([[1.0], [1.0], [1.0], [3.0], [0.0], [2.0]])
    # t0: H=0.5 no spike V=.5; t1: H=.75 V=.75; t2: H=.875 V=.875; t3: H=1.9375 spike V=0;
    # t4: H=0 V=0; t5: H=1.0 spike (Theta(0) = 1).
    expected = torch.tensor([[0.0], [0.0], [0.0], [1.0], [0.0], [1.0]])
    assert torch.equal(lif_multi_step(x), expected)
    assert torch.equal(lif_multi_step_reference(x), expected)


def test_lif_kernel_equals_spikingjelly():
    from spikingjelly.activation_based import functional, neuron, surrogate

    torch.manual_seed(0)
    node = neuron.LIFNode(surrogate_function=surrogate.ATan(), step_mode="m")
    x = (torch.randn(8, 4, 3, 5, 5) * 1.5).requires_grad_()
    x_sj = x.detach().clone().requires_grad_()
    s, s_sj = lif_multi_step(x), node(x_sj)
    assert torch.equal(s, s_sj)
    grad = torch.randn_like(s)
    (s * grad).sum().backward()
    (s_sj * grad).sum().backward()
    torch.testing.assert_close(x.grad, x_sj.grad, rtol=1e-5, atol=1e-6)
    # Constant input over time equals the repeated input, forward and backward.
    functional.reset_net(node)
    c = torch.randn(4, 3, 5, 5).requires_grad_()
    c_sj = c.detach().clone().requires_grad_()
    sc = lif_multi_step(c, LIFParams(), steps=8)
    sc_sj = node(c_sj.unsqueeze(0).repeat(8, 1, 1, 1, 1))
    assert torch.equal(sc, sc_sj)
    (sc * grad).sum().backward()
    (sc_sj * grad).sum().backward()
    torch.testing.assert_close(c.grad, c_sj.grad, rtol=1e-5, atol=1e-5)


def test_psp_and_sfr_match_eq_4_and_5():
    z = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(4, 1)
    assert sfr(z).item() == pytest.approx(0.75)
    tau = 5.0
    expected, acc = [], 0.0
    for zt in [1.0, 0.0, 1.0, 1.0]:
        acc = (1 - 1 / tau) * acc + zt / tau
        expected.append(acc)
    torch.testing.assert_close(psp_sequence(z, tau).flatten(), torch.tensor(expected))
    assert psp_final(z, tau).item() == pytest.approx(expected[-1])
    k = torch.tensor(0.3)
    assert encoder_features(z, k, tau).item() == pytest.approx(0.3 * 0.75 + 0.7 * expected[-1], rel=1e-6)


def _tiny_model() -> VQSVAE:
    torch.manual_seed(0)
    return VQSVAE(VQSVAEConfig(hidden=(8, 16), latent_channels=8, codebook_size=16, time_steps=4))


def test_gradients_reach_encoder_k_codebook_and_asg():
    model = _tiny_model()
    x = torch.rand(8, 1, 28, 28) - 0.5
    with torch.no_grad():
        model.init_codebook_(model.features(model.encode_spikes(x)))
    model(x)["loss"].backward()
    for name in ("encoder.0.synapse.0.weight", "encoder.2.synapse.0.weight", "k", "codebook",
                 "asg.synapse.0.weight", "decoder.0.synapse.0.weight", "readout.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_model_has_only_deployable_layers():
    from torch import nn

    from spkdiff.train.snn import LIF, ConvBN, SpikingConv

    allowed = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.Identity, LIF, ConvBN, SpikingConv, nn.ModuleList,
               VQSVAE)
    for name, module in _tiny_model().named_modules():
        assert isinstance(module, allowed), f"{name}: {type(module).__name__} is not deployable"


def test_training_reduces_loss(tmp_path: Path, shared_data_root: Path):
    rc = main(["train", "--stage", "vqsvae", "--preset", "tiny", "--out", str(tmp_path), "--data-root",
               str(shared_data_root), "--epochs", "3", "--limit", "512"])
    assert rc == 0
    rows = (tmp_path / "vqsvae_log.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("recon")]) for r in rows[1:]]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_checkpoint_round_trip_is_exact(tmp_path: Path):
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(4, 1, 28, 28) - 0.5)["loss"].backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    gen = torch.Generator().manual_seed(3)
    config = {"dataset": "mnist", "seed": 0, **load_preset("tiny")}
    position = {"epoch": 0, "in_epoch": 7, "step": 7}
    save_checkpoint(path, model=model.state_dict(), config=config, stage="vqsvae", optimizer=opt.state_dict(),
                    rng={"generator": gen.get_state()}, position=position)
    ckpt = load_checkpoint(path, stage="vqsvae")
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model[k], v), k
    opt2 = torch.optim.AdamW(_tiny_model().parameters())
    opt2.load_state_dict(ckpt.optimizer)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    assert ckpt.config == config and ckpt.position == position
    assert torch.equal(ckpt.rng["generator"], gen.get_state())


def test_corrupted_or_foreign_checkpoints_are_rejected(tmp_path: Path):
    model = _tiny_model()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model=model.state_dict(), config={}, stage="vqsvae")
    data = path.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not written by spkdiff"):
        load_checkpoint(foreign)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="holds stage"):
        load_checkpoint(path, stage="sdid")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_resume_equals_uninterrupted(tmp_path: Path, shared_data_root: Path):
    common = ["train", "--stage", "vqsvae", "--preset", "tiny", "--data-root", str(shared_data_root),
              "--epochs", "2", "--limit", "96"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*common, "--out", str(full)]) == 0
    # Interrupt after 5 steps (mid-epoch: 6 steps per epoch), then resume to the end.
    assert main([*common, "--out", str(part), "--max-steps", "5"]) == 0
    interrupted = load_checkpoint(part / "vqsvae.safetensors").position
    assert interrupted["step"] == 5
    shutil.copy(part / "config.json", part / "config.json.bak")
    assert main([*common, "--out", str(part), "--resume"]) == 0
    a = load_checkpoint(full / "vqsvae.safetensors")
    b = load_checkpoint(part / "vqsvae.safetensors")
    assert a.position["step"] == b.position["step"] == 12
    # the cost carries over: the resumed run adds its own seconds to the interrupted run's
    assert 0 < interrupted["cpu_s"] < b.position["cpu_s"] and 0 < interrupted["wall_s"] < b.position["wall_s"]
    for k in a.model:
        torch.testing.assert_close(a.model[k], b.model[k], rtol=0, atol=1e-6, msg=k)


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "vqsvae.safetensors").write_bytes(b"not a checkpoint")
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "mnist", "seed": 0, **load_preset("tiny")}))
    rc = main(["train", "--stage", "sdid", "--preset", "tiny", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "checkpoint" in err


def test_saturated_l1_is_the_clamped_images_error_with_gradients_on_both_sides():
    """The pixel range's ends are not penalised for overshooting; elsewhere it is the L1 error."""
    from spkdiff.train.vqsvae import reconstruction_loss

    x = torch.tensor([-0.5, -0.5, 0.5, 0.5, 0.1, 0.1])
    x_hat = torch.tensor([-0.9, -0.3, 0.8, -0.7, 0.3, -0.1], requires_grad=True)
    loss = reconstruction_loss(x_hat, x, "saturated_l1", data_variance=1.0)
    # = the clamped image's L1 error, except past the far end (-0.7 for a 0.5 pixel: 1.2, not 1.0)
    assert torch.isclose(loss, torch.tensor([0, 0.2, 0, 1.2, 0.2, 0.2]).mean())
    halved = reconstruction_loss(x_hat.detach(), x, "saturated_l1", data_variance=4.0)
    assert float(halved) == pytest.approx(float(loss.detach()) / 2)
    loss.backward()
    # overshoot into the clamp: no gradient; undershoot (even past the other end, where the clamp has none): pushed
    assert x_hat.grad.tolist() == pytest.approx([0, 1 / 6, 0, -1 / 6, 1 / 6, -1 / 6])
    with pytest.raises(Exception, match="recon_loss"):
        reconstruction_loss(x_hat, x, "l3", 1.0)


def test_saturated_l1_training_reaches_the_decoder():
    torch.manual_seed(0)
    model = VQSVAE(VQSVAEConfig(hidden=(8, 16), latent_channels=8, codebook_size=16, time_steps=4,
                                recon_loss="saturated_l1"))
    x = (torch.rand(8, 1, 28, 28) > 0.7).float() - 0.5  # binary images: every pixel at an end of the range
    out = model(x)
    out["recon"].backward()
    assert out["recon"] > 0
    for name in ("readout.weight", "decoder.0.synapse.0.weight", "encoder.0.synapse.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_neuron_constants_come_from_the_run_config():
    """tau / v_threshold of the config reach every LIF of the model and the exported NIR graph."""
    import nir

    from spkdiff.export.nir_graphs import build_stage_graphs
    from spkdiff.train.sdid import SDID, SDIDConfig

    neuron = {"tau": 3.0, "v_threshold": 0.75, "v_reset": 0.0}
    vq = VQSVAE(VQSVAEConfig(hidden=(8, 16), latent_channels=8, codebook_size=16, time_steps=2, neuron=neuron))
    sdid = SDID(SDIDConfig(num_codes=16, channels=8, blocks=1, time_steps=2, neuron=neuron))
    lifs = [m for m in [*vq.modules(), *sdid.modules()] if hasattr(m, "params") and isinstance(m.params, LIFParams)]
    assert lifs and all(m.params.tau == 3.0 and m.params.v_threshold == 0.75 for m in lifs)
    for stage in build_stage_graphs(vq.eval(), sdid.eval()).values():
        nodes = [n for n in stage.graph.nodes.values() if isinstance(n, nir.LIF)]
        assert nodes and all(float(n.tau.flat[0]) == 3.0 and float(n.v_threshold.flat[0]) == 0.75 for n in nodes)
    with pytest.raises(Exception, match="tau > 1"):
        VQSVAE(VQSVAEConfig(neuron={"tau": 0.5}))
    with pytest.raises(Exception, match="unknown neuron"):
        SDID(SDIDConfig(neuron={"tau_mem": 2.0}))
