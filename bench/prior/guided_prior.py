"""Autoguidance of a prior by a worse version of itself, built as one SDID (an experiment, not yet a product step).

    python bench/prior/guided_prior.py GOOD_RUN BAD_RUN --weight W --out NEW_RUN

Autoguidance (Karras et al., "Guiding a diffusion model with a bad version of itself", NeurIPS 2024) steers a
model away from the errors of a smaller or less-trained version of itself. On the SDID's logits (the masked
tokens' log-probabilities up to a per-position constant, which the softmax ignores):

    logits_W = W * logits_good + (1 - W) * logits_bad,    i.e.  p_W ∝ p_good^W / p_bad^(W - 1)

W = 1 is the good prior alone; W > 1 sharpens what the good prior knows beyond the bad one. The sampler divides
logits_W by its temperature as before.

Both priors read the same input spikes (tokens and time bins), so the pair is exactly one SDID whose channels are
the good prior's followed by the bad prior's: the stem stacks both stems' synapses; every block conv is
block-diagonal (no synapse between the two halves, so each half computes what its prior did), BatchNorm is
per channel, the residual skip per channel; the integrator read-out is linear in the summed spikes, so the read-out
[W * readout_good, (1 - W) * readout_bad] with bias W b_good + (1 - W) b_bad gives logits_W exactly. The two
priors must share the tokenizer, the time steps T, the LIF constants, blocks, dilations, patch and time bins.

NEW_RUN gets GOOD_RUN's stage 1 and config, with ``sdid.model.channels`` the sum and ``sdid.train.guided_by``
recording the pair. Exported, it runs on every backend as any SDID; its energy report counts neither SOPs nor
ANN-equivalent MACs for the zero synapses between the halves (both count non-zero weights only).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from spkdiff.checkpoint import load_checkpoint, save_checkpoint
from spkdiff.config import read_json, resolve_run, write_json_atomic
from spkdiff.errors import SpkdiffError
from spkdiff.train.loop import check_same_tokens, model_difference, stage_from_checkpoint
from spkdiff.train.sdid import SDID, SDIDConfig


def guided_config(good: SDIDConfig, bad: SDIDConfig) -> SDIDConfig:
    """The merged SDID's config: the good prior's with both priors' channels; refuses pairs that differ elsewhere."""
    differ = model_difference("sdid", good.to_dict(), bad.to_dict(), frozenset({"channels"}))
    if differ:
        key, ours, theirs = differ
        what = "their LIF constants" if key == "neuron" else key
        raise SpkdiffError(f"the priors differ in {what} ({ours} vs {theirs}): autoguidance as one SDID needs them "
                           f"equal")
    return SDIDConfig.from_dict(good.to_dict() | {"channels": good.channels + bad.channels})


@torch.no_grad()
def guided_weights(good: SDID, bad: SDID, weight: float) -> dict[str, torch.Tensor]:
    """State dict of the merged SDID (module docstring): logits = weight * good's + (1 - weight) * bad's."""
    merged = SDID(guided_config(good.cfg, bad.cfg))
    g, b = good.cfg.channels, bad.cfg.channels
    ours, theirs_good, theirs_bad = merged.state_dict(), good.state_dict(), bad.state_dict()
    convs = {f"{name}.weight": name for name, m in merged.named_modules() if isinstance(m, nn.Conv2d)}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in ours.items():
        a, z = theirs_good[key], theirs_bad[key]
        if key == "readout.weight":  # (p^2 K, C, 1, 1): the halves' read-outs side by side, scaled
            out[key] = torch.cat([weight * a, (1 - weight) * z], dim=1)
        elif key == "readout.bias":
            out[key] = weight * a + (1 - weight) * z
        elif key.endswith("num_batches_tracked"):
            out[key] = a.clone()
        elif key in convs and convs[key] != "stem.synapse.0":  # channel-to-channel conv: block-diagonal
            w = torch.zeros_like(tensor)
            w[:g, :g] = a
            w[g:, g:] = z
            out[key] = w
        else:  # the stem's synapses (they read the shared input) and every per-channel vector: stacked
            out[key] = torch.cat([a, z], dim=0)
        if out[key].shape != tensor.shape:
            raise SpkdiffError(f"cannot merge {key}: {tuple(out[key].shape)} vs {tuple(tensor.shape)} "
                               f"(good {g}, bad {b} channels)")
    return out


def guide(good_run: Path, bad_run: Path, weight: float, out: Path) -> Path:
    """Write OUT: GOOD_RUN's stage 1 and config with the merged prior; returns its prior's checkpoint path."""
    if not weight >= 1.0:
        raise SpkdiffError(f"--weight must be >= 1 (1 = the good prior alone), got {weight}")
    check_same_tokens(str(bad_run), good_run)
    good_ckpt = load_checkpoint(good_run / "sdid.safetensors", stage="sdid")
    bad_ckpt = load_checkpoint(bad_run / "sdid.safetensors", stage="sdid")
    good, bad = stage_from_checkpoint(good_ckpt, "sdid"), stage_from_checkpoint(bad_ckpt, "sdid")
    merged_cfg = guided_config(good.cfg, bad.cfg)
    config = read_json(good_run / "config.json", "run config")
    config["sdid"] = dict(config["sdid"])
    config["sdid"]["model"] = dict(config["sdid"]["model"]) | {"channels": merged_cfg.channels}
    config["sdid"]["train"] = dict(config["sdid"]["train"]) | {
        "guided_by": {"good": str(good_run), "bad": str(bad_run), "weight": weight,
                      "good_channels": good.cfg.channels}}
    ckpt_config = dict(good_ckpt.config) | {"sdid": config["sdid"]}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(good_run / "vqsvae.safetensors", out / "vqsvae.safetensors")
    path = out / "sdid.safetensors"
    save_checkpoint(path, model=guided_weights(good, bad, weight), config=ckpt_config, stage="sdid")
    write_json_atomic(out / "config.json", config)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("good", help="the run whose prior is guided (and whose stage 1 the new run gets)")
    parser.add_argument("bad", help="a run with a worse prior on the same tokens (smaller or less trained)")
    parser.add_argument("--weight", type=float, required=True, help="guidance weight W >= 1 (1 = no guidance)")
    parser.add_argument("--out", type=Path, required=True, help="the new run directory")
    args = parser.parse_args(argv)
    try:
        path = guide(resolve_run(args.good), resolve_run(args.bad), args.weight, args.out)
    except SpkdiffError as err:
        sys.exit(f"guided_prior: {err}")
    print(f"wrote {path} (W = {args.weight})")


if __name__ == "__main__":
    main()
