"""``python -m spkdiff.train.ship``: a shipped run carries no machine-local path (spkdiff.train.ship)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from spkdiff.checkpoint import load_checkpoint
from spkdiff.errors import SpkdiffError
from spkdiff.eval.evaluate import results_markdown
from spkdiff.train.ship import portable_config, portable_text, repo_root, ship

ROOT = Path("/home/me/checkout")


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_absolute_and_home_paths_become_portable() -> None:
    assert portable_config("/root/spkdiff-runs/mnist7-sdid-more2", ROOT) == "runs/mnist7-sdid-more2"
    assert portable_config("/root/spkdiff-runs/presets/p.yaml", ROOT) == "runs/p.yaml"
    assert portable_config("/root/spkdiff-runs/mle/", ROOT) == "runs/mle"
    assert portable_config("~/spkdiff-runs/fle", ROOT) == "runs/fle"
    assert portable_config("~", None) == f"runs/{Path.home().name}"
    assert portable_config(f"{ROOT}/bench/prior/preset_sdid_more_epochs.yaml", ROOT) == \
        "bench/prior/preset_sdid_more_epochs.yaml"
    assert portable_config(f"{ROOT}/runs/../runs/a", ROOT) == "runs/a"
    assert portable_config(f"{ROOT}-other/x", ROOT) == "runs/x"  # a sibling folder is not inside the checkout
    assert portable_config(f"{ROOT}/bench/x.yaml", None) == "runs/x.yaml"  # no checkout: an installed package


@pytest.mark.parametrize("value", ["runs/mnist-l1", "bench/prior/p.yaml", "./x", "pretrained:mnist", "fast",
                                   "paper", "", "a/b ~c", 3, 0.5, None, True])
def test_relative_paths_and_other_values_are_kept(value: Any) -> None:
    assert portable_config(value, ROOT) == value


def test_nested_dicts_and_lists_are_rewritten_without_touching_the_input() -> None:
    config = {"preset": "/root/r/presets/p.yaml", "seed": 0, "betas": [0.9, 0.999],
              "sdid": {"train": {"init_from": "/root/r/mle", "sources": ["~/r/a", "runs/b", {"c": "/x/c"}]},
                       "sample": {"method": "paper"}}}
    before = json.loads(json.dumps(config))
    assert portable_config(config, ROOT) == {
        "preset": "runs/p.yaml", "seed": 0, "betas": [0.9, 0.999],
        "sdid": {"train": {"init_from": "runs/mle", "sources": ["runs/a", "runs/b", {"c": "runs/c"}]},
                 "sample": {"method": "paper"}}}
    assert config == before


def test_text_gets_the_run_parent_as_runs(tmp_path: Path) -> None:
    run = tmp_path / "spkdiff-runs" / "mnist7"
    text = f"spkdiff eval --run {run} --out {run}/eval; cp {run.parent}/other/x .; {tmp_path}/elsewhere"
    assert portable_text(text, run) == f"spkdiff eval --run runs/mnist7 --out runs/mnist7/eval; " \
        f"cp runs/other/x .; {tmp_path}/elsewhere"
    assert portable_text("/a/b", Path("/run")) == "/a/b"  # a run at the root: "/" is never rewritten


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_ship_writes_no_absolute_path_and_the_same_weights(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "spkdiff-runs" / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tb", "*.npy"))
    config = json.loads((run / "config.json").read_text())
    root = repo_root()  # None for an installed package: then every absolute path becomes runs/NAME
    config["preset"] = str((root or tmp_path) / "bench" / "prior" / "preset_sdid_more_epochs.yaml")
    config["sdid"]["train"]["init_from"] = str(tmp_path / "spkdiff-runs" / "source")
    config["vqsvae"]["train"]["init_from"] = "~/spkdiff-runs/stage1"
    (run / "config.json").write_text(json.dumps(config))
    texts = {"metrics.json": json.dumps({"run": str(run), "rows": [{"fid": 27.9, "samples": f"{run}/eval/a.png"}]}),
             "commands.md": f"spkdiff train --out {run} --init-from {run.parent}/source\n"}
    for name, text in texts.items():
        (run / name).write_text(text)

    dest = ship(run, "tiny", dest_root=tmp_path / "package")
    assert dest == tmp_path / "package" / "pretrained" / "tiny"
    shipped = json.loads((dest / "config.json").read_text())
    assert shipped["preset"] == ("bench/prior/" if root else "runs/") + "preset_sdid_more_epochs.yaml"
    assert shipped["sdid"]["train"]["init_from"] == "runs/source"
    assert shipped["vqsvae"]["train"]["init_from"] == "runs/stage1"
    assert not [s for s in _strings(shipped) if s.startswith(("/", "~"))]
    # nothing else changed
    assert portable_config(config, root) == shipped

    for stage in ("vqsvae", "sdid"):
        ckpt = load_checkpoint(dest / f"{stage}.safetensors", stage=stage)
        assert ckpt.config == shipped  # the checkpoint metadata carries the same portable config
        assert str(tmp_path).encode() not in (dest / f"{stage}.safetensors").read_bytes()
        source = {k: v for k, v in _tensors(run / f"{stage}.safetensors").items() if k.startswith("model/")}
        target = _tensors(dest / f"{stage}.safetensors")
        assert set(target) == set(source)  # weights only: no optimizer, RNG or training-only state
        assert all(target[k].dtype == source[k].dtype and torch.equal(target[k], source[k]) for k in source)
        assert ckpt.position == load_checkpoint(run / f"{stage}.safetensors", stage=stage).position

    for name in texts:
        text = (dest / name).read_text()
        assert str(tmp_path) not in text and "runs/tiny" in text
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics == {"run": "runs/tiny", "rows": [{"fid": 27.9, "samples": "runs/tiny/eval/a.png"}]}
    assert (dest / "commands.md").read_text() == "spkdiff train --out runs/tiny --init-from runs/source\n"
    # results.md is rendered from the shipped rows, so it cannot disagree with metrics.json
    assert (dest / "results.md").read_text() == results_markdown(metrics["rows"])
    assert "runs/tiny/eval/a.png" in (dest / "results.md").read_text()


def test_a_text_the_run_lacks_is_removed_not_left_from_the_previous_model(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tb", "*.npy"))
    for name in ("metrics.json", "results.md", "commands.md"):
        (run / name).unlink(missing_ok=True)
    (run / "metrics.json").write_text(json.dumps({"rows": [{"fid": 80.0}]}))
    dest = ship(run, "tiny", dest_root=tmp_path / "package")
    assert sorted(p.name for p in dest.iterdir() if p.suffix != ".safetensors") == \
        ["config.json", "metrics.json", "results.md"]

    (run / "metrics.json").write_text(json.dumps({"rows": [{"fid": 60.0}]}))  # a new model with its own rows
    (run / "commands.md").write_text("spkdiff train\n")
    ship(run, "tiny", dest_root=tmp_path / "package")
    assert "| 60 |" in (dest / "results.md").read_text() and "80" not in (dest / "results.md").read_text()
    (run / "commands.md").unlink()  # and one without commands: the previous model's commands go
    (run / "metrics.json").unlink()
    ship(run, "tiny", dest_root=tmp_path / "package")
    assert not (dest / "commands.md").exists() and not (dest / "metrics.json").exists()
    assert not (dest / "results.md").exists()


def test_a_bad_metrics_file_replaces_nothing(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tb", "*.npy"))
    (run / "metrics.json").write_text(json.dumps({"rows": [{"fid": 60.0}]}))
    dest = ship(run, "tiny", dest_root=tmp_path / "package")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(SpkdiffError, match="metrics.json is not a metrics file"):
        ship(run, "tiny", dest_root=tmp_path / "package")
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
