"""The generative loop on Lava: mask sampler (host) <-> SDID graph, codebook embedding -> ASG + decoder graph.

Structure (per batch, all in one isolated Lava process): the SDID and the generator are each one Lava
process graph (:class:`~.lava_graph.LavaStage`: Conv/Dense + LIF processes, a host ``HostDrive`` process
for the input).  For every denoiser call the host writes the token/time spikes into the SDID's drive,
runs ``d_R + T - 1`` Lava steps (zeroing populations that the delayed wave has not reached yet, which is
also the reset between diffusion steps) and reads the integrator's ``v``; :class:`spkdiff.host.MaskSampler`
turns the logits into tokens.  Then the host writes the codebook-embedding currents into the generator's
drive and reads the LI read-out's ``v``.  The Lava graph is compiled once per stage and reused.  The mask
sampler and the codebook lookup run in the host program between Lava runs (not as Lava processes), so a
generation is many short Lava runs of two compiled graphs, not one run of one graph.

:func:`sample_reference` runs the identical loop on :class:`spkdiff.simulator.Simulator` (same sampler,
same random generator), so fixed_pt Lava and the fixed-mode simulator give the same tokens and images.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spkdiff.errors import SpkdiffError

__all__ = ["Stages", "load_stages", "sample_lava", "sample_reference", "run_generation"]


@dataclass
class Stages:
    """What the loop needs: the SDID and generator NIR graphs, their read-out conventions, the codebook."""

    sdid: Any  # nir.NIRGraph
    generator: Any
    codebook: torch.Tensor  # (K, C)
    num_codes: int
    diffusion_steps: int
    time_bins: int
    grid: int
    sdid_steps: int
    gen_steps: int
    depth_to_space: int
    crop: tuple[int, int]
    fine_channels: int
    sample_defaults: dict
    quant: dict = field(default_factory=dict)  # stage -> fixed-mode options of the bundle's quantisation
    loihi: dict | None = None  # stage -> neuron -> the bundle's integers (checked against the Lava graph)
    bundle: Any = None  # the loaded spkdiff.bundle.Bundle, if any

    def simulator(self, stage: str, fixed: bool) -> Any:
        """The stage's simulator; for a bundle in fixed mode with the bundle's integers (as the sim backend)."""
        from spkdiff.simulator import Simulator

        if self.bundle is not None:
            from spkdiff.simulator.generate import stage_simulator

            return stage_simulator(self.bundle, stage, fixed)[0]
        graph = self.sdid if stage == "sdid" else self.generator
        return Simulator(graph, mode="fixed" if fixed else "float", quant=self.quant.get(stage) if fixed else None)


def load_stages(path: str | Path | Stages) -> Stages:
    """From a deployment bundle (``spkdiff.bundle.load_bundle``) or a trained run directory (a
    :class:`Stages` is returned as is)."""
    if isinstance(path, Stages):
        return path
    path = Path(path)
    if not path.exists():
        raise SpkdiffError(f"{path} does not exist")
    if (path / "manifest.json").exists():
        return _stages_from_bundle(path)
    return _stages_from_run(path)


def _stages_from_run(run_dir: Path) -> Stages:
    from spkdiff.config import read_json
    from spkdiff.export.nir_graphs import build_stage_graphs, load_models

    vq, sdid = load_models(run_dir)
    if sdid is None:
        raise SpkdiffError(f"{run_dir} holds no trained SDID")
    g = build_stage_graphs(vq, sdid)
    ro = g["generator"].readout
    cfg = sdid.cfg
    config = read_json(run_dir / "config.json", "run config") if (run_dir / "config.json").exists() else {}
    return Stages(g["sdid"].graph, g["generator"].graph, vq.codebook.detach().float().clone(), cfg.num_codes,
                  cfg.diffusion_steps, cfg.time_bins, cfg.grid, g["sdid"].steps, g["generator"].steps,
                  int(ro["depth_to_space"]), tuple(ro["crop"]), int(ro["fine_shape"][0]),
                  config.get("sdid", {}).get("sample", {}))


def _stages_from_bundle(path: Path) -> Stages:
    from spkdiff.bundle import load_bundle  # the deployment bundle's reader

    b = load_bundle(path)
    ms, do = b.sampler, b.decoder_output
    grid = ms["grid"][0] if isinstance(ms["grid"], list | tuple) else ms["grid"]
    fine = b.stage("generator").get("output_shape") or [0]
    sample = {k: ms[k] for k in ("method", "steps", "temperature") if ms.get(k) is not None}
    return Stages(b.graphs["sdid"], b.graphs["generator"], torch.as_tensor(b.codebook).float(), int(ms["num_codes"]),
                  int(ms["diffusion_steps"]), int(ms["time_bins"]), int(grid), b.time_steps("sdid"),
                  b.time_steps("generator"), int(do["depth_to_space"]), tuple(int(c) for c in do["crop"]),
                  int(fine[0]), sample, _stage_quant(b.quant_options), b.loihi, b)


def _stage_quant(options: dict) -> dict:
    """``stage -> options`` from the bundle's quantisation options (``per_stage`` or shared)."""
    per = options.get("per_stage")
    if per is not None:
        return {k: dict(v) for k, v in per.items()}
    return {k: dict(options) for k in ("encoder", "generator", "sdid")}


