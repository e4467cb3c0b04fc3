"""Split a recall gap between the decoder and the prior: FID / KID / precision / recall of reconstructions.

    python bench/quality/recon_precision_recall.py --run pretrained:fashion-mnist --n 1000 --data-root ../shared/data

Reconstructs the first N *training* images (independent of the test split, so they stand on the same footing as N
samples) and scores them against the full test split with the standard Inception (k = 3), beside the same N real
training images as the floor. If the reconstructions' recall is no higher than the samples' at the same N, the
recall gap is stage 1's, not the prior's. A diagnosis only: nothing is selected on it. One JSON row per run is
printed and appended to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from spkdiff.config import read_json, resolve_run
from spkdiff.data import load_tensor
from spkdiff.eval.evaluate import evaluate_images
from spkdiff.train.loop import load_stage
from spkdiff.train.sampling import reconstruct

METRICS = ("fid", "kid", "pr")


@functools.cache
def real_floor(dataset: str, n: int, data_root: str | None) -> dict:
    """The same N real training images' scores: computed once per dataset, however many runs are scored."""
    images, _ = load_tensor(dataset, data_root, "train", limit=n)
    floor = evaluate_images(images, dataset, data_root, metrics=METRICS, progress=False)
    return {f"real_{key}": floor[key] for key in ("fid", "kid", "precision", "recall")}


def score(run: str, n: int, data_root: str | None) -> dict:
    run_dir = resolve_run(run)
    dataset = read_json(run_dir / "config.json", "run config")["dataset"]
    images, _ = load_tensor(dataset, data_root, "train", limit=n)
    with torch.no_grad():
        recon, _ = reconstruct(load_stage(run_dir, "vqsvae"), images)  # already in [0, 1]
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run": run,
           "what": f"reconstructions of the first {n} training images"}
    row.update(evaluate_images(recon, dataset, data_root, metrics=METRICS, progress=False))
    row.update(real_floor(dataset, n, data_root))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", required=True, help="run directories or pretrained:NAME")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_recon_precision_recall.jsonl"))
    args = parser.parse_args()
    if args.n < 10:
        parser.error(f"--n must be at least 10 (precision/recall need k = 3 neighbours), got {args.n}")
    for run in args.run:
        row = score(run, args.n, args.data_root)
        print(json.dumps(row))
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
