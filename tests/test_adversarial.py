"""The training-only adversarial term of stage 1 and the generator fine-tune (spkdiff.train.adversarial)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_PRESET, tiny_preset
from safetensors import safe_open

from spkdiff.cli import export_main, main
from spkdiff.train.adversarial import (
    PatchDiscriminator,
    adaptive_weight,
    discriminator_hinge_loss,
    generator_adversarial_loss,
)
from spkdiff.train.loop import load_stage
from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig


def _tiny_vq() -> VQSVAE:
    torch.manual_seed(0)
    cfg = yaml.safe_load(TINY_PRESET.read_text())["vqsvae"]["model"]
    return VQSVAE(VQSVAEConfig.from_dict(cfg))


def test_adversarial_gradient_reaches_the_decoder_and_not_the_discriminator() -> None:
    vq = _tiny_vq()
    disc = PatchDiscriminator(1, 8)
    x = torch.rand(4, 1, 28, 28) - 0.5
    out = vq(x)
    adv = generator_adversarial_loss(disc, out["x_hat"].clamp(-0.5, 0.5))
    adv.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # restored afterwards
    for name, layer in [("readout", vq.readout), ("decoder[0]", vq.decoder[0]),
                        ("encoder[0] (straight-through)", vq.encoder[0])]:
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no adversarial gradient reaches {name}"


def test_hinge_loss_and_adaptive_weight() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # relu(1 - 2) = 0, relu(1 - 0.5) = 0.5 -> 0.25; relu(1 - 3) = 0, relu(1 + 0) = 1 -> 0.5
    assert discriminator_hinge_loss(real, fake).item() == pytest.approx(0.75)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec, adv = (3 * w).sum(), (w * 4).sum() / 2  # gradients 3 and 2 per element
    assert adaptive_weight(rec, adv, w).item() == pytest.approx(1.5, rel=1e-4)


def _preset(tmp_path: Path, **train: object) -> Path:
    return tiny_preset(tmp_path, "vqsvae", **train)


def _train_vq(out: Path, preset: Path, data: Path, *extra: str) -> int:
    return main(["train", "--stage", "vqsvae", "--preset", str(preset), "--dataset", "mnist", "--out", str(out),
                 "--data-root", str(data), "--seed", "0", *extra])


def test_generator_finetune_keeps_tokens_and_never_exports_the_discriminator(
        tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    preset = _preset(tmp_path, init_from=str(tiny_run), train_parts="generator", adversarial_weight=0.5,
                     adversarial_start=4, discriminator_channels=8)
    run = tmp_path / "finetuned"
    assert _train_vq(run, preset, shared_data_root) == 0
    before, after = load_stage(tiny_run, "vqsvae"), load_stage(run, "vqsvae")
    images = torch.rand(16, 1, 28, 28)
    assert torch.equal(before.encode_tokens(images - 0.5), after.encode_tokens(images - 0.5))
    for name in ("encoder.0.synapse.0.weight", "codebook", "k"):
        assert torch.equal(before.state_dict()[name], after.state_dict()[name]), name
    assert not torch.equal(before.readout.weight, after.readout.weight)
    log = np.genfromtxt(run / "vqsvae_log.csv", delimiter=",", names=True)
    assert "disc" in log.dtype.names and "adv_weight" in log.dtype.names

    with safe_open(str(run / "vqsvae.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())  # noqa: SIM118
    disc_keys = [k for k in keys if k.startswith("train/")]
    assert disc_keys and not any(k.startswith("model/") and "net." in k for k in keys)
    # The exported bundle holds exactly the weights of a run trained without the discriminator.
    (run / "sdid.safetensors").write_bytes((tiny_run / "sdid.safetensors").read_bytes())
    (run / "config.json").write_bytes((tiny_run / "config.json").read_bytes())
    ours, plain = tmp_path / "bundle", tmp_path / "bundle_plain"
    assert export_main(["--run", str(run), "--target", "lava", "--out", str(ours)]) == 0
    assert export_main(["--run", str(tiny_run), "--target", "lava", "--out", str(plain)]) == 0
    assert _bundle_contents(ours) == _bundle_contents(plain)


def _bundle_contents(bundle: Path) -> dict[str, object]:
    """Every file of a bundle with its tensors' names and shapes (NIR nodes and their parameters)."""
    import nir

    contents: dict[str, object] = {}
    for path in sorted(bundle.iterdir()):
        if path.suffix == ".nir":
            graph = nir.read(str(path))
            contents[path.name] = {name: sorted((k, np.shape(v)) for k, v in vars(node).items()
                                                if isinstance(v, np.ndarray))
                                   for name, node in graph.nodes.items()}
        elif path.name.endswith(".safetensors"):
            with safe_open(str(path), framework="pt") as fh:
                contents[path.name] = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        else:
            contents[path.name] = None
    return contents


def test_adversarial_run_resumes_exactly(tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    preset = _preset(tmp_path, train_parts="generator", adversarial_weight=0.5, adversarial_start=3,
                     discriminator_channels=8, limit=96)
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    source = tmp_path / "source"  # removed before --resume: a resumed run needs only its own checkpoint
    shutil.copytree(tiny_run, source)
    assert _train_vq(whole, preset, shared_data_root, "--init-from", str(tiny_run)) == 0
    assert _train_vq(halves, preset, shared_data_root, "--init-from", str(source), "--max-steps", "2") == 0
    shutil.rmtree(source)
    assert _train_vq(halves, preset, shared_data_root, "--resume") == 0
    with safe_open(str(whole / "vqsvae.safetensors"), framework="pt") as a, \
            safe_open(str(halves / "vqsvae.safetensors"), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        differ = [k for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))]  # noqa: SIM118
    assert not differ, f"{len(differ)} tensors differ after --resume, e.g. {differ[:3]}"


def test_finetune_settings_are_checked(tiny_run: Path, shared_data_root: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    no_source = _preset(tmp_path, train_parts="generator")
    assert _train_vq(tmp_path / "a", no_source, shared_data_root) == 2
    assert "needs init_from" in capsys.readouterr().err
    other = yaml.safe_load(TINY_PRESET.read_text())
    other["vqsvae"]["model"]["codebook_size"] = 32
    other["vqsvae"]["train"]["init_from"] = str(tiny_run)
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    assert _train_vq(tmp_path / "b", path, shared_data_root) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in codebook_size" in err[0]
