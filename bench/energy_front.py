"""FID-energy front: mJ per generated image on the Loihi profile (fixed-point simulator) vs FID (std).

    python bench/energy_front.py --run pretrained:mnist [--run runs/mnist-narrow ...] \
        [--steps 4,6,8,12,16,24] [--n 2000] [--sim-n 16] [--no-fid] [--fid-backend sim-fixed|sim|torch] \
        [--real-n 2000] [--data-root ../shared/data] [--reference pretrained:mnist:12] \
        [--default pretrained:mnist:12] [--add-rows OLD/front.json ...] [--out bench/energy_front]

Operating points = every run (an SDID variant) x every sampler step count.  For each point the bundle's
fixed-point simulator (``spkdiff sim --fixed`` machinery, :func:`spkdiff.simulator.generate.generate`)
generates the images and counts what the chip does; :func:`build_report` prices it on
``loihi``, its ANN equivalent on ``cmos45nm`` and the papers' convention (E_AC / E_MAC at 45 nm).  FID is
the std protocol of ``--n`` images: the same fixed-point images, the float simulator's (``--fid-backend sim``:
fixed point vs float at equal N and seed), or (``--fid-backend torch``, a CPU-friendly screen) the float
model's samples with the same seed; except on ``sim-fixed`` the energy comes from ``--sim-n`` simulated images;
against the whole test split or a fixed seeded ``--real-n`` subset.  ``--no-fid`` counts on
``--sim-n`` images only (seconds).  Writes ``front.json``, ``front.md`` and ``front.png`` (FID vs mJ per
image, log x; the ANN equivalents as a dashed line; the reference and the shipped default marked).
``--fid-from`` (with ``--no-fid``) re-counts the energy of earlier points and keeps their FID, for a change of
the counts that leaves the samples as they were.  ``--add-rows`` draws points measured by earlier invocations
(their ``front.json``) on the same front, so slow FID points can be measured in parallel processes and joined;
without ``--run`` it only redraws them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from spkdiff import validate

TARGET_MJ = 0.5  # issue 16: a shipped operating point at <= 0.5 mJ per image (5x below the reference's ANN)


def _point(s: str, runs: list[str]) -> tuple[str, int] | None:
    """``RUN:STEPS`` (RUN may itself contain ':', e.g. pretrained:mnist:12)."""
    if not s:
        return None
    run, _, steps = s.rpartition(":")
    if run not in runs:
        raise SystemExit(f"{s}: {run!r} is not one of the front's runs {runs}")
    return run, int(steps)


def measure(run: str, bundle: Path, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """One operating point: energy from the fixed-point simulator's counts on ``--sim-n`` images (all ``--n``
    when FID is measured on ``sim-fixed`` images), FID (std) of ``--n`` images of ``--fid-backend``."""
    from spkdiff.neuromorphic.bundle import load_bundle
    from spkdiff.simulator.generate import generate
    from spkdiff.simulator.report import build_report

    fid = not args.no_fid
    on_sim = fid and args.fid_backend == "sim-fixed"
    b = load_bundle(bundle)
    t0 = time.process_time()
    gen = generate(b, args.n if on_sim else args.sim_n, fixed=True, steps=steps, seed=args.seed,
                   batch_size=args.batch_size)
    rep = build_report(gen)
    e = rep["energy_per_image"]
    row: dict[str, Any] = {
        "run": run, "steps": gen.denoiser_calls, "energy_n": gen.images.shape[0], "mj_per_image": e["total_j"] * 1e3,
        "ann_mj_per_image": e["ann_total_j"] * 1e3, "ratio_vs_ann": e["ratio_vs_ann"],
        "sdid_share": sum(e["per_stage_j"].get("sdid", {}).values()) / max(e["total_j"], 1e-30),
        "papers_snn_mj": e["papers_convention"]["snn_j"] * 1e3, "papers_ann_mj": e["papers_convention"]["ann_j"] * 1e3,
        "sops_per_image": rep["per_image"]["sops"], **rep["neurobench"],
        "time_steps": b.time_steps("sdid"), "fid": None}
    if fid:
        from spkdiff.backends import sample_images
        from spkdiff.eval.features import real_inception_features
        from spkdiff.eval.inception import inception_features
        from spkdiff.eval.metrics import frechet_distance

        if on_sim:
            images = gen.images
        elif args.fid_backend == "sim":  # the float simulator: fixed point vs float at equal N and seed
            images = generate(b, args.n, fixed=False, steps=steps, seed=args.seed, batch_size=args.batch_size).images
        else:
            images = sample_images("torch", run=run, n=args.n, steps=steps, seed=args.seed,
                                   batch_size=args.batch_size)[0]
        dataset = b.manifest.get("source", {}).get("dataset") or "mnist"
        real = real_inception_features(dataset, args.data_root, split="test", n=args.real_n, protocol="std",
                                       progress=False)
        row.update(fid=float(frechet_distance(real, inception_features(images, protocol="std", progress=False))),
                   fid_backend=args.fid_backend, fid_n=args.n, real_n=args.real_n or "test split")
    row["cpu_s"] = time.process_time() - t0
    return row


def write_outputs(rows: list[dict[str, Any]], out: Path, reference: tuple[str, int] | None,
                  default: tuple[str, int] | None, fid_bar: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "front.json").write_text(json.dumps({"rows": rows, "reference": reference, "default": default}, indent=2))
    lines = ["| run | T | steps | n | mJ/image (Loihi) | ANN mJ (45 nm) | ANN / SNN | SDID share | papers SNN mJ "
             "| SOPs/image | ActivationSparsity | FID (std) |", "|" + " --- |" * 12]
    measured = next((r for r in rows if r["fid"] is not None), None)
    for r in rows:
        mark = " (reference)" if (r["run"], r["steps"]) == reference else ""
        mark += " (default)" if (r["run"], r["steps"]) == default else ""
        fid = f"{r['fid']:.1f}" if r["fid"] is not None else "-"
        lines.append(f"| {r['run']}{mark} | {r['time_steps']} | {r['steps']} | {r['energy_n']} | "
                     f"{r['mj_per_image']:.3f} | "
                     f"{r['ann_mj_per_image']:.3f} | {r['ratio_vs_ann']:.2f} | {r['sdid_share']:.1%} | "
                     f"{r['papers_snn_mj']:.4f} | {r['sops_per_image']:.3g} | {r['ActivationSparsity']:.3f} | {fid} |")
    if measured is not None:
        lines.append(f"\nFID: {measured['fid_n']} images of the {measured['fid_backend']} backend against "
                     f"{measured['real_n']} real test images (protocol std); energy: the fixed-point simulator's "
                     "counts on the n images of the table, priced on the Loihi profile.")
    (out / "front.md").write_text("\n".join(lines) + "\n")

    # FID on the y axis when any point has one (the counts-only points are then left off the plot, kept in the table)
    have_fid = any(r["fid"] is not None for r in rows)
    y = (lambda r: r["fid"]) if have_fid else (lambda r: r["steps"])
    rows = [r for r in rows if r["fid"] is not None] if have_fid else rows
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for i, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        pts = sorted((r for r in rows if r["run"] == run), key=lambda r: r["mj_per_image"])
        ax.plot([r["mj_per_image"] for r in pts], [y(r) for r in pts], "o-", label=f"{run} (Loihi)")
        ax.plot([r["ann_mj_per_image"] for r in pts], [y(r) for r in pts], "x--", color="grey", alpha=0.7,
                label="ANN equivalents (45 nm), same FID" if i == 0 else None)
    ax.axvline(TARGET_MJ, color="green", ls=":", label=f"target: {TARGET_MJ} mJ per image")
    ref = [r for r in rows if (r["run"], r["steps"]) == reference]
    if have_fid and fid_bar is not None:
        ax.axhline(fid_bar, color="orange", ls=":", label=f"FID bar {fid_bar:g}")
    elif have_fid and ref:
        ax.axhline(ref[0]["fid"] * 1.05, color="orange", ls=":", label="reference FID + 5 %")
    for point, style, name in ((reference, dict(marker="*", s=250, color="gold"), "reference"),
                               (default, dict(marker="s", s=120, facecolors="none", edgecolors="red"), "default")):
        hit = [r for r in rows if (r["run"], r["steps"]) == point]
        if hit:
            ax.scatter([hit[0]["mj_per_image"]], [y(hit[0])], zorder=5, label=name, **style)
    ax.set_xscale("log")
    ax.set_xlabel("energy per generated image (mJ, Loihi profile, fixed point)")
    ax.set_ylabel("FID (std)" if have_fid else "sampler steps (no FID measured)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "front.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", default=[], help="run directory or pretrained:NAME (repeatable)")
    ap.add_argument("--add-rows", action="append", default=[], metavar="FRONT_JSON",
                    help="also draw the rows of an earlier front.json (repeatable)")
    ap.add_argument("--steps", type=validate.comma_separated(validate.steps), default=[4, 6, 8, 12, 16, 24],
                    help="sampler steps to sweep (comma-separated)")
    ap.add_argument("--n", type=int, default=2000, help="images per point for FID (default 2000)")
    ap.add_argument("--sim-n", type=int, default=16,
                    help="images per point whose counts give the energy (unless FID is measured on sim-fixed)")
    ap.add_argument("--fid-backend", choices=("sim-fixed", "sim", "torch"), default="sim-fixed",
                    help="whose --n images FID scores (sim: the float simulator; torch: float samples, "
                         "much faster on a CPU)")
    ap.add_argument("--real-n", type=int, default=None,
                    help="score against this fixed seeded subset of the test split (default: the whole split)")
    ap.add_argument("--no-fid", action="store_true", help="energy only (fast)")
    ap.add_argument("--fid-from", action="append", default=[], metavar="FRONT_JSON",
                    help="with --no-fid: take each point's FID from the same RUN:STEPS of an earlier front.json "
                         "(repeatable): energy re-counted, FID as measured, for a change that leaves the samples")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reference", default="", help="RUN:STEPS to mark as the reference (default: first run, "
                                                    "its shipped steps)")
    ap.add_argument("--default", default="", help="RUN:STEPS of the shipped default (default: as --reference)")
    ap.add_argument("--fid-bar", type=float, default=None,
                    help="draw the FID bar at this value (default: the reference's FID + 5 %%)")
    ap.add_argument("--out", default="bench/energy_front")
    args = ap.parse_args(argv)

    from spkdiff.export.command import export
    from spkdiff.neuromorphic.bundle import load_bundle

    if not args.run and not args.add_rows:
        raise SystemExit("give --run RUN (to measure) or --add-rows FRONT_JSON (to redraw)")
    if args.fid_from and not args.no_fid:
        raise SystemExit("--fid-from takes FID from earlier fronts: use it with --no-fid")
    earlier: dict[tuple[str, int], dict[str, Any]] = {}
    for path in args.fid_from:
        try:
            earlier |= {(r["run"], r["steps"]): r for r in json.loads(Path(path).read_text())["rows"] if r["fid"]}
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"--fid-from {path}: not a front.json of this benchmark ({err})") from None
    rows: list[dict[str, Any]] = []
    for path in args.add_rows:
        try:
            rows += json.loads(Path(path).read_text())["rows"]
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"--add-rows {path}: not a front.json of this benchmark ({err})") from None
    shipped: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(args.run):
            bundle = Path(tmp) / f"b{i}"
            export(run, "lava", bundle)
            shipped[run] = int(load_bundle(bundle).sampler["steps"])
            for s in args.steps:
                row = measure(run, bundle, s, args)
                if (run, s) in earlier:
                    row |= {k: earlier[run, s][k] for k in ("fid", "fid_backend", "fid_n", "real_n")}
                rows.append(row)
                write_outputs(rows, Path(args.out), None, None)  # what is measured survives an interruption
                print(f"{run} steps {s}: {row['mj_per_image']:.3f} mJ/image (ANN {row['ann_mj_per_image']:.3f}, "
                      f"x{row['ratio_vs_ann']:.2f}), FID {row['fid']}", flush=True)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    reference = _point(args.reference, runs) or ((args.run[0], shipped[args.run[0]]) if args.run else None)
    default = _point(args.default, runs) or reference
    write_outputs(rows, Path(args.out), reference, default, args.fid_bar)
    print(f"wrote {args.out}: front.json, front.md, front.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
