"""Resolve a run's config (preset + CLI overrides, or the stored config on --resume) and train."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from spkdiff.config import load_preset, preset_name, read_run_config, write_json_atomic
from spkdiff.data import check_image_shape, get_spec
from spkdiff.errors import SpkdiffError
from spkdiff.files import LOCK_NAME, clean_stale_temps, lock_folder
from spkdiff.train.vqsvae import VQSVAEConfig

STAGE_ORDER = ("vqsvae", "sdid")


def resolve_config(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    stored = run_dir / "config.json"
    if args.resume and stored.exists():
        config = read_run_config(run_dir)
    else:
        spec = get_spec(args.dataset)
        name = preset_name(args.preset, spec.name)
        preset = load_preset(name)
        c, h, w = spec.shape
        if h != w:
            raise SpkdiffError(f"{args.dataset} images are {h}x{w}; the models take square images")
        config = {"dataset": args.dataset, "preset": name, "seed": 0, **preset}
        config["vqsvae"]["model"].update(in_channels=c, image_size=h)
        if args.stage == "sdid" and stored.exists():  # stage 1 is already trained: keep what it was trained with
            config["vqsvae"] = read_run_config(run_dir)["vqsvae"]
        vq = VQSVAEConfig.from_dict(config["vqsvae"]["model"])  # refuses sizes the model cannot take
        check_image_shape(spec.name, vq.image_shape, f"stage 1 of {run_dir} was trained on")
        config["sdid"]["model"]["grid"] = vq.latent_grid  # the denoiser works on stage 1's token grid
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "limit": args.limit, "max_steps": args.max_steps}
    for stage in STAGE_ORDER:
        config[stage]["train"].pop("max_steps", None)  # an interruption point, never inherited by --resume
        if args.stage not in ("all", stage):
            continue  # overrides apply to the stages being trained
        for key, value in overrides.items():
            if value is not None:
                config[stage]["train"][key] = value
    if getattr(args, "init_from", None) is not None:
        if args.stage not in STAGE_ORDER:
            raise SpkdiffError("--init-from needs --stage vqsvae or --stage sdid (the stage that starts from it)")
        config[args.stage]["train"]["init_from"] = args.init_from
    if args.seed is not None:
        config["seed"] = args.seed
    return config


def train_from_args(args: argparse.Namespace) -> None:
    """Train in this process, or as one rank of a torchrun job (rank 0 owns the run directory)."""
    from spkdiff.train import distributed
    from spkdiff.train.loop import train_sdid, train_vqsvae

    run_dir = Path(args.out)
    held = contextlib.ExitStack()

    def prepare() -> dict[str, Any]:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SpkdiffError(f"cannot create run directory {run_dir}: {err.strerror}") from None
        # One writer per run directory, held to the end; then whatever a killed writer left half-written goes.
        held.enter_context(lock_folder(run_dir / LOCK_NAME, f"run directory {run_dir}"))
        clean_stale_temps(run_dir)
        config = resolve_config(args, run_dir)
        write_json_atomic(run_dir / "config.json", config)
        return config

    timeout = getattr(args, "dist_timeout", distributed.DEFAULT_TIMEOUT_S)
    with held, distributed.session(timeout, getattr(args, "sync_bn", False)) as dist:
        config = dist.run_on_main(prepare)
        stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
        for stage in stages:
            if stage == "vqsvae":
                train_vqsvae(run_dir, config, args.data_root, args.resume, dist)
            else:
                train_sdid(run_dir, config, args.data_root, args.resume, dist)
