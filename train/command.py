"""``spkdiff train``: stage 1 (VQ-SVAE), stage 2 (SDID) or both, from a preset."""

from __future__ import annotations

import argparse

from spkdiff import validate
from spkdiff.config import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=("vqsvae", "sdid", "all"), default="all")
    parser.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, kmnist, letters, cifar10")
    parser.add_argument("--preset", default="fast", help=f"one of {', '.join(PRESETS)} or a YAML file")
    parser.add_argument("--out", required=True, type=validate.out_dir,
                        help="run directory (checkpoints, logs, config.json)")
    parser.add_argument("--data-root", default=None, type=validate.in_dir,
                        help="dataset root (default: $SPKDIFF_DATA or ./data)")
    parser.add_argument("--epochs", type=validate.count, default=None, help="override the preset's epochs")
    parser.add_argument("--batch-size", type=validate.batch, default=None, help="override the preset's batch size")
    parser.add_argument("--seed", type=validate.seed, default=None)
    parser.add_argument("--limit", type=validate.count, default=None, help="train on the first N images only")
    parser.add_argument("--max-steps", type=validate.count, default=None,
                        help="stop after N optimizer steps (resumable)")
    parser.add_argument("--init-from", default=None, metavar="RUN",
                        help="the stage trained (--stage vqsvae or sdid) starts from this run's (or "
                             "pretrained:NAME's) weights: a generator fine-tune (train_parts: generator; widened or "
                             "deepened), or a prior fine-tuned on the same tokens (SOP regulariser, more epochs, "
                             "fewer time steps, more channels)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoints")
    parser.add_argument("--sync-bn", action="store_true",
                        help="under torchrun: BatchNorm statistics over the global batch, not per rank")
    parser.add_argument("--dist-timeout", type=validate.seconds, default=600,
                        help="under torchrun: seconds a collective may wait for another rank before failing")


def run(args: argparse.Namespace) -> int:
    from spkdiff.train.run import train_from_args

    train_from_args(args)
    return 0
