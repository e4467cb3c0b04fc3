"""Seconds per call of the fixed_pt Conv model's convolution: Lava 0.10's ``conv_scipy`` (one
``scipy.signal.convolve2d`` per channel pair) vs spkdiff's exact ``conv_exact`` (one matrix product), side by side
on the shipped models' layer shapes, with the outputs checked equal.  Medians of ``--repeats`` alternations.

Usage: python bench/bench_lava_conv.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

# (name, input XYC, output channels, kernel, padding): spike inputs at the shipped models' firing rates (~10 %)
LAYERS = [
    ("SDID block conv, 7x7, 128 -> 128", (7, 7, 128), 128, 3, 1),
    ("grown generator dec1, 28x28, 128 -> 64", (28, 28, 128), 64, 3, 1),
    ("grown generator read-out, 28x28, 64 -> 1", (28, 28, 64), 1, 3, 1),
]


def main() -> None:
    from spkdiff.neuromorphic.lava_compat import ensure_lava
    from spkdiff.neuromorphic.lava_conv import conv_exact

    ensure_lava()
    from lava.proc.conv.utils import conv_scipy

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    for name, shape, n_out, k, pad in LAYERS:
        x = rng.random(shape) < 0.1
        w = rng.integers(-255, 256, size=(n_out, k, k, shape[-1])).astype(np.int32)
        args = ((k, k), (1, 1), (pad, pad), (1, 1), 1)
        times: dict[str, list[float]] = {"lava conv_scipy": [], "spkdiff conv_exact": []}
        for _ in range(a.repeats):
            t = time.perf_counter()
            expected = conv_scipy(x, w, *args)
            times["lava conv_scipy"].append(time.perf_counter() - t)
            t = time.perf_counter()
            got = conv_exact(conv_scipy, x, w, *args)
            times["spkdiff conv_exact"].append(time.perf_counter() - t)
            assert np.array_equal(got, expected), name
        med = {kind: statistics.median(v) for kind, v in times.items()}
        print(f"{name}: " + ", ".join(f"{kind} {sec * 1e3:.2f} ms" for kind, sec in med.items())
              + f"; {med['lava conv_scipy'] / med['spkdiff conv_exact']:.0f}x, outputs equal")


if __name__ == "__main__":
    main()
