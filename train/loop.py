"""Training loops for both stages (nanoGPT-style: one readable loop, explicit state).

Run directory layout (``--out RUN_DIR``)::

    config.json            resolved config: dataset, preset, seed, per-stage model/train settings
    vqsvae.safetensors     stage-1 checkpoint (weights + optimizer + RNG + position), atomic
    sdid.safetensors       stage-2 checkpoint
    tokens_train.npy       token grids of the training split (cached stage-1 encodings)
    {stage}_log.csv, tb/   per-step logs (CSV, TensorBoard)

Resume = uninterrupted: the epoch's shuffle comes from ``seed + epoch``, the stage's own
torch.Generator state is checkpointed, and the loop position (epoch, step in epoch, global step)
is restored, so a resumed run replays the same batches with the same random draws.  The position also holds
the stage's cost, ``cpu_s`` and ``wall_s``: CPU and wall seconds of the process that writes the checkpoint
(rank 0), summed over resumed runs; a run started with ``--init-from`` counts from zero.

Under torchrun every function takes a :class:`~spkdiff.train.distributed.DistContext` (``dist``): rank r
trains on its slice of each global batch and rank 0 alone reads and writes files (see that module).
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spkdiff.checkpoint import Checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from spkdiff.config import PRETRAINED_PREFIX, resolve_run, write_json_atomic
from spkdiff.data import load_tensor
from spkdiff.errors import SpkdiffError
from spkdiff.files import atomic_write, save_npy_atomic
from spkdiff.train.adversarial import (
    PatchDiscriminator,
    adaptive_weight,
    discriminator_hinge_loss,
    generator_adversarial_loss,
)
from spkdiff.train.distributed import SINGLE, DistContext, param_digest, tensor_digest
from spkdiff.train.sdid import SDID, SDIDConfig, diffusion_loss, distillation_loss, grow_prior, training_mask
from spkdiff.train.snn import LIFParams
from spkdiff.train.vqsvae import (
    PIXEL_MAX,
    PIXEL_MIN,
    VQSVAE,
    VQSVAEConfig,
    grow_generator,
    restart_unused_codes_,
)


@dataclass
class TrainSettings:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "constant"  # or "cosine" (with linear warmup)
    warmup_steps: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    codebook_init: str = "uniform"  # stage 1: "uniform" (paper) or "data" (codes from first-batch features)
    loss_weighting: str = "reweighted"  # stage 2: "reweighted" (authors' code) or "elbo" (Eq 14)
    limit: int | None = None  # use only the first N training images (tests)
    max_steps: int | None = None  # stop after this many optimizer steps in total (tests / interruption)
    sop_weight: float = 0.0  # weight of the SOP regulariser: stage 1 the generator's, stage 2 the SDID's (sop_fraction)
    adversarial_weight: float = 0.0  # stage 1: w of the adversarial term (spkdiff.train.adversarial); 0 = off
    adversarial_start: int = 0  # stage 1: step from which the generator feels the discriminator (D trains from 0)
    discriminator_channels: int = 32  # stage 1: width of the patch discriminator
    init_from: str | None = None  # start from this run's (or checkpoint's) weights of the stage being trained
    train_parts: str = "all"  # stage 1: "all", or "generator" (encoder and codebook held: the tokens stay)
    # stage 2: start from init_from's prior although its stage 1 gave other tokens (a stage 1 fine-tuned with
    # train_parts all): the prior then adapts to the new tokens instead of being refused
    init_from_other_tokens: bool = False
    distill_from: str | None = None  # stage 2: a trained prior on the same tokens to distil from (the teacher)
    distill_weight: float = 0.0  # stage 2: weight of the KL to the teacher (spkdiff.train.sdid.distillation_loss)
    ema_decay: float = 0.0  # > 0: the checkpoint's weights are this exponential moving average (WeightAverage)
    codebook_restart_every: int = 0  # stage 1: every N steps, move the batch's unused codes onto its features; 0 = off
    codebook_restart_until: float = 0.9  # stage 1: no restarts after this fraction of the steps (codes settle)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("sop_weight", "adversarial_weight", "distill_weight"):
            if getattr(self, name) < 0:
                raise SpkdiffError(f"{name} must be >= 0 (a loss weight), got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise SpkdiffError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.codebook_restart_every < 0:
            raise SpkdiffError(f"codebook_restart_every must be >= 0 (steps; 0 = off), "
                               f"got {self.codebook_restart_every}")
        if not 0.0 <= self.codebook_restart_until <= 1.0:
            raise SpkdiffError(f"codebook_restart_until must be a fraction of the run in [0, 1], "
                               f"got {self.codebook_restart_until}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "betas" in known:
            known["betas"] = tuple(known["betas"])
        known["extra"] = {k: v for k, v in d.items() if k not in cls.__dataclass_fields__}
        return cls(**known)


def build_model(stage: str, model_cfg: dict[str, Any]) -> nn.Module:
    if stage == "vqsvae":
        return VQSVAE(VQSVAEConfig.from_dict(model_cfg))
    if stage == "sdid":
        return SDID(SDIDConfig.from_dict(model_cfg))
    raise SpkdiffError(f"unknown stage {stage!r}: choose vqsvae, sdid or all")


def load_stage(run_dir: Path, stage: str) -> nn.Module:
    """Rebuild a trained stage from RUN_DIR/{stage}.safetensors (config inside the checkpoint)."""
    return stage_from_checkpoint(load_checkpoint(Path(run_dir) / f"{stage}.safetensors", stage=stage), stage)


def stage_from_checkpoint(ckpt: Checkpoint, stage: str) -> nn.Module:
    """The stage a loaded checkpoint holds, built from the config inside it, in eval mode."""
    model = build_model(stage, ckpt.config[stage]["model"])
    load_model_weights(model, ckpt.model, ckpt.path)
    return model.eval()


def lr_at(step: int, total: int, s: TrainSettings) -> float:
    if s.warmup_steps and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.lr_schedule == "cosine":
        progress = (step - s.warmup_steps) / max(1, total - s.warmup_steps)
        return s.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return s.lr


class _Logger:
    """CSV + TensorBoard scalars (TensorBoard optional at runtime: its import is slow).

    ``keep_until``: on resume, the checkpoint's step; rows logged after it (by a run killed before its next
    checkpoint) are dropped, so the resumed run does not log those steps twice.  None starts a new CSV.
    """

    def __init__(self, run_dir: Path, stage: str, keep_until: int | None):
        self.path = run_dir / f"{stage}_log.csv"
        self.stage = stage
        new = keep_until is None or not self.path.exists()
        if not new:
            with open(self.path, newline="") as fh:
                rows = list(csv.reader(fh))
            kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= keep_until]

            def write(tmp: Path) -> None:
                with open(tmp, "w", newline="") as fh:
                    csv.writer(fh).writerows(kept)

            atomic_write(self.path, write)
            new = not kept
        self.file = open(self.path, "w" if new else "a", newline="")  # noqa: SIM115 (closed in close())
        self.writer: csv.writer | None = None
        self.header_written = not new
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb" / stage))
        except Exception:  # pragma: no cover - tensorboard missing is not fatal
            self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            self.writer = csv.writer(self.file)
            if not self.header_written:
                self.writer.writerow(["step", *values])
                self.header_written = True
        self.writer.writerow([step, *(f"{v:.6g}" for v in values.values())])
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{self.stage}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    # On a terminal: a live bar; in a log file: one line every 30 s.
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30)


class _Signals:
    """SIGINT and SIGTERM raise KeyboardInterrupt, except inside :meth:`deferred`, which holds them to its end.

    SIGTERM (kill, a scheduler's stop) unwinds like Ctrl-C, so the final checkpoint runs; a job started in the
    background by a non-interactive shell ignores SIGINT, so the handler is installed explicitly.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.depth = 0
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def deferred(self, raise_pending: bool = True) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if raise_pending and not self.depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(f"signal {signum}")

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class WeightAverage:
    """Exponential moving average of the trained parameters (Polyak averaging), the weights a run ships.

    After optimizer step k (counted from 1): theta_ema <- d_k * theta_ema + (1 - d_k) * theta, with the warm-up
    d_k = min(decay, (1 + k) / (10 + k)), so the average does not cling to the first weights. Buffers are not
    averaged: the shipped model takes the trained model's. The trained ("online") weights stay in the
    checkpoint's training section, so --resume continues both.
    """

    PREFIX = "online."  # the online weights' keys in the checkpoint's training section

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1.0 - d)

    def averaged_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged parameters in place of the trained ones."""
        return {k: self.shadow.get(k, v).detach().clone() for k, v in model.state_dict().items()}


def _snapshot(model: nn.Module, gen: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """What a forward pass changes besides the parameters: buffers (BatchNorm statistics) and RNG states."""
    return [b.detach().clone() for b in model.buffers()], gen.get_state(), torch.get_rng_state()


def _restore(model: nn.Module, gen: torch.Generator, snap: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]
             ) -> None:
    with torch.no_grad():
        for buf, saved in zip(model.buffers(), snap[0], strict=True):
            buf.copy_(saved)
    gen.set_state(snap[1])
    torch.set_rng_state(snap[2])


def run_training(
    stage: str,
    run_dir: Path,
    config: dict[str, Any],
    data: torch.Tensor,
    step_fn: Callable[[nn.Module, torch.Tensor, torch.Generator, int], dict[str, torch.Tensor]],
    resume: bool,
    on_start: Callable[[nn.Module, torch.Tensor, torch.Generator], None] | None = None,
    dist: DistContext = SINGLE,
    setup: Callable[[nn.Module], None] | None = None,
    companion: nn.Module | None = None,
    after_step: Callable[[nn.Module, torch.optim.Optimizer, dict[str, Any], torch.Generator, int, int], None]
    | None = None,
) -> nn.Module:
    """The shared loop: shuffle per epoch, AdamW, schedule, atomic checkpoints, logs, progress.

    ``step_fn(model, batch, generator, step)`` gets the DDP-wrapped model under torchrun (its attributes still
    reach the model). ``setup`` adjusts the fresh model before the optimizer sees it (e.g. freezes parts), on a
    new run and on resume alike. ``companion``: training-only modules (a discriminator) optimised beside the
    model and checkpointed apart from it (``train/``), so they never reach an export. ``after_step(model,
    optimizer, step_fn's output, generator, step, total)`` runs right after each update, as part of the step
    (an interruption never separates them), e.g. to restart unused codes.
    """
    stage_cfg = config[stage]
    settings = TrainSettings.from_dict(stage_cfg["train"])
    torch.manual_seed(config["seed"])
    model = build_model(stage, stage_cfg["model"])
    if setup is not None:
        setup(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    if companion is not None:
        if dist.enabled:
            raise SpkdiffError(f"{stage}: training with a companion module (the adversarial term) runs in one "
                               f"process, not under torchrun")
        trained += list(companion.parameters())
    opt = torch.optim.AdamW(trained, lr=settings.lr, betas=settings.betas,
                            weight_decay=settings.weight_decay, fused=True)
    gen = torch.Generator().manual_seed(config["seed"] + 1)
    ckpt_path = run_dir / f"{stage}.safetensors"
    n = data.shape[0]
    steps_per_epoch = n // settings.batch_size
    if steps_per_epoch == 0:
        raise SpkdiffError(f"{n} training items are fewer than one batch of {settings.batch_size}")
    if settings.batch_size % dist.world_size:
        raise SpkdiffError(f"batch size {settings.batch_size} does not split evenly over {dist.world_size} ranks")
    if dist.enabled:
        dist.check_same(f"the {stage} training data (same dataset and --data-root contents on every host?)",
                        tensor_digest(data))
    total = steps_per_epoch * settings.epochs
    epoch, in_epoch, step = 0, 0, 0
    ckpt = dist.run_on_main(lambda: load_checkpoint(ckpt_path, stage=stage) if resume and ckpt_path.exists() else None)
    if ckpt is not None:
        online = {k[len(WeightAverage.PREFIX):]: v for k, v in ckpt.training.items()
                  if k.startswith(WeightAverage.PREFIX)}
        if settings.ema_decay and not online:
            raise SpkdiffError(f"{ckpt_path} was trained without ema_decay: resume it without, or start a new run")
        load_model_weights(model, online or ckpt.model, ckpt_path)
        if companion is not None:
            load_model_weights(companion, {k: v for k, v in ckpt.training.items()
                                           if not k.startswith(WeightAverage.PREFIX)}, ckpt_path)
        if ckpt.optimizer is None:
            raise SpkdiffError(f"{ckpt_path} has no optimizer state to resume from")
        opt.load_state_dict(ckpt.optimizer)
        gen.set_state(ckpt.rng["generator"])
        torch.set_rng_state(ckpt.rng["torch"])
        epoch, in_epoch, step = (int(ckpt.position[k]) for k in ("epoch", "in_epoch", "step"))
        if dist.is_main:
            print(f"resuming {stage} at epoch {epoch}, step {step}", file=sys.stderr)
    elif on_start is not None:
        on_start(model, data, gen)  # identical on every rank (same data, seed and generator)
    average = WeightAverage(model, settings.ema_decay) if settings.ema_decay else None
    if average is not None and ckpt is not None:
        average.shadow = {name: ckpt.model[name].clone() for name in average.shadow}

    def shipped(m: nn.Module) -> nn.Module:
        """The model a finished run hands on (to token encoding): the averaged weights where there are any."""
        if average is not None:
            m.load_state_dict(average.averaged_state(m))
        return m
    net = dist.prepare(model)  # DDP (+ SyncBatchNorm2d) under torchrun; DDP broadcasts rank 0's weights
    if dist.enabled and dist.is_main:
        per = settings.batch_size // dist.world_size
        bn = "over the global batch (--sync-bn)" if dist.sync_bn else f"per rank over {per} items (see --sync-bn)"
        print(f"{stage}: {dist.world_size} ranks ({dist.backend}): global batch {settings.batch_size} = "
              f"{dist.world_size} x {per} per rank, the single-process batch, so lr {settings.lr:g} is not scaled; "
              f"BatchNorm statistics {bn}", file=sys.stderr)
    saved = step if ckpt is not None else -1
    # The stage's cost so far, summed over resumed runs: this process's CPU time (all its threads) and wall time.
    # Wall time on a shared CPU overstates the cost; the CPU time is what a training budget counts.
    spent_before = {k: float(ckpt.position.get(k, 0.0)) if ckpt is not None else 0.0 for k in ("cpu_s", "wall_s")}
    cpu_start, wall_start = time.process_time(), time.perf_counter()

    def spent() -> dict[str, float]:
        return {"cpu_s": round(spent_before["cpu_s"] + time.process_time() - cpu_start, 3),
                "wall_s": round(spent_before["wall_s"] + time.perf_counter() - wall_start, 3)}

    def checkpoint(collective: bool = True) -> None:
        nonlocal saved
        position = {"epoch": epoch, "in_epoch": in_epoch, "step": step, "total": total, **spent()}
        if dist.enabled:
            position["world_size"] = dist.world_size
            if collective:  # every rank's parameter digest: the replicas must be bit-identical
                position["param_sha256"] = digests = dist.all_gather(param_digest(model))
                if len(set(digests)) > 1:
                    raise SpkdiffError(f"the ranks' {stage} parameters diverged by step {step}")
        if dist.is_main:
            training = {} if companion is None else companion.state_dict()
            weights = model.state_dict()
            if average is not None:
                training |= {WeightAverage.PREFIX + k: v for k, v in weights.items()}
                weights = average.averaged_state(model)
            save_checkpoint(ckpt_path, model=weights, config=config, stage=stage, optimizer=opt.state_dict(),
                            rng={"generator": gen.get_state(), "torch": torch.get_rng_state()}, position=position,
                            training=training or None)
        saved = step

    logger = _Logger(run_dir, stage, step if ckpt is not None else None) if dist.is_main else None
    bar = _progress(total, step, stage) if dist.is_main else None
    signals = _Signals()
    model.train()
    if companion is not None:
        companion.train()
    t_last, imgs = time.perf_counter(), 0
    # The state of the last completed step while a step is under way: an interruption restores it, so the
    # final checkpoint holds exactly that step (a half-done forward pass moves BatchNorm statistics and RNGs).
    before_step: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None = None
    try:
        while epoch < settings.epochs:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(config["seed"] * 1000 + epoch))
            while in_epoch < steps_per_epoch:
                if settings.max_steps is not None and step >= settings.max_steps:
                    if saved != step:
                        checkpoint()
                    return shipped(model)
                batch = order[in_epoch * settings.batch_size:(in_epoch + 1) * settings.batch_size]
                idx = dist.shard(batch)  # this rank's slice of the global batch (all of it in one process)
                before_step = _snapshot(model, gen)
                step_gen = dist.step_generator(gen, config["seed"], step)
                out = step_fn(net, data[idx], step_gen, step)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                with signals.deferred():  # the update and the position change together or not at all
                    for group in opt.param_groups:
                        group["lr"] = lr_at(step, total, settings)
                    opt.step()
                    if after_step is not None:
                        after_step(model, opt, out, step_gen, step, total)
                    if average is not None:
                        average.update(model, step)
                    step += 1
                    in_epoch += 1
                    before_step = None
                imgs += len(batch)
                if bar is not None:
                    bar.update(1)
                if step % settings.log_every == 0 or in_epoch == steps_per_epoch:
                    now = time.perf_counter()
                    losses = {k: float(v.detach()) for k, v in out.items() if isinstance(v, torch.Tensor)}
                    stats = {k: float(v) for k, v in out.get("stats", {}).items()}
                    measured = dist.mean(losses | stats)  # averaged over ranks = the global batch's mean loss
                    values = {k: measured[k] for k in losses}
                    values["images_per_s"] = imgs / max(now - t_last, 1e-9)
                    values["lr"] = opt.param_groups[0]["lr"]
                    values["epoch"] = epoch
                    values.update({k: measured[k] for k in stats})
                    if logger is not None and bar is not None:
                        logger.log(step, values)
                        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.0f}",
                                        refresh=False)
                    t_last, imgs = now, 0
                if step % settings.checkpoint_every == 0:
                    checkpoint()
            epoch += 1
            in_epoch = 0
            checkpoint()
    finally:
        with signals.deferred(raise_pending=False):  # a second Ctrl-C must not cut the last checkpoint short
            if before_step is not None:
                _restore(model, gen, before_step)
            if step > 0 and saved != step and dist.is_main:
                checkpoint(collective=False)  # nothing lost on Ctrl-C or an error (no collectives: a peer may be gone)
            if bar is not None and logger is not None:
                bar.close()
                logger.close()
                cost = spent()
                print(f"{stage}: step {step} of {total}; {cost['cpu_s'] / 60:.1f} CPU-minutes, "
                      f"{cost['wall_s'] / 60:.1f} minutes of wall time (this process, over all resumed runs)",
                      file=sys.stderr)
        signals.restore()
    return shipped(model)


# ----------------------------------------------------------------------------- stage 1


def _vqsvae_step(data_variance: float, settings: TrainSettings, discriminator: nn.Module | None):
    def step(model: nn.Module, batch: torch.Tensor, gen: torch.Generator, step: int) -> dict[str, torch.Tensor]:
        spikes: list[torch.Tensor] | None = [] if settings.sop_weight else None
        out = model(batch, data_variance, spikes)
        counts = torch.bincount(out["tokens"].flatten(), minlength=model.cfg.codebook_size).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
        stats = {"perplexity": perplexity, "dead_codes": (counts == 0).sum().float(), "k": model.k.detach()}
        losses = {k: out[k] for k in ("loss", "recon", "vq", "mmd")}
        if discriminator is not None:  # see spkdiff.train.adversarial
            shown = out["x_hat"].clamp(PIXEL_MIN, PIXEL_MAX)
            losses["disc"] = discriminator_hinge_loss(discriminator(batch), discriminator(shown.detach()))
            losses["loss"] = losses["loss"] + losses["disc"]  # reaches only D: the fake input is detached
            losses["adv"] = weight = torch.zeros(())  # the same log columns before the term is switched on
            if step >= settings.adversarial_start:
                losses["adv"] = generator_adversarial_loss(discriminator, shown)
                weight = settings.adversarial_weight * adaptive_weight(
                    out["recon"], losses["adv"], getattr(model, "module", model).readout.weight)
                losses["loss"] = losses["loss"] + weight * losses["adv"]
            stats["adv_weight"] = weight
        if spikes is not None:  # the energy lever: the generator's SOPs relative to its dense MACs
            sops = getattr(model, "module", model).generator_sop_fraction(spikes)
            losses["loss"] = losses["loss"] + settings.sop_weight * sops
            stats["sop_fraction"] = sops.detach()
        return losses | {"stats": stats, "codebook_batch": (out["z_e"], out["tokens"])}

    return step


def _restart_codes(settings: TrainSettings):
    """The after-step hook of stage 1 with ``codebook_restart_every``: see restart_unused_codes_."""
    def after_step(model: nn.Module, opt: torch.optim.Optimizer, out: dict[str, Any], gen: torch.Generator,
                   step: int, total: int) -> None:
        if (step + 1) % settings.codebook_restart_every == 0 and step < settings.codebook_restart_until * total:
            restart_unused_codes_(model.codebook, *out["codebook_batch"], opt, gen)

    return after_step


CONTEXT_RELAY_IMAGES = 512  # training images whose spike rates set a new context layer's BatchNorm


def train_vqsvae(run_dir: Path, config: dict[str, Any], data_root: str | None, resume: bool,
                 dist: DistContext = SINGLE) -> VQSVAE:
    settings = TrainSettings.from_dict(config["vqsvae"]["train"])
    with dist.main_first():  # one download per host
        images, _ = load_tensor(config["dataset"], data_root, "train", limit=settings.limit)
    images = (images - 0.5).contiguous()  # the paper's [-0.5, 0.5] pixel range
    data_variance = float(images.var())

    if settings.train_parts not in ("all", "generator"):
        raise SpkdiffError(f"unknown vqsvae train_parts {settings.train_parts!r}: choose all or generator")
    if settings.train_parts != "all" and settings.init_from is None:
        raise SpkdiffError(f"vqsvae train_parts {settings.train_parts!r} needs init_from (a trained stage 1)")
    if settings.codebook_restart_every and settings.train_parts != "all":
        raise SpkdiffError("codebook_restart_every needs train_parts all: the codebook is held otherwise")
    if settings.init_from_other_tokens:
        raise SpkdiffError("init_from_other_tokens is a stage-2 (sdid) setting: stage 1 makes the tokens")
    if settings.codebook_restart_every and dist.enabled:
        raise SpkdiffError("codebook_restart_every runs in one process, not under torchrun (the ranks' batches "
                           "differ, so would their restarts)")

    def setup(model: nn.Module) -> None:
        if settings.train_parts == "generator":
            model.freeze_tokenizer_()

    def on_start(model: nn.Module, data: torch.Tensor, gen: torch.Generator) -> None:
        # Only a fresh run reads init_from: --resume continues from its own checkpoint, whatever became of the source.
        if settings.init_from is not None:
            source, model_cfg = settings.init_from, config["vqsvae"]["model"]
            weights = dist.run_on_main(lambda: initial_weights(source, "vqsvae", model_cfg))
            grown, new_context = grow_generator(model, weights)
            load_model_weights(model, grown, Path(source))
            if new_context:
                idx = torch.randperm(data.shape[0], generator=gen)[: CONTEXT_RELAY_IMAGES]
                model.relay_context_(new_context, data[idx])
        elif settings.codebook_init == "data":
            idx = torch.randperm(data.shape[0], generator=gen)[: max(settings.batch_size, 256)]
            with torch.no_grad():
                model.init_codebook_(model.features(model.encode_spikes(data[idx])), gen)

    discriminator = None
    if settings.adversarial_weight:
        torch.manual_seed(config["seed"] + 2)
        discriminator = PatchDiscriminator(images.shape[1], settings.discriminator_channels)
    return run_training("vqsvae", run_dir, config, images, _vqsvae_step(data_variance, settings, discriminator),
                        resume, on_start, dist, setup=setup, companion=discriminator,
                        after_step=_restart_codes(settings) if settings.codebook_restart_every else None)


STAGE_NAMES = {"vqsvae": "VQ-SVAE", "sdid": "SDID"}


def _source_path(source: str) -> Path:
    return resolve_run(source) if source.startswith(PRETRAINED_PREFIX) else Path(source).expanduser()


def _source_checkpoint(source: str, stage: str) -> Checkpoint:
    """STAGE's checkpoint in SOURCE: a run directory, pretrained:NAME or a checkpoint file."""
    path = _source_path(source)
    return load_checkpoint(path / f"{stage}.safetensors" if path.is_dir() else path, stage=stage)


# Model settings a fine-tune may change: the weights are shared over the SNN time steps, so the SDID can be
# fine-tuned to fewer (or more) time steps per denoiser call, which scales its SOPs per call; a generator can be
# widened or deepened (grow_generator), a prior widened (grow_prior): the grown one starts as the source's exact
# function.
FINE_TUNABLE: dict[str, frozenset[str]] = {"vqsvae": frozenset({"decoder_hidden", "decoder_context"}),
                                           "sdid": frozenset({"time_steps", "channels"})}


def model_difference(stage: str, ours: dict[str, Any], theirs: dict[str, Any],
                     may_differ: frozenset[str] = frozenset()) -> tuple[str, Any, Any] | None:
    """The first setting outside ``may_differ`` in which two model configs of STAGE differ, as (key, ours,
    theirs), compared with unset defaults resolved (so an omitted neuron constant still compares equal); None if
    they agree."""
    def resolved(cfg: dict[str, Any]) -> dict[str, Any]:
        d = (SDIDConfig if stage == "sdid" else VQSVAEConfig).from_dict(cfg).to_dict()
        return d | {"neuron": LIFParams.from_dict(d["neuron"])}

    a, b = resolved(ours), resolved(theirs)
    key = next((k for k in a if a[k] != b.get(k) and k not in may_differ), None)
    return None if key is None else (key, a[key], b.get(key))


def initial_weights(source: str, stage: str, model_cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """STAGE's weights in SOURCE (a run directory, pretrained:NAME or a checkpoint file), refused unless its
    model config is ours (:func:`model_difference`) up to the settings in FINE_TUNABLE."""
    ckpt = _source_checkpoint(source, stage)
    differ = model_difference(stage, model_cfg, ckpt.config[stage]["model"], FINE_TUNABLE[stage])
    if differ:
        key, ours, theirs = differ
        raise SpkdiffError(f"init_from {source}: its {STAGE_NAMES[stage]} differs in {key} "
                           f"({theirs!r} vs {ours!r} here)")
    return ckpt.model


def is_tokenizer(key: str) -> bool:
    """The stage-1 tensors that decide an image's tokens (encoder, k, codebook): not the generator's."""
    return key.startswith("encoder.") or key in ("k", "codebook")


def check_same_tokens(source: str, run_dir: Path, hint: str = "") -> None:
    """A prior fine-tuned from SOURCE must predict the tokens it was trained on: refuse unless SOURCE's stage-1
    tokenizer is bit-identical to RUN_DIR's (a generator fine-tune keeps it; a retrained stage 1 does not).
    ``hint`` ends the refusal's message (the way past it, where the caller has one)."""
    path = _source_path(source)
    theirs_path = (path if path.is_dir() else path.parent) / "vqsvae.safetensors"
    if not theirs_path.exists():
        raise SpkdiffError(f"init_from {source}: no vqsvae.safetensors beside it, so its tokens cannot be "
                           f"checked{hint}")
    theirs = load_checkpoint(theirs_path, stage="vqsvae").model
    ours = load_checkpoint(run_dir / "vqsvae.safetensors", stage="vqsvae").model
    differ = [k for k in ours if is_tokenizer(k) and (k not in theirs or not torch.equal(ours[k], theirs[k]))]
    if differ:
        raise SpkdiffError(f"init_from {source}: its SDID predicts other tokens (stage-1 {differ[0]} differs from "
                           f"{run_dir}'s){hint}")


# ----------------------------------------------------------------------------- stage 2


@torch.no_grad()
def encode_dataset(vq: VQSVAE, images: torch.Tensor, batch_size: int = 500, dist: DistContext = SINGLE
                   ) -> torch.Tensor:
    """Token grids (N, h, w) int64 of images in [0, 1] (batches shared out over the ranks under torchrun)."""
    vq.eval()
    n_batches = -(-images.shape[0] // batch_size)
    out = dist.map_batches(lambda i: vq.encode_tokens(images[i * batch_size:(i + 1) * batch_size] - 0.5), n_batches)
    return torch.cat(out)


def cached_tokens(run_dir: Path, config: dict[str, Any], data_root: str | None, limit: int | None,
                  dist: DistContext = SINGLE) -> torch.Tensor:
    """Encode the training split once with the trained VQ-SVAE and cache it beside the checkpoint."""
    cache = run_dir / "tokens_train.npy"

    def cached() -> torch.Tensor | None:
        ckpt_mtime = (run_dir / "vqsvae.safetensors").stat().st_mtime
        if cache.exists() and cache.stat().st_mtime >= ckpt_mtime:
            tokens = torch.from_numpy(np.load(cache))
            if limit is None or tokens.shape[0] == limit:
                return tokens
        return None

    tokens = dist.run_on_main(cached)
    if tokens is not None:
        return tokens
    vq = dist.run_on_main(lambda: load_stage(run_dir, "vqsvae"))
    with dist.main_first():
        images, _ = load_tensor(config["dataset"], data_root, "train", limit=limit)
    tokens = encode_dataset(vq, images, dist=dist)
    if dist.is_main:
        save_npy_atomic(cache, tokens.numpy().astype(np.int16))
    return tokens


def _sdid_step(settings: TrainSettings, teacher: SDID | None = None):
    def step(model: nn.Module, tokens: torch.Tensor, gen: torch.Generator, step: int) -> dict[str, torch.Tensor]:
        sdid: SDID = getattr(model, "module", model)  # under torchrun, the DDP wrapper's module
        cfg = sdid.cfg
        t, masked, h_t = training_mask(tokens, cfg.num_codes, cfg.diffusion_steps, gen)
        spikes: list[torch.Tensor] | None = [] if settings.sop_weight else None
        logits = model(h_t, t, spikes)
        loss = diffusion_loss(logits, tokens, masked, t, cfg.diffusion_steps, settings.loss_weighting)
        stats: dict[str, torch.Tensor] = {}
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(h_t, t)
            distill = distillation_loss(logits, teacher_logits, masked, t, cfg.diffusion_steps,
                                        settings.loss_weighting)
            loss = loss + settings.distill_weight * distill
            stats["distill"] = distill.detach()
        with torch.no_grad():
            acc = ((logits.argmax(1) == tokens) & masked).sum() / masked.sum().clamp(min=1)
        stats["masked_accuracy"] = acc
        if spikes is not None:  # the energy lever: SOPs per call relative to the ANN's dense MACs
            sops = sdid.sop_fraction(spikes)
            loss = loss + settings.sop_weight * sops
            stats["sop_fraction"] = sops.detach()
        return {"loss": loss, "stats": stats}

    return step


def train_sdid(run_dir: Path, config: dict[str, Any], data_root: str | None, resume: bool,
               dist: DistContext = SINGLE) -> SDID:
    def check_stage1() -> None:
        if not (run_dir / "vqsvae.safetensors").exists():
            raise SpkdiffError(f"no stage-1 checkpoint in {run_dir}: "
                               f"run `spkdiff train --stage vqsvae --out {run_dir}`")

    dist.run_on_main(check_stage1)
    settings = TrainSettings.from_dict(config["sdid"]["train"])
    if (settings.distill_from is None) != (settings.distill_weight == 0):
        raise SpkdiffError("distillation needs both distill_from (the teacher run) and a distill_weight > 0")
    if settings.init_from_other_tokens and settings.init_from is None:
        raise SpkdiffError("init_from_other_tokens needs init_from (the prior to start from)")
    config["sdid"]["model"]["num_codes"] = config["vqsvae"]["model"]["codebook_size"]
    # A teacher that cannot serve is refused before the training split is encoded.
    teacher = None if settings.distill_from is None else load_teacher(settings.distill_from, run_dir,
                                                                      config["sdid"]["model"])
    tokens = cached_tokens(run_dir, config, data_root, settings.limit, dist).long()
    if dist.is_main:
        write_json_atomic(run_dir / "config.json", config)

    def on_start(model: nn.Module, data: torch.Tensor, gen: torch.Generator) -> None:
        # A fine-tune (the SOP regulariser on a trained prior, or a widened prior); read on a fresh start only,
        # as in stage 1.
        if settings.init_from is not None:
            source, model_cfg = settings.init_from, config["sdid"]["model"]

            def weights() -> dict[str, torch.Tensor]:
                if not settings.init_from_other_tokens:
                    check_same_tokens(source, run_dir, hint="; init_from_other_tokens: true starts from it anyway")
                return initial_weights(source, "sdid", model_cfg)

            load_model_weights(model, grow_prior(model, dist.run_on_main(weights)), Path(source))

    return run_training("sdid", run_dir, config, tokens, _sdid_step(settings, teacher), resume, on_start, dist=dist)


def load_teacher(source: str, run_dir: Path, model_cfg: dict[str, Any]) -> SDID:
    """The frozen teacher prior of ``distill_from`` (any width, depth or T): refused unless it predicts RUN_DIR's
    tokens from the same input encoding.  Read on every start, --resume included: the loss needs it throughout."""
    check_same_tokens(source, run_dir)
    teacher = stage_from_checkpoint(_source_checkpoint(source, "sdid"), "sdid")
    ours = SDIDConfig.from_dict(model_cfg)
    for key in ("num_codes", "grid", "diffusion_steps", "time_bins"):
        if getattr(teacher.cfg, key) != getattr(ours, key):
            raise SpkdiffError(f"distill_from {source}: its SDID differs in {key} ({getattr(teacher.cfg, key)!r} "
                               f"vs {getattr(ours, key)!r} here)")
    return teacher.requires_grad_(False)
