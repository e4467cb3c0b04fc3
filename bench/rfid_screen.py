"""Screen stage-1 models by reconstruction quality before paying for sample FID (issue: sharp reconstructions).

For each run: reconstruct the first N test images, then report MSE, 1 - SSIM, the pixel statistics that FID on
28x28 digits punishes (background that is not exactly black, faint haze, mid-tones), and the FID of the
reconstructions against a fixed seeded subset of N real test images (protocol std; ``--protocols`` adds others);
``--sample-steps S`` scores N samples of the run against the same real features too.
Every run is scored against the same real features, so the numbers compare across runs; they are a screening
number (N real, not the whole test split), not the headline rFID of ``spkdiff eval --metrics rfid``.

    python bench/rfid_screen.py --runs pretrained:mnist ~/spkdiff-runs/mnist-l1 --n 2000 --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spkdiff import validate
from spkdiff.config import SAMPLER_METHODS


def pixel_statistics(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Where the reference is background (0): the share of exact zeros and of pixels > 0.02; mid-tones overall."""
    bg = reference == 0
    return {"bg_exact_zero": float((images[bg] == 0).float().mean()),
            "bg_above_0.02": float((images[bg] > 0.02).float().mean()),
            "midtones": float(((images > 0.1) & (images < 0.9)).float().mean()),
            "midtones_real": float(((reference > 0.1) & (reference < 0.9)).float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--protocols", type=validate.comma_separated(str), default=["std"])
    ap.add_argument("--json", default=None, help="append one JSON line per run here")
    ap.add_argument("--sample-steps", type=int, default=None,
                    help="also sample N images (torch, this many steps, seed 0) and score them against the same "
                         "real features (needs the run's stage 2)")
    ap.add_argument("--sample-method", default="paper", choices=SAMPLER_METHODS,
                    help="with --sample-steps: the sampler (paper: 1/t rule; confidence: MaskGIT order; "
                         "coarse: sub-lattice phases first)")
    ap.add_argument("--temperature", type=float, default=1.0, help="with --sample-steps: softmax temperature")
    ap.add_argument("--skip-reconstruction", action="store_true", help="with --sample-steps: samples only")
    args = ap.parse_args()
    if args.skip_reconstruction and not args.sample_steps:
        ap.error("--skip-reconstruction leaves nothing to score without --sample-steps")

    from spkdiff.config import read_json, resolve_run
    from spkdiff.data import load_tensor
    from spkdiff.eval.features import real_inception_features
    from spkdiff.eval.inception import inception_features
    from spkdiff.eval.metrics import frechet_distance, ssim_distance
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import reconstruct

    for run in args.runs:
        run_dir = resolve_run(run)
        dataset = read_json(run_dir / "config.json", "run config")["dataset"]
        t0 = time.perf_counter()
        row: dict = {"run": run, "dataset": dataset, "n": args.n}
        scored: dict[str, torch.Tensor] = {}
        if not args.skip_reconstruction:
            test, _ = load_tensor(dataset, args.data_root, "test", limit=args.n)
            with torch.no_grad():
                recon, _ = reconstruct(load_stage(run_dir, "vqsvae"), test)
            row.update({"mse": float((recon - test).square().mean()), "1-ssim": ssim_distance(recon, test),
                        **pixel_statistics(recon, test)})
            scored["rfid"] = recon
        if args.sample_steps:
            from spkdiff.backends import sample_images

            scored["sfid"], _, _ = sample_images("torch", run=run, n=args.n, steps=args.sample_steps,
                                                 method=args.sample_method, temperature=args.temperature, seed=0)
            row.update(sample_steps=args.sample_steps, sample_method=args.sample_method,
                       temperature=args.temperature)
        for protocol in args.protocols:
            real = real_inception_features(dataset, args.data_root, split="test", n=args.n, protocol=protocol,
                                           progress=False)  # cached: computed once, shared by every run
            for name, images in scored.items():
                fake = inception_features(images, protocol=protocol, progress=False)
                row[f"{name}_{protocol}_vs_{args.n}_real"] = float(frechet_distance(real, fake))
        row["seconds"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
