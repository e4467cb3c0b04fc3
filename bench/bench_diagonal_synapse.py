"""Lava wall time per step of a one-to-one delayed connection (a residual skip of the SDID): spkdiff's
``DiagonalSynapse`` vs Lava's ``DelayDense`` with the diagonal weight matrix, side by side, fixed_pt.

Each graph is ``RingBuffer(spikes) -> connection -> Sink``, run alone in a fresh isolated child; the script
alternates the two ``--repeats`` times and reports medians.

Usage: python bench/bench_diagonal_synapse.py [--n 4704] [--delay 2] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def time_steps(kind: str, n: int, delay: int, steps: int) -> float:
    """Seconds per Lava step of the graph with connection ``kind`` ("diagonal" or "delay_dense")."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import DelayDense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    from spkdiff.neuromorphic.lava_procs.processes import DiagonalSynapse

    rng = np.random.default_rng(0)
    weights = rng.integers(-128, 128, n).astype(np.int32)
    src = Source(data=(rng.random((n, steps)) < 0.05).astype(np.int32))
    if kind == "diagonal":
        conn = DiagonalSynapse(weights=weights, delay=delay, weight_exp=0, num_weight_bits=8)
    else:
        conn = DelayDense(weights=np.diag(weights), delays=delay, weight_exp=0, num_weight_bits=8)
    sink = Sink(shape=(n,), buffer=steps)
    src.s_out.connect(conn.s_in)
    conn.a_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    try:
        src.run(condition=RunSteps(num_steps=1), run_cfg=cfg)  # compile and start outside the timing
        t = time.perf_counter()
        src.run(condition=RunSteps(num_steps=steps - 1), run_cfg=cfg)
        return (time.perf_counter() - t) / (steps - 1)
    finally:
        src.stop()


def main() -> None:
    from bench_diagonal_synapse import time_steps as job  # by module name: the isolated child unpickles it

    from spkdiff.neuromorphic.lava_runner import run_isolated

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4704, help="neurons (the 96-channel SDID on a 7x7 grid: 4704)")
    p.add_argument("--delay", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    times: dict[str, list[float]] = {"diagonal": [], "delay_dense": []}
    for _ in range(a.repeats):
        for kind in times:
            times[kind].append(run_isolated(job, kind, a.n, a.delay, a.steps, timeout=1200))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"n={a.n} delay={a.delay}, {a.steps} steps, median of {a.repeats}:")
    for kind, sec in med.items():
        print(f"  {kind:12s} {sec * 1e3:8.2f} ms/step")
    print(f"  DelayDense / DiagonalSynapse: {med['delay_dense'] / med['diagonal']:.1f}x")


if __name__ == "__main__":
    main()
