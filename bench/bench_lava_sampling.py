"""Wall time per image: the generative loop (or, with --reconstruct, the reconstruction route: encoder -> host
lookup -> generator) as one Lava graph and run (isolated process) vs the simulator.

Usage: python bench/bench_lava_sampling.py BUNDLE [--n 2] [--steps 8] [--float] [--reconstruct --data-root D]
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
    p.add_argument("--reconstruct", action="store_true", help="time reconstructions of the first n test images")
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset", default="mnist", help="test images to reconstruct (the bundle's dataset)")
    a = p.parse_args()
    fixed = not a.float
    if a.reconstruct:
        reconstruction(a.path, a.n, fixed, a.dataset, a.data_root)
        return
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


def reconstruction(bundle: str, n: int, fixed: bool, dataset: str, data_root: str | None) -> None:
    from spkdiff.backends import reconstruct_images
    from spkdiff.data import load_arrays, resolve_data_root

    images = torch.tensor(load_arrays(dataset, resolve_data_root(data_root), "test")[0][:n]).float() / 255
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    sim = "sim-fixed" if fixed else "sim"
    t = time.perf_counter()
    ref, ref_tok, ref_info, _ = reconstruct_images(sim, images, bundle=bundle, fixed=fixed)
    sim_total = time.perf_counter() - t
    t = time.perf_counter()
    rec, tok, info, _ = reconstruct_images("lava", images, bundle=bundle, fixed=fixed, timeout=1800)
    lava_total = time.perf_counter() - t
    same = all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in ((tok, ref_tok), (rec, ref)))
    print(f"reconstruction, n={n} {'fixed' if fixed else 'float'} ({dataset}): identical tokens+images: {same}")
    print(f"simulator: {sim_total / n:.3f} s/image incl. loading; info {ref_info}")
    print(f"lava:      {lava_total / n:.3f} s/image incl. process start, loading and compiling; info {info}")


if __name__ == "__main__":
    main()
