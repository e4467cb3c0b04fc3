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
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="spkdiff-bench-") as tmp:
        bundle = Path(tmp) / "bundle"
        runs = [
            ["-c", "import sys; from spkdiff.cli import export_main; sys.exit(export_main(sys.argv[1:]))",
             "--run", "pretrained:mnist", "--target", "lava", "--out", str(bundle)],
            [str(HERE / "bench_lava_conv.py")],
            [str(HERE / "bench_diagonal_synapse.py")],
            [str(HERE / "bench_simulator.py")],
            [str(HERE / "bench_sim_generate.py"), "--run", "pretrained:mnist", "--bundle", str(bundle)],
            [str(HERE / "bench_lava_sampling.py"), str(bundle)],
            [str(HERE / "bench_sample.py")],
            [str(HERE / "bench_train.py")],
            [str(HERE / "bench_allocator.py")],
        ]
        failed = []
        for args in runs:
            name = "spkdiff-export" if args[0] == "-c" else Path(args[0]).name
            print(f"\n== {name}", flush=True)
            t = time.perf_counter()
            if subprocess.run([sys.executable, *args], cwd=HERE.parent).returncode != 0:
                failed.append(name)
                if args[0] == "-c":  # no bundle: the benchmarks that read it cannot run
                    break
            print(f"== {name}: {time.perf_counter() - t:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
