"""Wall time per image: the generative loop as one Lava graph and run (isolated process) vs the simulator.

Usage: python bench/bench_lava_sampling.py BUNDLE [--n 2] [--steps 8] [--float]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from spkdiff.neuromorphic.lava_generate import lava_job
    from spkdiff.neuromorphic.lava_runner import run_isolated
    from spkdiff.simulator.generate import generate

    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--float", action="store_true")
    a = p.parse_args()
    fixed = not a.float
    t = time.perf_counter()
    ref = generate(a.path, a.n, steps=a.steps, seed=0, fixed=fixed, count=False)
    ref_img, ref_tok = ref.images, ref.tokens
    sim_total = time.perf_counter() - t
    t = time.perf_counter()
    img, tok, info = run_isolated(lava_job, a.path, a.n, a.steps, None, None, 0, fixed, 256, timeout=1800)
    lava_total = time.perf_counter() - t
    same = bool(torch.equal(torch.from_numpy(tok), ref_tok)) and bool(torch.equal(torch.from_numpy(img), ref_img))
    print(f"n={a.n} steps={a.steps} {'fixed' if fixed else 'float'}: identical tokens+images: {same}")
    print(f"simulator: loop {ref.seconds / a.n:.3f} s/image, incl. loading {sim_total / a.n:.3f} s/image")
    print(f"lava:      run {info['seconds'] / a.n:.3f} s/image ({info['lava_steps']} Lava steps in one run, "
          f"{info['seconds'] / info['lava_steps'] * 1e3:.1f} ms/step; steps per call {info['lava_steps_per_call']}); "
          f"compile {info['seconds_compile']:.1f} s; incl. process start, loading and compiling "
          f"{lava_total / a.n:.3f} s/image")


if __name__ == "__main__":
    main()
