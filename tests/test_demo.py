"""`make demo`'s steps at reduced size on the shipped model: export, fixed-point simulation, one Lava image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from spkdiff.demo import run_demo


def test_demo_steps_on_the_shipped_model(tmp_path: Path):
    paths = run_demo("pretrained:mnist", tmp_path, n=4, lava_images=1, steps=2, lava_steps=1)
    manifest = json.loads((paths["bundle"] / "manifest.json").read_text())
    assert manifest["target"] == "lava"
    grid = np.asarray(Image.open(paths["grid"]))
    assert grid.std() > 10  # images, not a blank canvas
    report = json.loads((paths["report"] / "report.json").read_text())
    assert "sdid" in json.dumps(report) and (paths["report"] / "report.md").stat().st_size > 200
    lava = np.asarray(Image.open(paths["lava"]))
    assert lava.std() > 10
    tokens = np.load(paths["lava"].with_suffix(".tokens.npy"))
    assert tokens.shape == (1, 7, 7) and tokens.max() < 128
