"""How much of stage 1's reconstruction error is the codebook's: decode test images from z^Q and from z^E itself.

    python bench/quality/quantizer_probe.py --run pretrained:fashion-mnist --n 1000 --data-root ../shared/data

The tokens pass two narrow places: the encoder's features z^E (Eq 4-6) and the codebook lookup z^Q = Z[h_0]
(Eq 7-8). Decoding z^E directly (the ASG and decoder as trained, fed the unquantized features: an unlimited
codebook, on a decoder that never saw z^E) bounds what a larger codebook could buy; if its test MSE is close to the
codebook's, the encoder's features, not the lookup, limit the reconstructions. A diagnosis only: nothing is
selected on it. Also reports the codebook's squared error relative to one code at z^E's mean (0 lossless, 1
nothing kept), the perplexity and the dead codes. One JSON row per run is printed and appended to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spkdiff.config import read_json, resolve_run
from spkdiff.data import load_tensor
from spkdiff.train.loop import load_stage
from spkdiff.train.sampling import codebook_usage
from spkdiff.train.vqsvae import VQSVAE


@torch.no_grad()
def probe(vq: VQSVAE, images: torch.Tensor, batch_size: int = 250) -> dict[str, float]:
    """Images in [0, 1] -> test MSE (pixels in [0, 1]) decoded through the codebook and from z^E, the codebook's
    squared error ||z^E - z^Q||^2 over that of a single code at z^E's mean vector (0: lossless, 1: keeps nothing),
    and the codebook's perplexity and dead codes on these images."""
    vq.eval()
    sums = {"mse_codebook": 0.0, "mse_features": 0.0, "quantization_error": 0.0, "feature_energy": 0.0}
    tokens, features = [], []
    for batch in (images - 0.5).split(batch_size):
        z_e = vq.features(vq.encode_spikes(batch))
        batch_tokens, z_q = vq.quantize(z_e)
        for key, z in (("mse_codebook", z_q), ("mse_features", z_e)):
            x_hat = vq.decode_spikes(vq.asg_spikes(z)).clamp(-0.5, 0.5)
            sums[key] += float((x_hat - batch).square().sum())
        sums["quantization_error"] += float((z_e - z_q).square().sum())
        tokens.append(batch_tokens)
        features.append(z_e)
    z_e = torch.cat(features).transpose(0, 1).flatten(1)  # (C, all positions of all images)
    spread = float((z_e - z_e.mean(1, keepdim=True)).square().sum())  # the error of one code at their mean
    n_pixels = images.numel()
    return {"mse_codebook": sums["mse_codebook"] / n_pixels, "mse_features": sums["mse_features"] / n_pixels,
            "relative_quantization_error": sums["quantization_error"] / spread,
            **codebook_usage(torch.cat(tokens), vq.cfg.codebook_size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", required=True, help="run directories or pretrained:NAME")
    parser.add_argument("--n", type=int, default=1000, help="the first N test images")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_quantizer_probe.jsonl"))
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    for run in args.run:
        run_dir = resolve_run(run)
        dataset = read_json(run_dir / "config.json", "run config")["dataset"]
        images, _ = load_tensor(dataset, args.data_root, "test", limit=args.n)
        start = time.perf_counter()
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run": run,
               "what": f"the first {args.n} test images", **probe(load_stage(run_dir, "vqsvae"), images),
               "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps(row))
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
