"""``spkdiff reconstruct``: encode and decode real images (torch models, the simulator, or Lava).

    spkdiff reconstruct --bundle B --backend sim-fixed --data-root DATA --n 8 --out recon.png [--report DIR]
    spkdiff reconstruct --run pretrained:mnist --backend lava --fixed --images x.npy --out recon.png

The route of the bundle's ``pipelines.reconstruction``: encoder (chip) -> host codebook lookup (Eq 4-8, the
bundle's k and tau_syn) -> generator (chip) -> host decode (:func:`spkdiff.generation.reconstruct`).  Writes
the grid (rows of inputs, each followed by its reconstructions), the tokens beside it (``.tokens.npy``) and
``.json`` with MSE / 1 - SSIM against the inputs; ``--report`` adds the SOP / energy / mapping report of
``spkdiff sim`` for the encoder and generator stages plus the host lookup.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spkdiff import validate
from spkdiff.backends import add_backend_arguments

GRID_ROW = 16  # images per grid row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backend_arguments(parser, default_backend="sim")
    parser.add_argument("--images", type=validate.in_file, default=None,
                        help=".npy of images (N, C, H, W) or (N, H, W): uint8, or floats in [0, 1] (default: the "
                             "first --n test images of the run's dataset)")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: $SPKDIFF_DATA or ./data)")
    parser.add_argument("--dataset", default=None, help="test images from this dataset (default: the run's)")
    parser.add_argument("--n", type=validate.images, default=16, help="number of test images (default 16)")
    parser.add_argument("--out", type=validate.out_file, default="reconstructions.png",
                        help="PNG grid path; tokens (.tokens.npy) and metrics (.json) go beside it")
    parser.add_argument("--report", type=validate.out_dir, default=None,
                        help="sim / sim-fixed: folder for report.json, report.md and plots (as `spkdiff sim`)")
    parser.add_argument("--profile", default="loihi", help="energy profile name or YAML path (default loihi)")
    parser.add_argument("--ann-profile", default="cmos45nm", help="profile of the ANN equivalent and the host")


def _dataset(args: argparse.Namespace) -> str:
    """The dataset the model was trained on: --dataset, else the bundle's or the run's source."""
    if args.dataset:
        return args.dataset
    if args.bundle is not None:
        from spkdiff.neuromorphic.bundle import read_manifest

        name = read_manifest(args.bundle).get("source", {}).get("dataset")
    else:
        from spkdiff.config import read_json, resolve_run

        name = read_json(resolve_run(args.run) / "config.json", "run config").get("dataset")
    return name or "mnist"


def load_images(args: argparse.Namespace) -> Any:
    """The input images: ``--images`` (as stored; checked against the encoder later) or test images."""
    from spkdiff.errors import SpkdiffError

    if args.images is not None:
        import numpy as np

        try:
            return np.load(args.images, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise SpkdiffError(f"cannot read images {args.images}: {err}") from None
    from spkdiff.data import load_tensor

    return load_tensor(_dataset(args), args.data_root, "test", limit=args.n)[0]


def paired_rows(inputs: Any, recon: Any, per_row: int = GRID_ROW) -> Any:
    """Rows of ``per_row`` inputs, each followed by the row of their reconstructions (white padding)."""
    import torch

    rows = []
    for i in range(0, inputs.shape[0], per_row):
        for part in (inputs[i:i + per_row], recon[i:i + per_row]):
            pad = per_row - part.shape[0]
            rows.append(torch.cat([part, torch.ones(pad, *part.shape[1:])]) if pad else part)
    return torch.cat(rows)


def run(args: argparse.Namespace) -> int:
    from spkdiff.backends import reconstruct_images
    from spkdiff.errors import SpkdiffError
    from spkdiff.eval.metrics import mse, ssim_distance
    from spkdiff.files import write_bytes_atomic
    from spkdiff.imageio import save_samples

    if args.report is not None and args.backend not in ("sim", "sim-fixed"):
        raise SpkdiffError("--report counts on the simulator: use --backend sim or sim-fixed")
    images = load_images(args)
    recon, tokens, info, rec = reconstruct_images(args.backend, images, run=args.run, bundle=args.bundle,
                                                  batch_size=args.batch_size, fixed=args.fixed, timeout=args.timeout)
    from spkdiff.generation import check_images  # the backend accepted them: the same conversion to [0, 1]

    x = check_images(images, tuple(recon.shape[1:]))
    n = x.shape[0]
    metrics = {"mse": mse(recon, x), "1-ssim": ssim_distance(recon, x)}
    summary: dict[str, Any] = {"backend": args.backend + (" fixed_pt" if args.backend == "lava" and args.fixed
                                                          else ""), "n": n, **metrics,
                               "seconds": info["seconds"], "seconds_per_image": info["seconds"] / n}
    report = None
    if rec is not None:
        from spkdiff.simulator.energy import sop_time_ns
        from spkdiff.simulator.mapping import ChipLimits
        from spkdiff.simulator.report import build_reconstruction_report, print_stage_table

        report = build_reconstruction_report(rec, args.profile, args.ann_profile,
                                             ChipLimits(time_per_sop_ns=sop_time_ns(args.profile)))
        report["metrics"] = metrics
        summary["energy_per_image_j"] = {"chip": report["energy_per_image"]["total_j"],
                                         "host_lookup": report["host_lookup"]["energy_j"],
                                         "total": report["energy_with_host_j"]}
        print_stage_table(report)
    out = Path(args.out)
    save_samples(paired_rows(x, recon), tokens, out, nrow=min(GRID_ROW, n))
    write_bytes_atomic(out.with_suffix(".json"), (json.dumps(summary, indent=2) + "\n").encode())
    line = (f"wrote {out}, {out.with_suffix('.tokens.npy')} and {out.with_suffix('.json')}: {n} images, backend "
            f"{summary['backend']}: MSE {metrics['mse']:.5f}, 1-SSIM {metrics['1-ssim']:.4f}, "
            f"{summary['seconds_per_image'] * 1e3:.1f} ms per image")
    if report is not None:
        e = summary["energy_per_image_j"]
        line += (f"; energy per image {e['total'] * 1e6:.4f} uJ (chip {e['chip'] * 1e6:.4f} uJ on {args.profile}, "
                 f"host lookup {e['host_lookup'] * 1e6:.4f} uJ on {args.ann_profile})")
    print(line)
    if args.report is not None:
        from spkdiff.simulator.report import write_report_folder

        write_report_folder(report, Path(args.report), rec.tokens)
    return 0
