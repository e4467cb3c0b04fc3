"""``spkdiff sample``: generate images (torch models, the simulator, or Lava)."""

from __future__ import annotations

import argparse

from spkdiff import validate
from spkdiff.backends import add_backend_arguments
from spkdiff.config import REMASK_HELP, SAMPLER_METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backend_arguments(parser, default_backend="torch")
    parser.add_argument("--n", type=validate.images, default=64, help="number of images")
    parser.add_argument("--steps", type=validate.steps, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--method", choices=SAMPLER_METHODS, default=None,
                        help="paper: 1/t unmasking; confidence: confidence-ordered parallel unmasking; "
                             "coarse: the paper's pace, stride-2 sub-lattice phases first")
    parser.add_argument("--temperature", type=validate.temperature, default=None)
    parser.add_argument("--remask", type=validate.probability, default=None,
                        help=REMASK_HELP)
    parser.add_argument("--seed", type=validate.seed, default=0)
    parser.add_argument("--out", type=validate.out_file, default="samples.png",
                        help="PNG grid path; tokens go beside it as .npy")
    parser.add_argument("--dist-timeout", type=validate.seconds, default=600,
                        help="under torchrun (torch backend): seconds a rank may wait for another before failing")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spkdiff.backends import sample_images
    from spkdiff.errors import SpkdiffError
    from spkdiff.imageio import save_samples
    from spkdiff.train import distributed

    if args.n < 1:
        raise SpkdiffError("--n must be at least 1")
    out = Path(args.out)
    if args.backend != "torch" and distributed.world_from_env()[1] > 1:
        raise SpkdiffError("under torchrun only the torch backend is shared out over ranks; run "
                           f"--backend {args.backend} as one process")
    # Under torchrun (torch backend): rank 0 loads the models, the batches are shared out, every rank gets all.
    with distributed.session(args.dist_timeout) as dist:
        images, tokens, info = sample_images(
            args.backend, run=args.run, bundle=args.bundle, n=args.n, steps=args.steps, method=args.method,
            temperature=args.temperature, remask=args.remask, seed=args.seed, batch_size=args.batch_size,
            fixed=args.fixed, timeout=args.timeout, dist=dist)
    if not dist.is_main:
        return 0
    save_samples(images, tokens, out)  # both files, or neither (disk full, Ctrl-C)
    print(f"wrote {out} and {out.with_suffix('.tokens.npy')}: {args.n} images, backend {args.backend}, "
          f"{info['denoiser_calls']} denoiser calls and {info['snn_steps']} SNN time steps per image, "
          f"{args.n / max(info['seconds'], 1e-9):.3g} images/s")
    return 0
