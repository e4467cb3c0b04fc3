"""``spkdiff sim``: run a NIR graph, or a bundle's whole generative loop, on the simulator and report
counts, energy and chip mapping.

    spkdiff sim --bundle BUNDLE_DIR --n 16 [--fixed] [--steps S] --report OUT_DIR
    spkdiff sim GRAPH.nir [--input NAME=x.npy] [--steps T --batch B --rate p] [--mode float|fixed]
                [--profile loihi --ann-profile cmos45nm] [--compartments-per-core 1024 ...] [--json out.json]

Inputs are ``.npy`` arrays ``(T, B, *shape)`` or ``(B, *shape)`` (constant in time, needs ``--steps``);
inputs not given are random spikes with probability ``--rate``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from spkdiff import validate
from spkdiff.config import REMASK_HELP, SAMPLER_METHODS
from spkdiff.errors import SpkdiffError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", type=validate.in_file, nargs="?", default=None,
                        help="NIR graph file (or use --bundle)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="deployment bundle (spkdiff-export --target lava): run the whole generative loop")
    parser.add_argument("--n", type=validate.images, default=16, help="bundle mode: images to generate (default 16)")
    parser.add_argument("--fixed", action="store_true", help="bundle mode: Loihi fixed point (the bundle's integers)")
    parser.add_argument("--method", choices=SAMPLER_METHODS, default=None, help="bundle mode: sampler")
    parser.add_argument("--temperature", type=validate.temperature, default=None,
                        help="bundle mode: sampler temperature")
    parser.add_argument("--remask", type=validate.probability, default=None,
                        help="bundle mode: " + REMASK_HELP)
    parser.add_argument("--batch-size", type=validate.batch, default=256, help="bundle mode: images per batch")
    parser.add_argument("--report", type=validate.out_dir, default=None,
                        help="bundle mode: folder for samples.png, report.json, report.md and plots")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="input array per input node (repeatable); others get random spikes")
    parser.add_argument("--steps", type=validate.steps, default=None,
                        help="graph mode: time steps (default 16); bundle mode: sampler steps (default: bundle's)")
    parser.add_argument("--batch", type=validate.batch, default=8, help="batch size of random inputs (default 8)")
    parser.add_argument("--rate", type=validate.probability, default=0.1,
                        help="spike probability of random inputs (default 0.1)")
    parser.add_argument("--seed", type=validate.seed, default=0)
    parser.add_argument("--mode", choices=("float", "fixed"), default="float")
    parser.add_argument("--dt", type=validate.positive, default=None,
                        help="NIR time per step (default: graph metadata or 1)")
    parser.add_argument("--profile", default="loihi", help="energy profile name or YAML path (default loihi)")
    parser.add_argument("--ann-profile", default="cmos45nm", help="profile of the ANN equivalent (default cmos45nm)")
    parser.add_argument("--cores-per-chip", type=validate.count, default=128)
    parser.add_argument("--compartments-per-core", type=validate.count, default=1024)
    parser.add_argument("--synapse-memory-kb", type=validate.positive, default=128.0)
    parser.add_argument("--synapse-bits", type=validate.int_in(1, 64), default=8)
    parser.add_argument("--json", type=validate.out_file, default=None, help="write the full report here")


def _load_inputs(args: argparse.Namespace, shapes: dict[str, tuple[int, ...]]) -> dict:
    import numpy as np
    import torch

    given: dict[str, torch.Tensor] = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or name not in shapes:
            raise SpkdiffError(f"--input must be NAME=FILE.npy with NAME one of {sorted(shapes)}, got {item!r}")
        try:
            given[name] = torch.as_tensor(np.load(path)).float()
        except (OSError, ValueError) as err:
            raise SpkdiffError(f"cannot read input {path}: {err}") from err
    gen = torch.Generator().manual_seed(args.seed)
    for name, shape in shapes.items():
        validate.check_fits(f"input {name} over --steps {args.steps} x --batch {args.batch}",
                            args.steps * args.batch * math.prod(shape))
        if name not in given:
            given[name] = (torch.rand(args.steps, args.batch, *shape, generator=gen) < args.rate).float()
    return given


def run(args: argparse.Namespace) -> int:
    from .energy import energy, sop_time_ns
    from .engine import Simulator
    from .mapping import ChipLimits, map_to_chip

    if args.bundle is not None:
        from .report import run_bundle

        return run_bundle(args)
    if args.graph is None:
        raise SpkdiffError("give a NIR graph file or --bundle BUNDLE_DIR")
    if args.steps is None:
        args.steps = 16
    if args.steps < 1 or args.batch < 1:
        raise SpkdiffError("--steps and --batch must be positive")
    sim = Simulator(args.graph, mode=args.mode, dt=args.dt)
    res = sim.run(_load_inputs(args, sim.inputs), steps=args.steps, per_neuron=True)
    assert res.counters is not None
    limits = ChipLimits(cores_per_chip=args.cores_per_chip, compartments_per_core=args.compartments_per_core,
                        synapse_memory_bytes=int(args.synapse_memory_kb * 1024), synapse_bits=args.synapse_bits,
                        time_per_sop_ns=sop_time_ns(args.profile))
    mapping = map_to_chip(sim, limits, counters=res.counters)
    rep = energy(res.counters, args.profile, args.ann_profile)

    print(f"{'layer':<24} {'type':<10} {'neurons':>9} {'SOPs':>12} {'MACs':>12} {'spikes':>10} {'rate':>7}")
    for row in res.counters.summary():
        print(f"{row['layer']:<24} {row['type']:<10} {row['neurons']:>9} {row['sops']:>12.0f} {row['macs']:>12.0f} "
              f"{row['spikes']:>10.0f} {row['firing_rate']:>7.4f}")
    tot = res.counters.totals()
    print(f"per sample: SOPs {tot['sops']:.0f}, MACs {tot['macs']:.0f}, neuron updates {tot['neuron_updates']:.0f}, "
          f"spikes {tot['spikes']:.0f}; ANN equivalent MACs {tot['ann_macs']:.0f}")
    print(f"energy ({rep.profile}): {rep.total_j * 1e6:.4f} uJ/sample; ANN ({rep.ann_profile}): "
          f"{rep.ann_total_j * 1e6:.4f} uJ/sample; ratio ANN/SNN {rep.ratio_vs_ann:.2f}")
    ms = mapping.summary()
    lat = (f", latency/step mean {ms['latency_per_step_s_mean'] * 1e6:.3f} us, max "
           f"{ms['latency_per_step_s_max'] * 1e6:.3f} us") if "latency_per_step_s_mean" in ms else ""
    print(f"mapping: {ms['cores']} cores on {ms['chips']} chip(s), max {ms['max_compartments_per_core']} "
          f"compartments and {ms['max_synapse_bytes_per_core']:.0f} B synapses per core{lat}")
    for w in res.warnings:
        print(f"warning: {w}")
    if args.json:
        report = {"graph": str(args.graph), "mode": args.mode, "steps": args.steps, "layers": res.counters.summary(),
                  "totals_per_sample": tot, "energy": rep.to_dict(), "mapping": ms, "warnings": res.warnings}
        args.json.write_text(json.dumps(report, indent=2))
    return 0
