"""``make bench``: every speed benchmark of this folder, one after another, on the shipped MNIST model.

The quality scripts (FID, rFID screens, the energy front) are left out: each costs tens of minutes of Inception
features on a CPU and takes its own arguments (see README.md here).  A failing benchmark is reported and the rest
still run; the exit status says whether all passed.

Usage: python bench/run_all.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    from spkdiff.cli import export_main

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="spkdiff-bench-") as tmp:
        bundle = Path(tmp) / "bundle"
        if export_main(["--run", "pretrained:mnist", "--target", "lava", "--out", str(bundle)]) != 0:
            print("failed: spkdiff-export (the benchmarks that read the bundle cannot run)", file=sys.stderr)
            return 1
        runs = [
            ["bench_lava_conv.py"],
            ["bench_diagonal_synapse.py"],
            ["bench_simulator.py"],
            ["bench_sim_generate.py", "--run", "pretrained:mnist", "--bundle", str(bundle)],
            ["bench_lava_sampling.py", str(bundle)],
            ["bench_sample.py"],
            ["bench_train.py"],
            ["bench_allocator.py"],
        ]
        failed = []
        for script, *args in runs:
            print(f"\n== {script}", flush=True)
            t = time.perf_counter()
            if subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE.parent).returncode != 0:
                failed.append(script)
            print(f"== {script}: {time.perf_counter() - t:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
