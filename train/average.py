"""Average the generators of several stage-1 runs that share one tokenizer (stochastic weight averaging).

    python -m spkdiff.train.average RUN_1 RUN_2 ... --out NEW_RUN --data-root ROOT [--bn-images 5000]

The runs are the ends of successive generator fine-tunes (``train_parts: generator``), each a cosine cycle of
the learning rate from the one before: the cyclical-learning-rate form of SWA (Izmailov et al., "Averaging
weights leads to wider optima and better generalization", UAI 2018). With an adversarial term the generator
circles its equilibrium from cycle to cycle, and the average sits nearer its centre than any one end:

    theta_SWA = (1 / n) * sum_i theta_i            over the generator's parameters (ASG, decoder, read-out)

BatchNorm statistics: ``--batch-norm measure`` (the default, SWA's ``bn_update``) measures the generator's running
mean and variance afresh for the averaged weights, as a cumulative average over ``--bn-images`` training images
with the tokenizer in eval mode; ``--batch-norm average`` averages the runs' statistics like the weights.

The tokenizer (encoder, k, codebook) must be the same tensors in every run, so every image keeps its tokens and
the runs' prior serves the average unchanged.

NEW_RUN gets the averaged ``vqsvae.safetensors`` (weights only: it is a model, not a training state), the last
run's ``sdid.safetensors`` and the ``sdid`` section of its config.json (the prior and the sampler it runs with) if
it has a prior, and a config.json whose ``vqsvae.train`` records what was averaged.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spkdiff.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from spkdiff.config import read_json, write_json_atomic
from spkdiff.data import load_tensor
from spkdiff.errors import SpkdiffError
from spkdiff.train.loop import is_tokenizer, stage_from_checkpoint
from spkdiff.train.vqsvae import VQSVAE


def averaged_weights(checkpoints: list[Checkpoint]) -> dict[str, torch.Tensor]:
    """The uniform mean of the runs' floating-point tensors; integer buffers (BatchNorm's batch counters) are the
    last run's. Refused unless the runs hold one model config and the same tokenizer tensors."""
    if len(checkpoints) < 2:
        raise SpkdiffError(f"averaging needs at least two runs, got {len(checkpoints)}")
    first, last = checkpoints[0], checkpoints[-1]
    for ckpt in checkpoints[1:]:
        if ckpt.config["vqsvae"]["model"] != first.config["vqsvae"]["model"]:
            raise SpkdiffError(f"{ckpt.path}: its VQ-SVAE config differs from {first.path}'s (a grown generator "
                               f"cannot be averaged with a narrower one)")
        changed = [k for k in first.model if is_tokenizer(k) and not torch.equal(first.model[k], ckpt.model[k])]
        if changed:
            raise SpkdiffError(f"{ckpt.path}: its tokenizer differs from {first.path}'s ({changed[0]}): only "
                               f"generator fine-tunes of one stage 1 can be averaged")
    return {k: torch.stack([c.model[k] for c in checkpoints]).mean(0) if v.is_floating_point() else last.model[k]
            for k, v in last.model.items()}


@torch.no_grad()
def recompute_generator_batch_norm(model: VQSVAE, images: torch.Tensor, batch_size: int = 250) -> None:
    """Measure the generator's BatchNorm running statistics afresh as a cumulative average over ``images``
    (pixels in [-0.5, 0.5]); the tokenizer stays in eval mode, so the tokens are the trained ones."""
    model.eval()
    generator_norms = [m for part in (model.asg, model.decoder) for m in part.modules()
                       if isinstance(m, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in generator_norms]
    for norm in generator_norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch weighs the same
        norm.train()
    for start in range(0, images.shape[0], batch_size):
        model(images[start:start + batch_size])
    for norm, momentum in zip(generator_norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


BATCH_NORM_MODES = ("measure", "average")


def average_runs(runs: list[Path], out: Path, data_root: str | None, bn_images: int,
                 batch_norm: str = "measure") -> Path:
    """Write OUT with the runs' averaged generator (see the module docstring); returns its checkpoint path."""
    if batch_norm not in BATCH_NORM_MODES:
        raise SpkdiffError(f"unknown --batch-norm {batch_norm!r}: choose one of {', '.join(BATCH_NORM_MODES)}")
    if bn_images < 1:
        raise SpkdiffError(f"--bn-images must be >= 1, got {bn_images}")
    runs = [Path(r).expanduser() for r in runs]
    checkpoints = [load_checkpoint(r / "vqsvae.safetensors", stage="vqsvae") for r in runs]
    weights = averaged_weights(checkpoints)
    last = checkpoints[-1]
    prior = runs[-1] / "sdid.safetensors"
    sampling = None  # the prior's section of the last run's config.json: the sampler that run ships with
    if prior.is_file():
        sampling = read_json(runs[-1] / "config.json", "run config").get("sdid")
        if sampling is None:
            raise SpkdiffError(f"{runs[-1]}: it has a prior but its config.json has no sdid section")
    model = stage_from_checkpoint(last, "vqsvae")
    model.load_state_dict(weights)
    if batch_norm == "measure":
        images, _ = load_tensor(last.config["dataset"], data_root, "train", limit=bn_images)
        recompute_generator_batch_norm(model, (images - 0.5).contiguous())
    config: dict[str, Any] = dict(last.config)
    config["vqsvae"] = dict(config["vqsvae"])
    config["vqsvae"]["train"] = dict(config["vqsvae"]["train"]) | {
        "averaged_from": [str(r) for r in runs], "batch_norm": batch_norm,
        **({"bn_images": bn_images} if batch_norm == "measure" else {})}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "vqsvae.safetensors"
    save_checkpoint(path, model=model.state_dict(), config=config, stage="vqsvae")
    if sampling is not None:
        shutil.copy2(prior, out / "sdid.safetensors")
        config["sdid"] = sampling
    write_json_atomic(out / "config.json", config)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spkdiff.train.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="stage-1 runs (generator fine-tunes of one stage 1)")
    parser.add_argument("--out", type=Path, required=True, help="the new run directory")
    parser.add_argument("--data-root", default=None, help="dataset root (default: $SPKDIFF_DATA or ./data)")
    parser.add_argument("--bn-images", type=int, default=5000,
                        help="training images over which the generator's BatchNorm statistics are measured")
    parser.add_argument("--batch-norm", choices=BATCH_NORM_MODES, default="measure",
                        help="measure the averaged generator's BatchNorm statistics afresh, or average the runs'")
    args = parser.parse_args(argv)
    try:
        path = average_runs(args.runs, args.out, args.data_root, args.bn_images, args.batch_norm)
    except SpkdiffError as err:
        sys.exit(f"spkdiff average: {err}")
    print(f"wrote {path} (the average of {len(args.runs)} generators)")


if __name__ == "__main__":
    main()
