"""A classifier two-sample test (C2ST): choose decoders and the sampler temperature with no FID Inception network
and no CFD classifier.

    python bench/quality/c2st.py --runs RUN_A RUN_B --what reconstructions --data-root ../shared/data
    python bench/quality/c2st.py --runs RUN --what samples --temperatures 0.6,0.7,0.8,0.9,1.0 --data-root ../shared/data

A small convolutional classifier, trained from scratch for each comparison, learns to tell real training images
from model images; its accuracy on held-out images of both kinds is the statistic (Lopez-Paz & Oquab, "Revisiting
classifier two-sample tests", ICLR 2017). 0.5 means the classifier finds no difference; every kind of flaw it can
see (haze, soft or ragged edges, broken strokes, off-manifold shapes, too little variety at a cold temperature)
raises it. No pretrained network is involved, and only the train split is read, so the test split that the
yardsticks use is never looked at.

- ``reconstructions``: the run's reconstructions of training images N..2N (encoder, lookup, generator) against the
  real training images 0..N: judges a stage 1 (a decoder's sharpness).
- ``samples``: N images sampled by the run (torch backend, 12 steps by default, seed 0) at each temperature
  against the real training images 0..N: judges the sampler with its decoder.
- the row ``real``: real training images N..2N against 0..N, the floor (about 0.5). It depends only on the dataset
  and the test's sizes and seeds (the test is deterministic), so a row already in the results file is reused and
  printed as recorded; ``--recompute-real`` measures it again.

Of the N = ``--n-train`` + ``--n-test`` images per kind, the classifier trains on ``--n-train`` of each and is
scored on the other ``--n-test`` of each; ``--seeds`` repeats (classifier initialisation and batch order) are
averaged. Rows (mean, standard deviation over seeds, held-out log-loss) append to bench/quality/results_c2st.jsonl.

Decision rule for the sampler temperature, fixed before any sample was scored (sixteenth session): on the run
whose decoder and prior the other rules chose, sample at 0.5, 0.6, 0.7, 0.8, 0.9 and 1.0; the temperature with
the lowest mean held-out accuracy wins. Power, measured first (MNIST, one seed): real vs real 0.455; real vs the
same images under a 3x3 Gaussian blur of sigma 0.6 px 0.999; real vs the shipped MNIST decoder's reconstructions
0.466. At this N the test cannot tell the decoders' reconstructions from real images. With more images it can:
``--n-train 10000 --n-test 2000`` (one seed) scores the shipped MNIST decoder (`runs/mnist-s14`) 0.925 against
real vs real 0.523. Decision rule for decoders, fixed then, before any other decoder was scored: with
``--what reconstructions --n-train 10000 --n-test 2000 --seeds 2``, the decoder with the lowest mean held-out
accuracy wins (it replaces reconstruction error, which cannot prefer an adversarial fine-tune).
Decision rule for the number of denoiser calls, fixed before any sample was scored at another step count
(seventeenth session): on the shipped run at its own temperature, sample at 12, 24 and 49 steps (``--steps
12,24,49``, seeds 5); the fewest steps whose mean held-out accuracy is within one seed standard deviation (the
larger of the two rows') of the lowest mean wins, since every call costs energy on the chip.
Decision rule for decoders, revised (seventeenth session, after three Fashion-MNIST decoders tied at 0.975-0.977
with seed spreads of 0.006-0.016: at that level the statistic alone has no power), for decoders first scored after
it: decoders whose mean held-out accuracy is within one seed standard deviation (the larger of the two rows') of
the lowest are tied, and among tied decoders the lowest reconstruction MSE on the test split wins (``spkdiff eval
--metrics mse,ssim --n 10000``, the rule of the fourteenth session).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from spkdiff import validate

RESULTS = Path(__file__).with_name("results_c2st.jsonl")


def critic(channels: int) -> nn.Sequential:
    """The two-sample classifier: three strided 3x3 convolutions and a linear read-out (logit "model image")."""
    width = (16, 32, 64)
    return nn.Sequential(
        nn.Conv2d(channels, width[0], 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(width[0], width[1], 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(width[1], width[2], 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.LazyLinear(1))


def two_sample_test(real: torch.Tensor, model: torch.Tensor, n_train: int, seed: int, epochs: int = 5,
                    batch_size: int = 100) -> dict[str, float]:
    """Train :func:`critic` on the first ``n_train`` images of each kind, score the rest.

    Returns the held-out accuracy and mean binary log-loss (nats); 0.5 / ln 2 when the kinds are indistinguishable.
    """
    if real.shape[1:] != model.shape[1:] or min(real.shape[0], model.shape[0]) <= n_train:
        raise ValueError(f"need images of one shape and more than n_train = {n_train} of each kind, got "
                         f"{tuple(real.shape)} and {tuple(model.shape)}")
    torch.manual_seed(seed)
    net = critic(real.shape[1])
    x_train = torch.cat([real[:n_train], model[:n_train]]) - 0.5
    y_train = torch.cat([torch.zeros(n_train), torch.ones(n_train)])
    x_test = torch.cat([real[n_train:], model[n_train:]]) - 0.5
    y_test = torch.cat([torch.zeros(real.shape[0] - n_train), torch.ones(model.shape[0] - n_train)])
    net(x_train[:1])  # materialise the lazy read-out before the optimiser sees the parameters
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for batch in torch.randperm(x_train.shape[0]).split(batch_size):
            optimiser.zero_grad()
            loss_fn(net(x_train[batch]).squeeze(1), y_train[batch]).backward()
            optimiser.step()
    with torch.no_grad():
        logits = torch.cat([net(chunk) for chunk in x_test.split(500)]).squeeze(1)
    return {"accuracy": float(((logits > 0).float() == y_test).float().mean()),
            "log_loss": float(nn.functional.binary_cross_entropy_with_logits(logits, y_test))}


def repeated_test(real: torch.Tensor, model: torch.Tensor, n_train: int, seeds: int) -> dict[str, float]:
    """:func:`two_sample_test` over seeds 0..seeds-1: mean and standard deviation of the accuracy, mean log-loss."""
    runs = [two_sample_test(real, model, n_train, seed) for seed in range(seeds)]
    accuracy = [r["accuracy"] for r in runs]
    return {"accuracy": statistics.mean(accuracy), "accuracy_std": statistics.stdev(accuracy) if seeds > 1 else 0.0,
            "log_loss": statistics.mean(r["log_loss"] for r in runs)}


def recorded_real_row(results: Path, dataset: str, n_train: int, n_test: int, seeds: int) -> dict | None:
    """The latest real-vs-real row of ``results`` measured with these settings, or None.

    The row is the same whatever the candidates are, so a decoder rule need not spend ~100 s remeasuring it.
    """
    if not results.exists():
        return None
    wanted = {"dataset": dataset, "run": "real", "n_train": n_train, "n_test": n_test, "seeds": seeds}
    found = None
    for line in results.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if all(row.get(k) == v for k, v in wanted.items()):
            found = row
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--what", choices=("reconstructions", "samples"), required=True)
    parser.add_argument("--temperatures", type=validate.comma_separated(validate.temperature), default=[None],
                        help="samples: comma-separated (default: the run's own)")
    parser.add_argument("--steps", type=validate.comma_separated(validate.steps), default=[12],
                        help="samples: denoiser calls, comma-separated (default 12)")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--recompute-real", action="store_true",
                        help="measure the real-vs-real floor even if results_c2st.jsonl already holds it")
    args = parser.parse_args()

    from spkdiff.backends import sample_images
    from spkdiff.config import read_run_config, resolve_run
    from spkdiff.data import load_tensor
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import reconstruct

    n = args.n_train + args.n_test
    configs = {run: read_run_config(resolve_run(run)) for run in args.runs}
    datasets = {config["dataset"] for config in configs.values()}
    if len(datasets) != 1:
        raise SystemExit(f"c2st: the runs must share one dataset, got {', '.join(sorted(datasets))}")
    dataset = datasets.pop()
    train, _ = load_tensor(dataset, args.data_root, "train", limit=2 * n)
    real, other = train[:n], train[n:]
    recorded = None if args.recompute_real else recorded_real_row(RESULTS, dataset, args.n_train, args.n_test,
                                                                  args.seeds)
    candidates: list[tuple[dict, torch.Tensor]] = [] if recorded else [({"run": "real"}, other)]
    for run in args.runs:
        if args.what == "reconstructions":
            images, _ = reconstruct(load_stage(resolve_run(run), "vqsvae"), other)
            candidates.append(({"run": run}, images))
            continue
        for temperature in args.temperatures:
            for steps in args.steps:
                images, _, info = sample_images("torch", run=run, n=n, steps=steps, temperature=temperature, seed=0)
                candidates.append(({"run": run, "temperature": info["temperature"], "steps": info["denoiser_calls"]},
                                   images))
    print(f"C2ST ({dataset}, {args.what}): {args.n_train} + {args.n_train} training, {args.n_test} + {args.n_test} "
          f"held-out images, {args.seeds} seeds")
    print("| candidate | held-out accuracy (mean ± std) | log-loss (nats) |\n|---|---|---|")
    if recorded:
        print(f"| real (recorded in {RESULTS.name}) | {recorded['accuracy']:.4f} ± {recorded['accuracy_std']:.4f} | "
              f"{recorded['log_loss']:.4f} |", flush=True)
    with RESULTS.open("a") as f:
        for key, images in candidates:
            start = time.perf_counter()
            row = {"dataset": dataset, "what": args.what, **key, "n_train": args.n_train, "n_test": args.n_test,
                   "seeds": args.seeds, **repeated_test(real, images.float(), args.n_train, args.seeds)}
            row["seconds"] = time.perf_counter() - start
            f.write(json.dumps(row) + "\n")
            f.flush()
            label = " ".join(str(v) for k, v in key.items() if k != "steps")
            if len(args.steps) > 1 and "steps" in key:
                label += f" {key['steps']} steps"
            print(f"| {label} | {row['accuracy']:.4f} ± {row['accuracy_std']:.4f} | {row['log_loss']:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
