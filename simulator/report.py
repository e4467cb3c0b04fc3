"""``spkdiff sim --bundle``: the whole generative loop on the simulator, with a report folder (and the same
report of a reconstruction, ``spkdiff reconstruct --report``: :func:`build_reconstruction_report`).

Writes ``samples.png``, ``tokens.npy``, ``report.json`` (settings, throughput, per-stage and per-layer counts
per image, energy per image on the chip profile and the ANN-equivalent profile, chip mapping), ``report.md``
and plots (``sops_per_layer.png``, ``firing_rates.png``, ``energy.png``).  Energy per image:
``E = sum_stage sum_layer sum_op count_op * e_op`` (counts summed over all denoiser calls).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spkdiff.errors import SpkdiffError

from .counters import Counters, NeuroBenchMetrics
from .energy import energy, sop_time_ns
from .engine import Simulator
from .generate import Generation, generate
from .mapping import ChipLimits, map_to_chip


def stage_reports(counters: dict[str, Counters], simulators: dict[str, Simulator], calls: dict[str, int],
                  profile: str = "loihi", ann_profile: str = "cmos45nm", limits: ChipLimits | None = None
                  ) -> dict[str, Any]:
    """Per-stage counts, energy and mapping per image (``calls``: stage calls per image); the part of a report
    that generation and reconstruction share: ``stages``, ``per_image``, ``neurobench`` and ``energy_per_image``.

    The counts are what the chip runs: the Lava graph adds no populations (a residual skip is a delayed
    synapse, :mod:`spkdiff.neuromorphic.chip_plan`), and a delayed synapse is one SOP like any other.
    """
    steps_per_call = {st: ctr.steps // calls.get(st, 1) for st, ctr in counters.items()}
    rep = energy(counters, profile, ann_profile)
    stages: dict[str, Any] = {}
    for stage, ctr in counters.items():
        entry: dict[str, Any] = {"time_steps_per_image": ctr.steps, "time_steps_per_call": steps_per_call[stage],
                                 "per_image": ctr.totals(), "layers": ctr.summary()}
        sim = simulators.get(stage)
        if sim is not None:
            entry["mapping"] = map_to_chip(sim, limits).summary()
        stages[stage] = entry
    totals = {k: sum(s["per_image"][k] for s in stages.values())
              for k in ("sops", "macs", "neuron_updates", "active_updates", "spikes", "ann_macs", "ann_adds")}
    return {"per_image": totals, "neurobench": NeuroBenchMetrics.of(counters, steps_per_call).to_dict(),
            "stages": stages, "energy_per_image": rep.to_dict()}


def build_report(gen: Generation, profile: str = "loihi", ann_profile: str = "cmos45nm",
                 limits: ChipLimits | None = None) -> dict[str, Any]:
    """JSON-ready report of one generation run (counts, energy and mapping per image, :func:`stage_reports`)."""
    core = stage_reports(gen.counters, gen.simulators, {"sdid": gen.denoiser_calls}, profile, ann_profile, limits)
    info = gen.info()
    info.pop("per_image", None)
    return {"settings": {k: info[k] for k in ("backend", "method", "steps", "temperature", "remask", "seed",
                                              "batch_size", "n")},
            "throughput": {"seconds": gen.seconds, "images_per_s": info["images_per_s"],
                           "denoiser_calls_per_image": gen.denoiser_calls, "snn_steps_per_image": gen.snn_steps},
            "quantization": "the bundle's integers" if info["backend"] == "sim-fixed" else "none (float)",
            "per_image": core["per_image"], "neurobench": core["neurobench"], "stages": core["stages"],
            "energy_per_image": core["energy_per_image"], "warnings": gen.warnings}


def build_reconstruction_report(rec: Any, profile: str = "loihi", ann_profile: str = "cmos45nm",
                                limits: ChipLimits | None = None) -> dict[str, Any]:
    """JSON-ready report of one reconstruction (:class:`~.generate.Reconstruction`): the encoder and generator
    stages as :func:`stage_reports`, plus ``host_lookup``: the lookup's arithmetic per image (Eq 4-7) priced
    on the ANN profile (the host is conventional hardware), and ``energy_with_host_j``."""
    from .energy import load_profile

    core = stage_reports(rec.counters, rec.simulators, {}, profile, ann_profile, limits)
    e_pj = load_profile(ann_profile).energy_pj
    host_j = (rec.host_ops["macs"] * e_pj.get("mac", 0.0) + rec.host_ops["adds"] * e_pj.get("add", 0.0)) * 1e-12
    info = rec.info()
    return {"settings": {k: info[k] for k in ("backend", "batch_size", "n")},
            "throughput": {"seconds": rec.seconds, "images_per_s": info["images_per_s"],
                           "snn_steps_per_image": info["snn_steps"]},
            "per_image": core["per_image"], "neurobench": core["neurobench"], "stages": core["stages"],
            "host_lookup": {**rec.host_ops, "profile": ann_profile, "energy_j": host_j},
            "energy_per_image": core["energy_per_image"],
            "energy_with_host_j": core["energy_per_image"]["total_j"] + host_j,
            "warnings": rec.warnings}


def _energy_notes(report: dict[str, Any]) -> list[str]:
    """The papers' convention, the NeuroBench metrics and what the profile leaves out (markdown lines)."""
    e, nb = report["energy_per_image"], report["neurobench"]
    pc = e["papers_convention"]
    lines = [f"Papers' convention (45 nm, E_AC = {pc['e_ac_pj']} pJ per SOP, E_MAC = {pc['e_mac_pj']} pJ per dense "
             f"MAC): SNN {pc['snn_j'] * 1e6:.4f} uJ vs ANN {pc['ann_j'] * 1e6:.4f} uJ, ratio {pc['ratio_vs_ann']:.2f}.",
             "", "NeuroBench workload metrics per image: "
             + ", ".join(f"{k} {v:.4g}" for k, v in nb.items()) + "."]
    if e["leaves_out"]:
        lines += ["", f"Profile `{e['profile']}` leaves out:", *[f"- {x}" for x in e["leaves_out"]]]
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """``report.md`` of a generation (:func:`build_report`) or a reconstruction
    (:func:`build_reconstruction_report`)."""
    s, t, e = report["settings"], report["throughput"], report["energy_per_image"]
    if "host_lookup" in report:
        h = report["host_lookup"]
        head = [f"# Simulated reconstruction ({s['backend']})", "",
                f"{s['n']} images, encoder -> host codebook lookup (Eq 4-8) -> generator, "
                f"{t['snn_steps_per_image']} SNN steps per image: {t['images_per_s']:.2f} images/s.",
                f"Host lookup per image: {h['macs']} MACs, {h['adds']} adds, {h['energy_j'] * 1e6:.4f} uJ on "
                f"`{h['profile']}`; chip + host {report['energy_with_host_j'] * 1e6:.4f} uJ per image."]
    else:
        head = [f"# Simulated generation ({s['backend']})", "",
                f"{s['n']} images, sampler {s['method']} ({t['denoiser_calls_per_image']} denoiser calls, "
                f"{t['snn_steps_per_image']} SNN steps per image), seed {s['seed']}: {t['images_per_s']:.2f} "
                "images/s."]
    lines = [*head, "", "| stage | SOPs | MACs | neuron updates | spikes | energy (uJ) | ANN-equivalent (uJ) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for stage, entry in report["stages"].items():
        p = entry["per_image"]
        ej = sum(e["per_stage_j"].get(stage, {}).values())
        lines.append(f"| {stage} | {p['sops']:.0f} | {p['macs']:.0f} | {p['neuron_updates']:.0f} | "
                     f"{p['spikes']:.0f} | {ej * 1e6:.4f} | {e['ann_j'].get(stage, 0) * 1e6:.4f} |")
    p = report["per_image"]
    lines += [f"| total | {p['sops']:.0f} | {p['macs']:.0f} | {p['neuron_updates']:.0f} | {p['spikes']:.0f} | "
              f"{e['total_j'] * 1e6:.4f} | {e['ann_total_j'] * 1e6:.4f} |", "",
              f"Energy profile `{e['profile']}`, ANN equivalent on `{e['ann_profile']}`: ratio ANN/SNN "
              f"{e['ratio_vs_ann']:.2f}.", "", *_energy_notes(report), "", "## Layers (per image)", "",
              "| stage | layer | type | neurons | SOPs | MACs | spikes | firing rate |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for stage, entry in report["stages"].items():
        for r in entry["layers"]:
            lines.append(f"| {stage} | {r['layer']} | {r['type']} | {r['neurons']} | {r['sops']:.0f} | "
                         f"{r['macs']:.0f} | {r['spikes']:.0f} | {r['firing_rate']:.4f} |")
    lines += ["", "## Chip mapping", ""]
    for stage, entry in report["stages"].items():
        m = entry.get("mapping")
        if m:
            lines.append(f"- {stage}: {m['cores']} cores on {m['chips']} chip(s), {m['compartments']} compartments, "
                         f"max {m['max_compartments_per_core']} per core")
    if report["warnings"]:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in report["warnings"]]]
    path.write_text("\n".join(lines) + "\n")


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """SOPs per layer, firing rates per spiking layer, energy by stage and operation type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{st}/{r['layer']}", r) for st, e in report["stages"].items() for r in e["layers"]]
    paths = []
    syn = [(n, r["sops"], r["macs"]) for n, r in rows if r["kind"] == "synapse"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(syn) + 1.5))
    ax.barh([n for n, *_ in syn], [s for _, s, _ in syn], label="SOPs")
    ax.barh([n for n, *_ in syn], [m for *_, m in syn], left=[s for _, s, _ in syn], label="MACs")
    ax.set_xlabel("operations per image")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    paths.append(out / "sops_per_layer.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    neu = [(n, r["firing_rate"]) for n, r in rows if r["kind"] == "neuron" and r["type"] in ("LIF", "IF", "CubaLIF")]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(neu) + 1.5))
    ax.barh([n for n, _ in neu], [f for _, f in neu])
    ax.set_xlabel("spikes per neuron per step")
    ax.invert_yaxis()
    fig.tight_layout()
    paths.append(out / "firing_rates.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    e = report["energy_per_image"]
    stages = list(e["per_stage_j"])
    ops = sorted({op for v in e["per_stage_j"].values() for op in v})
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [*stages, "ANN equivalent"]
    bottom = [0.0] * len(labels)
    for op in ops:
        vals = [e["per_stage_j"][st].get(op, 0.0) * 1e6 for st in stages] + [0.0]
        ax.bar(labels, vals, bottom=bottom, label=op)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.bar(labels, [0.0] * len(stages) + [e["ann_total_j"] * 1e6], bottom=bottom, label=f"ANN ({e['ann_profile']})")
    ax.set_ylabel("energy per image (uJ)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "energy.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def print_stage_table(report: dict[str, Any]) -> None:
    """Per stage and image: SOPs, MACs, neuron updates, spikes, energy on the chip and the ANN profile."""
    e = report["energy_per_image"]
    print(f"{'stage':<10} {'SOPs':>12} {'MACs':>10} {'updates':>10} {'spikes':>10} {'uJ':>9} {'ANN uJ':>9}")
    for stage, entry in report["stages"].items():
        p = entry["per_image"]
        ej = sum(e["per_stage_j"].get(stage, {}).values()) * 1e6
        print(f"{stage:<10} {p['sops']:>12.0f} {p['macs']:>10.0f} {p['neuron_updates']:>10.0f} {p['spikes']:>10.0f} "
              f"{ej:>9.4f} {e['ann_j'].get(stage, 0) * 1e6:>9.4f}")


def write_report_folder(report: dict[str, Any], out: Path, tokens: Any, images: Any = None) -> None:
    """``out``/: samples.png (``images``, if given), tokens.npy, report.json, report.md and the plots; prints
    what it wrote; an unwritable folder is one line."""
    import numpy as np

    from spkdiff.imageio import save_grid

    written = ["samples.png"] if images is not None else []
    try:
        out.mkdir(parents=True, exist_ok=True)
        if images is not None:
            save_grid(images, out / "samples.png")
        np.save(out / "tokens.npy", tokens.numpy().astype(np.int16))
        (out / "report.json").write_text(json.dumps(report, indent=2))
        write_markdown(report, out / "report.md")
        written += ["tokens.npy", "report.json", "report.md", *(p.name for p in write_plots(report, out))]
    except OSError as err:
        raise SpkdiffError(f"cannot write report to {out}: {err.strerror or err}") from None
    print(f"wrote {out}: {', '.join(written)}")


def chip_limits(args: argparse.Namespace) -> ChipLimits:
    """The chip of ``spkdiff sim``'s mapping options."""
    return ChipLimits(cores_per_chip=args.cores_per_chip, compartments_per_core=args.compartments_per_core,
                      synapse_memory_bytes=int(args.synapse_memory_kb * 1024), synapse_bits=args.synapse_bits,
                      time_per_sop_ns=sop_time_ns(args.profile))


