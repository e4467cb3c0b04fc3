"""bench/quality/training_cost.py: a recipe's CPU time, read from its trainings' checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import load_bench_script

from spkdiff.checkpoint import load_checkpoint, save_checkpoint


def load_tool():
    return load_bench_script("quality/training_cost.py")


def test_training_cost_sums_the_checkpoints_cpu_seconds(tiny_run: Path, capsys: pytest.CaptureFixture[str]):
    tool = load_tool()
    positions = [load_checkpoint(tiny_run / f"{stage}.safetensors", stage=stage).position
                 for stage in ("vqsvae", "sdid")]
    assert all(p["cpu_s"] > 0 and p["step"] == p["total"] for p in positions)
    assert tool.main([f"{tiny_run}:vqsvae", f"{tiny_run}:sdid"]) == 0
    out = capsys.readouterr().out
    spent = float(re.search(r"total: ([0-9.]+) CPU-minutes spent", out).group(1))
    assert spent == pytest.approx(sum(p["cpu_s"] for p in positions) / 60, abs=0.05)
    assert "within the budget of 180 CPU-minutes" in out and "incomplete" not in out
    # a budget below what was spent is reported as over it
    assert tool.main([f"{tiny_run}:vqsvae", "--budget-cpu-hours", "1e-9"]) == 0
    assert "over the budget" in capsys.readouterr().out


def test_training_cost_projects_an_incomplete_training(tiny_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    """A stopped training is projected to its last step at its own cost per step."""
    tool = load_tool()
    ckpt = load_checkpoint(tiny_run / "sdid.safetensors", stage="sdid")
    run = tmp_path / "stopped"
    run.mkdir()
    save_checkpoint(run / "sdid.safetensors", model=ckpt.model, config=ckpt.config, stage="sdid",
                    position={"step": 10, "total": 40, "cpu_s": 60.0, "wall_s": 70.0})
    cost = tool.training_cost(run, "sdid")
    assert not cost.complete and cost.cpu_s_per_step == 6.0 and cost.projected_cpu_s == 240.0
    assert tool.main([f"{run}:sdid", "--budget-cpu-hours", str(3 / 60)]) == 0
    out = capsys.readouterr().out
    assert "10 / 40 (incomplete: 4.0 CPU-min projected)" in out
    assert "1.0 CPU-minutes spent, 4.0 projected" in out and "over the budget of 3 CPU-minutes" in out


def test_training_cost_bad_inputs_are_one_line_errors(tiny_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]):
    tool = load_tool()
    cases = {
        str(tiny_run): "expected RUN_DIR:STAGE",
        f"{tiny_run}:prior": "expected RUN_DIR:STAGE",
        f"{tmp_path}:vqsvae": "checkpoint not found",
    }
    for entry, message in cases.items():
        assert tool.main([entry]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert tool.main([f"{tiny_run}:sdid", f"{tiny_run}:sdid"]) == 2
    assert "named twice" in capsys.readouterr().err
    assert tool.main([f"{tiny_run}:sdid", "--budget-cpu-hours", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
