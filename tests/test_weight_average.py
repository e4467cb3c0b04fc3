"""The exponential moving average of the trained weights (``ema_decay``, spkdiff.train.loop.WeightAverage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_on_tokens_of, tiny_preset, train_sdid
from safetensors import safe_open

from spkdiff.train.loop import WeightAverage


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_average_follows_the_warmed_up_decay() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    model.register_buffer("counter", torch.tensor([7.0]))
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    average.update(model, step=0)  # d = min(0.5, 1/10) = 0.1: 0.1 * 1 + 0.9 * 3 = 2.8
    with torch.no_grad():
        model.weight.fill_(5.0)
    average.update(model, step=20)  # d = min(0.5, 21/30) = 0.5: 0.5 * 2.8 + 0.5 * 5 = 3.9
    state = average.averaged_state(model)
    assert state["weight"].item() == pytest.approx(3.9)
    assert state["counter"].item() == 7.0  # buffers are the trained model's
    assert model.weight.item() == 5.0  # the trained weights are untouched


def test_ema_run_ships_the_average_trains_as_without_and_resumes_exactly(
        tiny_run: Path, shared_data_root: Path, tmp_path: Path) -> None:
    plain_preset = tiny_preset(tmp_path, "sdid")
    ema_preset = tiny_preset(tmp_path, "sdid", ema_decay=0.9)
    plain, whole, halves = (run_on_tokens_of(tiny_run, tmp_path / name) for name in ("plain", "whole", "halves"))
    assert train_sdid(plain, plain_preset, shared_data_root) == 0
    assert train_sdid(whole, ema_preset, shared_data_root) == 0
    assert train_sdid(halves, ema_preset, shared_data_root, "--max-steps", "5") == 0
    assert train_sdid(halves, ema_preset, shared_data_root, "--resume") == 0

    trained = _tensors(plain / "sdid.safetensors")
    averaged = _tensors(whole / "sdid.safetensors")
    online = {k[len("train/" + WeightAverage.PREFIX):]: v for k, v in averaged.items()
              if k.startswith("train/" + WeightAverage.PREFIX)}
    weights = {k[len("model/"):]: v for k, v in trained.items() if k.startswith("model/")}
    assert weights and set(online) == set(weights)
    # the average only watches: the online weights are bit-identical to a run without it
    assert all(torch.equal(online[k], weights[k]) for k in weights)
    shipped = {k[len("model/"):]: v for k, v in averaged.items() if k.startswith("model/")}
    assert any(not torch.equal(shipped[k], weights[k]) for k in weights if k.endswith("weight"))
    # what export and sampling load is the average
    from spkdiff.train.loop import load_stage
    loaded = load_stage(whole, "sdid").state_dict()
    assert all(torch.equal(loaded[k], shipped[k]) for k in loaded)

    resumed = _tensors(halves / "sdid.safetensors")
    assert set(resumed) == set(averaged)
    differ = [k for k in averaged if k.startswith(("model/", "train/")) and not torch.equal(averaged[k], resumed[k])]
    assert not differ, f"{len(differ)} tensors differ after --resume, e.g. {differ[:3]}"


def test_ema_decay_out_of_range_is_one_line(tiny_run: Path, shared_data_root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = run_on_tokens_of(tiny_run, tmp_path / "bad")
    assert train_sdid(run, tiny_preset(tmp_path, "sdid", ema_decay=1.0), shared_data_root) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ema_decay must be in [0, 1)" in err[0]


def test_resuming_a_plain_run_with_ema_is_refused(tiny_run: Path, shared_data_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint without online weights cannot continue an average: its weights are the trained ones."""
    run = run_on_tokens_of(tiny_run, tmp_path / "plain")
    assert train_sdid(run, tiny_preset(tmp_path, "sdid"), shared_data_root, "--max-steps", "2") == 0
    config = json.loads((run / "config.json").read_text())
    config["sdid"]["train"]["ema_decay"] = 0.9  # --resume reads the run's own config
    (run / "config.json").write_text(json.dumps(config))
    assert train_sdid(run, tiny_preset(tmp_path, "sdid"), shared_data_root, "--resume") == 2
    assert "trained without ema_decay" in capsys.readouterr().err
