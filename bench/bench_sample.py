"""Sampling throughput (torch backend), side by side in one run, medians of several repeats.

The paper schedule (T_d = 49 denoiser calls, 1/t unmasking) and the confidence sampler (S calls) on the
same SDID, plus the reference-size analog-input SDID of the authors' code under the paper schedule.

    python bench/bench_sample.py [--run RUN_DIR | --preset fast] [--n 64] [--steps 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_train import ReferenceSDID, interleaved_rates

from spkdiff.config import load_preset
from spkdiff.generation import SamplerSettings
from spkdiff.host import MaskSampler
from spkdiff.train.sampling import generate_images
from spkdiff.train.sdid import SDID, SDIDConfig
from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="trained run (default: untrained models of --preset)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.run:
        from spkdiff.config import resolve_run
        from spkdiff.train.loop import load_stage

        run = resolve_run(args.run)  # a path or pretrained:NAME
        vq, sdid = load_stage(run, "vqsvae"), load_stage(run, "sdid")
    else:
        preset = load_preset(args.preset)
        vq = VQSVAE(VQSVAEConfig.from_dict(preset["vqsvae"]["model"])).eval()
        sdid = SDID(SDIDConfig.from_dict(preset["sdid"]["model"])).eval()
    configs: dict[str, tuple] = {}
    for name, method, steps in [("paper schedule (49 calls)", "paper", None),
                                (f"paper 1/t rule, {args.steps} calls (fast preset)", "paper", args.steps),
                                (f"confidence sampler ({args.steps} calls)", "confidence", args.steps)]:
        configs[name] = (lambda m=method, s=steps: generate_images(vq, sdid, args.n, SamplerSettings(m, s, 1.0),
                                                                   batch_size=args.n), args.n)

    ref = ReferenceSDID().eval()
    sampler = MaskSampler(128, 49, None, "paper")
    n_ref = max(4, args.n // 8)

    @torch.no_grad()
    def reference():
        sampler.sample(ref, n_ref, (7, 7), torch.Generator().manual_seed(0))

    configs["reference analog SDID, paper schedule (denoiser only)"] = (reference, n_ref)
    results = interleaved_rates(configs, args.repeats)  # images/s, medians of rounds taken in turn
    print(f"{'sampler':55s} {'images/s':>10s}")
    for name, rate in results.items():
        print(f"{name:55s} {rate:10.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
