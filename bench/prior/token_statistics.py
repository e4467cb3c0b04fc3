"""Screen sampler settings without the yardsticks (no Inception network, no classifier): token statistics in the
model's own token space, and precision / recall of the grids and of the decoded pixels.

    python bench/prior/token_statistics.py --run pretrained:fashion-mnist --temperatures 0.6,0.8,1.0 \
        --n 1000 --steps 12 --data-root ../shared/data
    python bench/prior/token_statistics.py --run RUN --methods paper,coarse --steps 12,24,49 --temperatures 0.9 ...
    python bench/prior/token_statistics.py --run RUN --steps 24 --temperatures 0.8 --remask 0.02,0.05 ...

Samples N token grids per sampler setting (method x denoiser calls x temperature x remasking rate; torch
backend; by default the run's own method, calls and remasking) and compares them with the token grids of N
held-out test images (the encoder's tokens, as the prior was trained on the train split's) and the images:
- ``layout``: the mean over grid positions of the Jensen-Shannon divergence (bits) between the generated and the
  real histograms of the code at that position (where things are);
- ``pairs``: the Jensen-Shannon divergence between the generated and the real histograms of neighbouring code
  pairs, horizontal and vertical, pooled over the grid (local coherence: which codes sit side by side).
A cold sampler concentrates on frequent codes (``layout`` grows), a hot one breaks neighbourhoods (``pairs``
grows); the setting with the smallest sum matches the held-out grids best.
- ``latent P / R``: improved precision and recall (k = 3, as the image metric) of the grids' codebook
  embeddings z^Q (Eq 8), flattened: the fraction of generated grids near a held-out one (precision) and of
  held-out grids near a generated one (recall). The divergences pool over grids and cannot see a sampler that
  collapses onto fewer grids; the latent recall can.
- ``pixel P / R``: the same for the decoded images against the held-out images themselves, as raw pixel vectors
  in [0, 1]. No Inception network: a screen that sees the precision / recall trade (it moved the same way as the
  Inception P / R on every sampler pair gated so far), never the judge.
The row ``real`` compares the test images N..2N with the first N: the floor that finite N sets. Sampling noise is of the
same size as the differences between priors (the shipped Fashion-MNIST prior's sum is 0.0911 at seed 0 and 0.0982 at
seed 1, N = 1000): rank with ``--seeds 0,1,...``, which adds a mean ± std row per setting. Rows append to
bench/prior/results_token_statistics.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from spkdiff import validate

RESULTS = Path(__file__).with_name("results_token_statistics.jsonl")


def js_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between histograms along the last axis (counts or probabilities)."""
    p = p / p.sum(-1, keepdim=True)
    q = q / q.sum(-1, keepdim=True)
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a / m).log2(), torch.zeros_like(a)).sum(-1)

    return (kl(p) + kl(q)) / 2


def layout_divergence(real: torch.Tensor, fake: torch.Tensor, codes: int) -> float:
    """Mean over positions of JS(real codes at the position, generated codes at the position)."""
    def hist(tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.flatten(1).T  # (positions, N)
        return torch.zeros(flat.shape[0], codes).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float))

    return float(js_bits(hist(real), hist(fake)).mean())


