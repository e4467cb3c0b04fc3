"""Distilling a trained prior into a cheaper one (``distill_from`` / ``distill_weight`` in ``sdid.train``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_on_tokens_of, tiny_preset, train_sdid

from spkdiff.checkpoint import load_checkpoint, save_checkpoint
from spkdiff.errors import SpkdiffError
from spkdiff.train.loop import TrainSettings, _sdid_step
from spkdiff.train.sdid import SDID, SDIDConfig, distillation_loss, loss_weight


def test_distillation_loss_by_hand():
    """Zero when the student predicts the teacher's distribution; otherwise the weighted KL at masked positions."""
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)
    masked = torch.zeros(2, 3, 3, dtype=torch.bool)
    masked[0, 1, 2] = masked[1, 0, 0] = True
    t = torch.tensor([10, 30])
    assert distillation_loss(teacher, teacher, masked, t, 49).item() == pytest.approx(0.0, abs=1e-7)
    p = F.softmax(teacher, 1)
    kl = (p * (p.log() - F.log_softmax(student, 1))).sum(1)
    w = loss_weight(t, 49)
    expected = (w[0] * kl[0, 1, 2] + w[1] * kl[1, 0, 0]) / (math.log(2) * 9) / 2
    assert distillation_loss(student, teacher, masked, t, 49).item() == pytest.approx(expected.item(), rel=1e-5)
    unmasked_change = student.clone()
    unmasked_change[0, :, 0, 0] += 5.0  # a position that is not masked does not count
    assert distillation_loss(unmasked_change, teacher, masked, t, 49).item() == pytest.approx(expected.item(),
                                                                                               rel=1e-5)


def _cfg(channels: int, time_steps: int) -> SDIDConfig:
    return SDIDConfig(num_codes=16, channels=channels, blocks=1, time_steps=time_steps, diffusion_steps=49,
                      time_bins=7)


def _held_out_kl(student: SDID, teacher: SDID) -> float:
    tokens = torch.randint(0, 16, (32, 7, 7), generator=torch.Generator().manual_seed(3))
    t = torch.full((32,), 30)
    masked = torch.ones(32, 7, 7, dtype=torch.bool)
    h_t = torch.full_like(tokens, 16)
    with torch.no_grad():
        return float(distillation_loss(student(h_t, t), teacher(h_t, t), masked, t, 49))


def test_distillation_pulls_a_narrow_student_towards_its_teacher():
    """A narrower T = 1 student trained through the real step with the teacher's KL ends much closer to the
    teacher's predictions than the same student trained on the tokens alone."""
    torch.manual_seed(0)
    teacher = SDID(_cfg(24, 2)).eval().requires_grad_(False)
    data = torch.randint(0, 16, (32, 7, 7), generator=torch.Generator().manual_seed(2))

    def train(settings: TrainSettings) -> float:
        torch.manual_seed(1)
        student = SDID(_cfg(8, 1))
        opt = torch.optim.Adam(student.parameters(), lr=1e-2)
        step = _sdid_step(settings, teacher if settings.distill_weight else None)
        gen = torch.Generator().manual_seed(1)
        for i in range(30):
            out = step(student, data, gen, i)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        if settings.distill_weight:
            assert "distill" in out["stats"]
        return _held_out_kl(student.eval(), teacher)

    plain, distilled = train(TrainSettings()), train(TrainSettings(distill_from="teacher", distill_weight=20.0))
    assert distilled < 0.5 * plain, (plain, distilled)


def test_distillation_run_logs_the_kl_and_refuses_bad_teachers(
        tiny_run: Path, shared_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tiny_preset(tmp_path, "sdid", distill_from=str(tiny_run), distill_weight=1.0, log_every=1)
    student = run_on_tokens_of(tiny_run, tmp_path / "student")
    assert train_sdid(student, preset, shared_data_root, "--max-steps", "2") == 0
    with open(student / "sdid_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["distill"]) > 0 for r in rows)
    capsys.readouterr()

    # a teacher on another stage 1 predicts other tokens
    other = run_on_tokens_of(tiny_run, tmp_path / "other")
    ckpt = load_checkpoint(other / "vqsvae.safetensors", stage="vqsvae")
    save_checkpoint(other / "vqsvae.safetensors", model=dict(ckpt.model) | {"codebook": ckpt.model["codebook"] + 0.25},
                    config=ckpt.config, stage="vqsvae")
    assert train_sdid(other, preset, shared_data_root, "--max-steps", "1") != 0
    err = capsys.readouterr().err.strip()
    assert "predicts other tokens" in err and len(err.splitlines()) == 1

    half = tiny_preset(tmp_path, "sdid", distill_weight=1.0)
    assert train_sdid(run_on_tokens_of(tiny_run, tmp_path / "half"), half, shared_data_root) != 0
    err = capsys.readouterr().err.strip()
    assert "needs both distill_from" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["sop_weight", "adversarial_weight", "distill_weight"])
def test_negative_loss_weights_are_refused(name: str) -> None:
    """A negative weight would reward the very thing its term penalises; it is refused by name in one line."""
    with pytest.raises(SpkdiffError, match=rf"^{name} must be >= 0") as err:
        TrainSettings.from_dict({name: -0.5})
    assert "\n" not in str(err.value)
    assert getattr(TrainSettings.from_dict({name: 0.5}), name) == 0.5
