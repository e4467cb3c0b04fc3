"""Dead-code restarts in stage 1 (``codebook_restart_every``, spkdiff.train.vqsvae.restart_unused_codes_)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_preset

from spkdiff.checkpoint import load_checkpoint
from spkdiff.cli import main
from spkdiff.data import load_tensor
from spkdiff.train.loop import load_stage
from spkdiff.train.vqsvae import restart_unused_codes_


def test_only_unused_codes_move_onto_batch_features_and_restart_their_moments() -> None:
    torch.manual_seed(0)
    codebook = torch.nn.Parameter(torch.randn(8, 4))
    opt = torch.optim.AdamW([codebook], lr=1e-2)
    codebook.sum().backward()
    opt.step()  # every row has Adam moments now
    before = codebook.detach().clone()
    z_e = torch.randn(2, 4, 3, 3)
    tokens = torch.tensor([0, 1, 2, 1, 0]).repeat(4)[:18].view(2, 3, 3)  # codes 3..7 unused
    moved = restart_unused_codes_(codebook, z_e, tokens, opt, torch.Generator().manual_seed(1))
    assert moved == 5
    assert torch.equal(codebook[:3], before[:3])
    features = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    picked = [int((features == row).all(1).nonzero()) for row in codebook.detach()[3:]]
    assert len(set(picked)) == 5  # each a distinct feature vector of the batch
    state = opt.state[codebook]
    for moment in ("exp_avg", "exp_avg_sq"):
        assert (state[moment][3:] == 0).all() and (state[moment][:3] != 0).all()
    used = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]).repeat(3)[:18].view(2, 3, 3)
    assert restart_unused_codes_(codebook, z_e, used, opt, torch.Generator()) == 0


def _codes_in_use(run: Path, images: torch.Tensor) -> int:
    # BatchNorm on the batch's statistics, as in training: a 12-step run's running statistics have not settled.
    model = load_stage(run, "vqsvae").train()
    with torch.no_grad():
        return int(model.encode_tokens(images).unique().numel())


def test_restarts_bring_dead_codes_back_and_resume_exactly(tmp_path: Path, shared_data_root: Path) -> None:
    # The paper's uniform codebook init in +-1/K: the nearest-neighbour lookup settles on a few codes.
    common = ["train", "--stage", "vqsvae", "--data-root", str(shared_data_root), "--epochs", "2", "--limit", "96"]
    plain = tiny_preset(tmp_path, "vqsvae", codebook_init="uniform")
    restarted = tiny_preset(tmp_path, "vqsvae", codebook_init="uniform", codebook_restart_every=2,
                            codebook_restart_until=0.7)
    assert main([*common, "--preset", str(plain), "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--preset", str(restarted), "--out", str(tmp_path / "full")]) == 0
    images, _ = load_tensor("mnist", str(shared_data_root), "train", limit=96)
    in_use_plain = _codes_in_use(tmp_path / "plain", images - 0.5)
    in_use_restarted = _codes_in_use(tmp_path / "full", images - 0.5)
    assert in_use_restarted > in_use_plain
    # Interrupted between restarts and resumed: the same weights as the uninterrupted run.
    part = tmp_path / "part"
    assert main([*common, "--preset", str(restarted), "--out", str(part), "--max-steps", "5"]) == 0
    assert main([*common, "--preset", str(restarted), "--out", str(part), "--resume"]) == 0
    a = load_checkpoint(tmp_path / "full" / "vqsvae.safetensors").model
    b = load_checkpoint(part / "vqsvae.safetensors").model
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize(("train", "message"), [
    ({"codebook_restart_every": -1}, "codebook_restart_every must be >= 0"),
    ({"codebook_restart_every": 2, "codebook_restart_until": 1.5}, "codebook_restart_until must be a fraction"),
])
def test_bad_restart_settings_are_one_line(tmp_path: Path, shared_data_root: Path,
                                           capsys: pytest.CaptureFixture[str], train: dict, message: str) -> None:
    preset = tiny_preset(tmp_path, "vqsvae", **train)
    rc = main(["train", "--stage", "vqsvae", "--preset", str(preset), "--data-root", str(shared_data_root),
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err


def test_restarts_are_refused_when_the_codebook_is_held(tiny_run: Path, shared_data_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    preset = tiny_preset(tmp_path, "vqsvae", codebook_restart_every=2, train_parts="generator")
    rc = main(["train", "--stage", "vqsvae", "--preset", str(preset), "--data-root", str(shared_data_root),
               "--init-from", str(tiny_run), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "codebook_restart_every needs train_parts all" in err
