"""Throughput and per-image counts of the generative loop: torch vs simulator float vs simulator fixed.

    python bench/bench_sim_generate.py --run runs/mnist-fast [--bundle B] [--n 64] [--batch-size 64]

Exports a lava bundle to a temp folder when none is given; prints images/s (wall) and CPU seconds per
image (process time, meaningful on a shared machine) of each backend, whether the simulator's float
tokens equal torch's, and SOPs / neuron updates / energy per image (loihi, cmos45nm ANN).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from spkdiff.config import resolve_run
    from spkdiff.generation import SamplerSettings
    from spkdiff.simulator.generate import generate
    from spkdiff.simulator.report import build_report
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import generate_images

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from spkdiff.export.command import export

            bundle = Path(tmp) / "bundle"
            t0 = time.perf_counter()
            export(args.run, "lava", bundle)
            print(f"export --target lava: {time.perf_counter() - t0:.1f} s")
        results = {}
        gens = {}
        for name, fixed in (("sim", False), ("sim-fixed", True)):
            c0 = time.process_time()
            g = generate(bundle, args.n, fixed=fixed, seed=args.seed, batch_size=args.batch_size)
            cpu = time.process_time() - c0
            gens[name] = g
            rep = build_report(g)
            results[name] = {"images_per_s": args.n / g.seconds, "cpu_s_per_image": cpu / args.n,
                             "per_image": rep["per_image"],
                             "energy_uj": rep["energy_per_image"]["total_j"] * 1e6,
                             "ann_energy_uj": rep["energy_per_image"]["ann_total_j"] * 1e6,
                             "per_stage": {s: e["per_image"] for s, e in rep["stages"].items()},
                             "warnings": g.warnings[:5]}
        s = gens["sim"].settings
        run = resolve_run(args.run)  # a path or pretrained:NAME
        vq, sdid = load_stage(run, "vqsvae"), load_stage(run, "sdid")
        t0, c0 = time.perf_counter(), time.process_time()
        settings = SamplerSettings(s["method"], s["steps"], s["temperature"])
        images, tokens, _ = generate_images(vq, sdid, args.n, settings, seed=args.seed, batch_size=args.batch_size)
        results["torch"] = {"images_per_s": args.n / (time.perf_counter() - t0),
                            "cpu_s_per_image": (time.process_time() - c0) / args.n}
        results["sim"]["tokens_equal_torch"] = bool(torch.equal(tokens, gens["sim"].tokens))
        results["sim"]["max_image_diff_vs_torch"] = float((images - gens["sim"].images).abs().max())
        results["sim-fixed"]["token_agreement_vs_torch"] = float((tokens == gens["sim-fixed"].tokens).float().mean())
        results["sim-fixed"]["mean_image_diff_vs_torch"] = float((images - gens["sim-fixed"].images).abs().mean())
        results["settings"] = s
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
