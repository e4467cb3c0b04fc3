"""``make demo``: the shipped MNIST model through the whole deployment path, on 2 CPU cores in minutes.

1. export the embedded model (``pretrained:mnist``) as a Lava deployment bundle;
2. simulated on-chip sampling of an image grid with the simulator's Loihi fixed-point mode, writing
   the energy / SOP / chip-mapping report;
3. one image through the Lava process graph (fixed_pt), under a timeout;
and prints where everything is.  No dataset and no network are needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from spkdiff.cli import export_main, main


def run_demo(run: str, out: Path, n: int = 16, lava_images: int = 1, steps: int | None = None,
             lava_steps: int | None = 4) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    bundle = out / "bundle"
    report = out / "report"
    paths = {"bundle": bundle, "report": report, "grid": report / "samples.png", "lava": out / "lava.png"}
    step_args = ["--steps", str(steps)] if steps else []
    # Lava simulates every process step by step (~tens of ms each): fewer diffusion steps keep it to minutes.
    lava_step_args = ["--steps", str(lava_steps or steps)] if (lava_steps or steps) else []

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise SystemExit(f"demo: {what} failed (exit {rc})")

    t0 = time.perf_counter()
    check(export_main(["--run", run, "--target", "lava", "--out", str(bundle), "--force"]), "export")
    print(f"[demo] exported {run} to {bundle} ({time.perf_counter() - t0:.0f} s)", flush=True)
    check(main(["sim", "--bundle", str(bundle), "--n", str(n), "--fixed", "--report", str(report), *step_args]),
          "simulated on-chip sampling")
    print(f"[demo] simulated {n} images in Loihi fixed point ({time.perf_counter() - t0:.0f} s)", flush=True)
    if lava_images:
        check(main(["sample", "--bundle", str(bundle), "--backend", "lava", "--fixed", "--n", str(lava_images),
                    "--out", str(paths["lava"]), *lava_step_args]), "Lava sampling")
        print(f"[demo] {lava_images} image(s) through Lava fixed_pt ({time.perf_counter() - t0:.0f} s)", flush=True)
    return paths


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spkdiff.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="pretrained:mnist")
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps for the simulator grid")
    parser.add_argument("--lava-steps", type=int, default=4, help="sampler steps for the Lava image")
    args = parser.parse_args(argv)
    paths = run_demo(args.run, Path(args.out), args.n, steps=args.steps, lava_steps=args.lava_steps)
    print("\nspkdiff demo finished:")
    for name, path in paths.items():
        print(f"  {name:7s} {path}")
    print(f"  read    {paths['report'] / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