def pair_divergence(real: torch.Tensor, fake: torch.Tensor, codes: int) -> float:
    """JS between the pooled histograms of horizontally and vertically neighbouring code pairs."""
    def hist(tokens: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([(tokens[:, :, :-1] * codes + tokens[:, :, 1:]).flatten(),
                           (tokens[:, :-1, :] * codes + tokens[:, 1:, :]).flatten()])
        return torch.bincount(pairs, minlength=codes * codes).float()

    return float(js_bits(hist(real), hist(fake)))


def latent_precision_recall(real: torch.Tensor, fake: torch.Tensor, codebook: torch.Tensor) -> tuple[float, float]:
    """Improved precision / recall (k = 3) of token grids (N, H, W) compared as their embeddings z^Q (Eq 8)."""
    from spkdiff.eval.metrics import precision_recall

    return precision_recall(codebook[real].flatten(1), codebook[fake].flatten(1), k=3)


def pixel_precision_recall(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float]:
    """Improved precision / recall (k = 3) of images (N, C, H, W) in [0, 1] as raw pixel vectors."""
    from spkdiff.eval.metrics import precision_recall

    return precision_recall(real.float().flatten(1), fake.float().flatten(1), k=3)


SCORES = ("layout", "pairs", "sum", "latent_precision", "latent_recall", "pixel_precision", "pixel_recall")


def seed_mean(rows: list[dict]) -> dict:
    """One setting's rows over several seeds → their mean and (sample) standard deviation per score."""
    mean = {key: value for key, value in rows[0].items() if key not in SCORES + ("seed", "seconds")}
    for key in SCORES:
        values = torch.tensor([row[key] for row in rows], dtype=torch.float64)
        mean[key], mean[key + "_std"] = float(values.mean()), float(values.std())
    return {**mean, "seeds": [row["seed"] for row in rows], "seconds": sum(row["seconds"] for row in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--temperatures", type=validate.comma_separated(validate.temperature), default=[0.6, 0.8, 1.0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=validate.comma_separated(validate.steps), default=[None],
                        help="denoiser calls, comma-separated (default: the run's own)")
    parser.add_argument("--methods", type=validate.comma_separated(str), default=[None],
                        help="samplers, comma-separated (default: the run's own)")
    parser.add_argument("--remask", type=validate.comma_separated(validate.probability), default=[None],
                        help="ReMDM-cap remasking rates of the paper sampler, comma-separated (default: the run's own)")
    parser.add_argument("--seeds", "--seed", dest="seeds", type=validate.comma_separated(validate.int_in(0)),
                        default=[0], help="sampling seeds, comma-separated: each setting is sampled once per "
                        "seed; with several, a mean ± std row follows (one seed's sum moves by ~0.007 at N = 1000)")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    from spkdiff.backends import sample_images
    from spkdiff.config import read_run_config, resolve_run
    from spkdiff.data import load_tensor
    from spkdiff.train.loop import encode_dataset, load_stage

    run_dir = resolve_run(args.run)
    config = read_run_config(run_dir)
    vq = load_stage(run_dir, "vqsvae")
    codes = vq.cfg.codebook_size
    test, _ = load_tensor(config["dataset"], args.data_root, "test", limit=2 * args.n)
    tokens = encode_dataset(vq, test)
    real, other = tokens[: args.n].long(), tokens[args.n:].long()
    codebook = vq.codebook.detach()
    real_images, other_images = test[: args.n], test[args.n:]

    def scores(fake: torch.Tensor, images: torch.Tensor) -> dict:
        precision, recall = latent_precision_recall(real, fake, codebook)
        pixel_precision, pixel_recall = pixel_precision_recall(real_images, images)
        layout, pairs = layout_divergence(real, fake, codes), pair_divergence(real, fake, codes)
        # sum: the screen's single number (smaller matches the held-out grids better)
        return {"layout": layout, "pairs": pairs, "sum": layout + pairs,
                "latent_precision": precision, "latent_recall": recall,
                "pixel_precision": pixel_precision, "pixel_recall": pixel_recall}

    rows = [{"temperature": "real", **scores(other, other_images)}]
    for method, steps, temperature, remask in itertools.product(args.methods, args.steps, args.temperatures,
                                                                args.remask):
        setting = []
        for seed in args.seeds:
            start = time.perf_counter()
            images, fake, info = sample_images("torch", run=args.run, n=args.n, steps=steps, method=method,
                                               temperature=temperature, remask=remask, seed=seed)
            setting.append({"temperature": temperature, **scores(fake.long(), images),
                            "steps": info["denoiser_calls"], "method": info["method"],
                            "remask": info["remask"], "seed": seed, "seconds": time.perf_counter() - start})
        rows += setting
        if len(setting) > 1:
            rows.append(seed_mean(setting))
    print(f"{args.run} ({config['dataset']}), N = {args.n} generated vs {args.n} held-out test grids")
    print("| temperature | method | calls | remask | layout JS (bits) | pairs JS (bits) | sum | latent P / R "
          "| pixel P / R |\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "seeds" in row:  # the mean of the rows above it: std after each value
            cells = [f"{row[key]:.4f} ± {row[key + '_std']:.4f}" for key in ("layout", "pairs", "sum")] + [
                f"{row[a]:.3f} ± {row[a + '_std']:.3f} / {row[b]:.3f} ± {row[b + '_std']:.3f}"
                for a, b in (("latent_precision", "latent_recall"), ("pixel_precision", "pixel_recall"))]
            label = f"mean of seeds {','.join(map(str, row['seeds']))}"
        else:
            cells = [f"{row['layout']:.4f}", f"{row['pairs']:.4f}", f"{row['sum']:.4f}",
                     f"{row['latent_precision']:.3f} / {row['latent_recall']:.3f}",
                     f"{row['pixel_precision']:.3f} / {row['pixel_recall']:.3f}"]
            label = row["temperature"] if "seed" not in row or len(args.seeds) == 1 else \
                f"{row['temperature']} (seed {row['seed']})"
        print(f"| {label} | {row.get('method', '')} | {row.get('steps', '')} | {row.get('remask', '')} | "
              + " | ".join(cells) + " |")
    with RESULTS.open("a") as f:
        for row in rows:
            f.write(json.dumps({"run": args.run, "dataset": config["dataset"], "n": args.n, **row}) + "\n")


if __name__ == "__main__":
    main()
