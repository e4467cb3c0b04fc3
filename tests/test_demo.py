"""`make demo` as it runs (its defaults) on the shipped model: export, fixed-point simulation, one Lava image.

The demo's output for seed 0 is pinned by a digest (tokens, image pixels, report counts and energy) in
``tests/data/demo_digest.json``: a change of behaviour shows up here.  After an intended change (a new shipped
model, new energy constants) rewrite it with ``python tests/test_demo.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from spkdiff.demo import run_demo

DIGEST = Path(__file__).parent / "data" / "demo_digest.json"


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def demo_digest(paths: dict[str, Path]) -> dict:
    """What must not change: the tokens and pixels of both backends, each stage's counts, the energy."""
    report = json.loads((paths["report"] / "report.json").read_text())
    counts = {stage: {k: round(v, 3) for k, v in entry["per_image"].items()}
              for stage, entry in report["stages"].items()}
    return {
        "sim_tokens": _sha(np.load(paths["report"] / "tokens.npy").astype(np.int64)),
        "sim_pixels": _sha(np.asarray(Image.open(paths["grid"]))),
        "lava_tokens": _sha(np.load(paths["lava"].with_suffix(".tokens.npy")).astype(np.int64)),
        "lava_pixels": _sha(np.asarray(Image.open(paths["lava"]))),
        "counts_per_image": counts,
        "energy_j_per_image": float(f"{report['energy_per_image']['total_j']:.9g}"),
    }


def test_demo_steps_on_the_shipped_model(tmp_path: Path):
    paths = run_demo("pretrained:mnist", tmp_path)  # make demo's own settings
    manifest = json.loads((paths["bundle"] / "manifest.json").read_text())
    assert manifest["target"] == "lava"
    assert np.asarray(Image.open(paths["grid"])).std() > 10  # images, not a blank canvas
    assert np.asarray(Image.open(paths["lava"])).std() > 10

    # the report is consistent: positive, finite, and every total is the sum of its parts
    report = json.loads((paths["report"] / "report.json").read_text())
    energy = report["energy_per_image"]
    for stage, entry in report["stages"].items():
        per_image = entry["per_image"]
        assert per_image["sops"] > 0 and per_image["neuron_updates"] > 0, stage
        assert all(math.isfinite(v) and v >= 0 for v in per_image.values()), stage
        for key in ("sops", "neuron_updates", "spikes"):
            layers = sum(row[key] for row in entry["layers"])
            assert math.isclose(layers, per_image[key], rel_tol=1e-9), (stage, key, layers, per_image[key])
        stage_j = sum(energy["per_stage_j"][stage].values())
        layers_j = sum(sum(ops.values()) for ops in energy["per_layer_j"][stage].values())
        assert stage_j > 0 and math.isclose(layers_j, stage_j, rel_tol=1e-9), (stage, layers_j, stage_j)
    total = sum(sum(ops.values()) for ops in energy["per_stage_j"].values())
    assert energy["total_j"] > 0 and math.isclose(total, energy["total_j"], rel_tol=1e-9)
    assert math.isclose(sum(energy["per_op_j"].values()), energy["total_j"], rel_tol=1e-9)
    assert math.isclose(energy["ratio_vs_ann"], energy["ann_total_j"] / energy["total_j"], rel_tol=1e-9)  # x below

    tokens = np.load(paths["lava"].with_suffix(".tokens.npy"))
    assert tokens.shape == (1, 7, 7) and tokens.max() < 128
    # the demo's output for seed 0 is unchanged
    assert demo_digest(paths) == json.loads(DIGEST.read_text())


if __name__ == "__main__":  # rewrite the stored digest after an intended change
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digest = demo_digest(run_demo("pretrained:mnist", Path(tmp)))
    DIGEST.write_text(json.dumps(digest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGEST}", file=sys.stderr)