def _image(stages: Stages, v: torch.Tensor) -> torch.Tensor:
    """Generator read-out ``v_T`` (B, C f^2, h, w) -> image in [0, 1]: depth-to-space, crop, tanh, + 0.5."""
    from spkdiff.export.lowering import depth_to_space

    x = depth_to_space(v, stages.depth_to_space)[..., : stages.crop[0], : stages.crop[1]]
    return (torch.tanh(x) + 0.5).clamp(0, 1)


def run_generation(stages: Stages, sdid_fn: Callable[[torch.Tensor], torch.Tensor],
                   gen_fn: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int | None, method: str,
                   temperature: float, seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The loop: ``sdid_fn(spikes (B, K+1+bins, g, g)) -> v_T``; ``gen_fn(z_q (B, C, g, g)) -> v_T``."""
    from spkdiff.host import MaskSampler, sdid_input_spikes
    from spkdiff.train.sampling import batch_generator

    sampler = MaskSampler(stages.num_codes, stages.diffusion_steps, steps, method, temperature)

    def denoise(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = sdid_input_spikes(tokens, t, stages.num_codes, stages.diffusion_steps, stages.time_bins)
        return sdid_fn(x) / stages.sdid_steps  # logits = v_T / T

    start = time.perf_counter()
    images, tokens = [], []
    for i in range(-(-n // batch_size)):
        b = min(batch_size, n - i * batch_size)
        tok = sampler.sample(denoise, b, (stages.grid, stages.grid), batch_generator(seed, i))
        z_q = stages.codebook[tok].permute(0, 3, 1, 2)
        images.append(_image(stages, gen_fn(z_q)))
        tokens.append(tok)
    seconds = time.perf_counter() - start
    info = {"denoiser_calls": sampler.steps, "snn_steps": sampler.steps * stages.sdid_steps + stages.gen_steps,
            "seconds": seconds}
    return torch.cat(images), torch.cat(tokens), info


def _settings(stages: Stages, method: str | None, steps: int | None, temperature: float | None
              ) -> tuple[str, int | None, float]:
    d = stages.sample_defaults
    m = method or d.get("method", "confidence")
    s = steps or (d.get("steps") if m == d.get("method", "confidence") else None)
    return m, s, (temperature if temperature is not None else d.get("temperature", 1.0))


def sample_reference(path: str | Stages, n: int, steps: int | None = None, method: str | None = None,
                     temperature: float | None = None, seed: int = 0, fixed: bool = True,
                     batch_size: int = 256, record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The same loop on the simulator (``fixed``: Loihi fixed point, else float); ``record`` collects the raw
    read-outs (``sdid``: list of (B, K, g, g), ``generator``: list) for comparisons."""
    stages = load_stages(path)
    sims = {k: stages.simulator(k, fixed) for k in ("sdid", "generator")}

    def runner(key: str, t: int) -> Callable[[torch.Tensor], torch.Tensor]:
        sim = sims[key]

        def fn(x: torch.Tensor) -> torch.Tensor:
            out = sim.run({sim.flat.inputs[0]: x}, steps=t, count=False).outputs
            v = next(iter(out.values()))[-1]
            if record is not None:
                record.setdefault(key, []).append(v.clone())
            return v
        return fn

    m, s, temp = _settings(stages, method, steps, temperature)
    return run_generation(stages, runner("sdid", stages.sdid_steps), runner("generator", stages.gen_steps), n, s, m,
                          temp, seed, batch_size)


def lava_job(path: str | Stages, n: int, steps: int | None, method: str | None, temperature: float | None, seed: int,
             fixed: bool, batch_size: int, record: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Body of the isolated Lava process: build both stage graphs, run the loop, stop Lava."""
    from spkdiff.neuromorphic.lava_graph import LavaStage, build_plan, host_current, verify_plan

    stages = load_stages(path)
    t0 = time.perf_counter()
    plans = {"sdid": build_plan(stages.simulator("sdid", fixed), stages.sdid_steps),
             "generator": build_plan(stages.simulator("generator", fixed), stages.gen_steps, graded_input=True)}
    if fixed and stages.loihi is not None:
        for key, plan in plans.items():
            verify_plan(plan, stages.loihi[key])
    lava = {k: LavaStage(p) for k, p in plans.items()}
    recorded: dict[str, list] = {"sdid": [], "generator": [], "sdid_raw": [], "generator_raw": []}

    def runner(key: str) -> Callable[[torch.Tensor], torch.Tensor]:
        plan, stage = plans[key], lava[key]

        def fn(x: torch.Tensor) -> torch.Tensor:
            feed = host_current(plan, x) if plan.input_kind == "current" else x.numpy()
            raw = np.stack([stage.run(feed[b]) for b in range(feed.shape[0])])
            v = torch.from_numpy(raw)
            if fixed:  # the simulator's read-out units: v_int / scale, stored as float32
                v = (v.double() / plan.populations[plan.readout].scale).float()
            if record:
                recorded[key].append(v.clone())
                recorded[key + "_raw"].append(raw.copy())
            return v.float()
        return fn

    try:
        m, s, temp = _settings(stages, method, steps, temperature)
        images, tokens, info = run_generation(stages, runner("sdid"), runner("generator"), n, s, m, temp, seed,
                                              batch_size)
    finally:
        for st in lava.values():
            st.stop()
    info["seconds_total"] = time.perf_counter() - t0
    info["lava_steps_per_call"] = {k: p.run_steps for k, p in plans.items()}
    if record:
        info["raw"] = recorded
    return images.numpy(), tokens.numpy(), info


def sample_lava(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``spkdiff sample --bundle B --backend lava``: the whole loop in one isolated Lava process (timeout,
    no orphaned workers or shared memory after success, error or Ctrl-C)."""
    from spkdiff.neuromorphic.lava_runner import run_isolated

    source = getattr(args, "bundle", None)
    if source is None:  # --run: a run directory or pretrained:NAME (graphs and integers computed here)
        from spkdiff.config import resolve_run

        source = resolve_run(args.run)
    images, tokens, info = run_isolated(
        lava_job, str(source), int(args.n), getattr(args, "steps", None), getattr(args, "method", None),
        getattr(args, "temperature", None), int(getattr(args, "seed", 0)), bool(getattr(args, "fixed", False)),
        int(getattr(args, "batch_size", 256) or 256), timeout=float(getattr(args, "timeout", 600) or 600))
    return torch.from_numpy(images), torch.from_numpy(tokens), info
