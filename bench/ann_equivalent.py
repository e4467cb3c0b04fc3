"""The ANN-equivalent energy per generated image of shipped models, under the old and the current count.

    python bench/ann_equivalent.py pretrained:mnist pretrained:fashion-mnist ... --work DIR

Exports each run's bundle into DIR (kept for reuse) and prices one generated image's ANN equivalent on
``cmos45nm`` (4.6 pJ per MAC): the prior's graph once per denoiser call (the run's sampler), the generator's once.
Two counts of the same graphs:
- ``dense``: every (input, weight, output) triple of the lowered NIR graph, the simulator's count before the
  forty-third session. The exact ConvTranspose lowering runs each upsampling as a conv on the coarse grid whose
  weights hold the phase taps, most of them zero, so this counted multiplications by structural zeros;
- ``layers``: the weights that are non-zero in the float graph (the count since then), which equals the torch
  layers' dense MACs (``spkdiff.train.snn.dense_macs``; tests/test_bundle_sim.py checks it).
The spiking side's energy does not change (it always counted non-zero synapses). Rows append to
bench/results_ann_equivalent.jsonl; ``--record`` also appends each run's row to its own metrics.json (for a
shipped model: the package's), so the model's rows carry the recount beside the evaluations priced before it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spkdiff.config import read_run_config, resolve_run
from spkdiff.eval.evaluate import append_results_row
from spkdiff.export.command import export
from spkdiff.neuromorphic.bundle import load_bundle
from spkdiff.simulator.energy import load_profile
from spkdiff.simulator.generate import stage_simulator
from spkdiff.simulator.ops import SynapseOp

RESULTS = Path(__file__).with_name("results_ann_equivalent.jsonl")


def ann_millijoules(run: str, work: Path) -> dict:
    """One generated image's ANN-equivalent energy (mJ) per stage under both counts."""
    bundle_dir = work / run.replace(":", "_").replace("/", "_")
    if not (bundle_dir / "manifest.json").is_file():
        export(run, "lava", bundle_dir)
    bundle = load_bundle(bundle_dir)
    calls = read_run_config(resolve_run(run))["sdid"]["sample"]["steps"]
    pj = load_profile("cmos45nm").energy_pj
    row: dict = {"run": run, "denoiser_calls": calls, "profile": "cmos45nm"}
    for stage, passes in (("sdid", calls), ("generator", 1)):
        sim = stage_simulator(bundle, stage, fixed=False)
        dense = sum(float(op.fan_out(mask=False).sum()) for op in sim.ops.values()
                    if isinstance(op, SynapseOp) and op.ann_op == "mac")
        adds = sim.ann_adds * pj.get("add", 0.0)
        row[f"{stage}_dense_mj"] = passes * (dense * pj["mac"] + adds) * 1e-9
        row[f"{stage}_layers_mj"] = passes * (sim.ann_macs * pj["mac"] + adds) * 1e-9
    for count in ("dense", "layers"):
        row[f"{count}_mj"] = row[f"sdid_{count}_mj"] + row[f"generator_{count}_mj"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--work", type=Path, required=True, help="folder for the exported bundles")
    parser.add_argument("--record", action="store_true", help="also append each row to the run's metrics.json")
    args = parser.parse_args()
    print("| run | calls | ANN mJ per image, dense count (prior + generator) | layers' own MACs |\n|---|---|---|---|")
    with RESULTS.open("a") as f:
        for run in args.runs:
            r = ann_millijoules(run, args.work)
            f.write(json.dumps(r) + "\n")
            if args.record:
                append_results_row(resolve_run(run), {
                    "run": run, "backend": "sim", "sampler_steps": r["denoiser_calls"],
                    "energy_mj_per_image_ann_cmos45nm": r["layers_mj"],
                    "energy_mj_per_image_ann_cmos45nm_old_count": r["dense_mj"],
                    "note": "ANN-equivalent recount, bench/ann_equivalent.py (the rows above priced the lowered "
                            "graph's zero taps)"})
            print(f"| {run} | {r['denoiser_calls']} | {r['dense_mj']:.3f} ({r['sdid_dense_mj']:.3f} + "
                  f"{r['generator_dense_mj']:.3f}) | {r['layers_mj']:.3f} ({r['sdid_layers_mj']:.3f} + "
                  f"{r['generator_layers_mj']:.3f}) |")


if __name__ == "__main__":
    main()