def run_bundle(args: argparse.Namespace) -> int:
    """``spkdiff sim --bundle``: generate, print a short table, write the report folder."""
    if args.n < 1:
        raise SpkdiffError("--n must be at least 1")
    fixed = args.fixed or args.mode == "fixed"
    gen = generate(args.bundle, args.n, fixed=fixed, steps=args.steps, method=args.method,
                   temperature=args.temperature, remask=args.remask, seed=args.seed, batch_size=args.batch_size)
    report = build_report(gen, args.profile, args.ann_profile, chip_limits(args))
    e = report["energy_per_image"]
    print_stage_table(report)
    t = report["throughput"]
    print(f"per image ({report['settings']['backend']}): {t['denoiser_calls_per_image']} denoiser calls, "
          f"{e['total_j'] * 1e6:.4f} uJ ({e['profile']}) vs {e['ann_total_j'] * 1e6:.4f} uJ ANN "
          f"({e['ann_profile']}); {t['images_per_s']:.2f} images/s")
    pc, nb = e["papers_convention"], report["neurobench"]
    print(f"papers' convention (SOPs x {pc['e_ac_pj']} pJ vs the ANN's MACs x {pc['e_mac_pj']} pJ): "
          f"{pc['snn_j'] * 1e6:.4f} uJ vs {pc['ann_j'] * 1e6:.4f} uJ ANN (ratio {pc['ratio_vs_ann']:.2f})")
    print("NeuroBench per image: " + ", ".join(f"{k} {v:.4g}" for k, v in nb.items()))
    for w in report["warnings"]:
        print(f"warning: {w}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.report:
        write_report_folder(report, Path(args.report), gen.tokens, gen.images)
    return 0
