"""The generative loop as ONE Lava process graph, run once: simulated on-chip sampling of images.

Graph (:func:`build_graph`; host processes in :mod:`.lava_procs`, stage graphs :class:`~.lava_graph.LavaStage`)::

    MaskSamplerProcess --spikes_out--> SDID (Conv/Dense + LIF) --readout v (RefPort)--> MaskSamplerProcess
    MaskSamplerProcess --tokens_out--> CodebookLookupProcess --a_out--> ASG/decoder (Conv + LIF)
    generator readout v --(RefPort)--> ImageSinkProcess

The sampler and the lookup hold RefPorts to ``u`` and ``v`` of every population of their stage and zero
them in the management phase when a call's delayed wave reaches them (the reset between calls, see
:mod:`.lava_graph`).  :class:`Timeline` fixes every step up front: per batch of ``B`` images, ``S x B``
SDID calls of ``d_R + T - 1`` steps (sampler step by sampler step, image by image; after each sampler
step's last image the sampler draws with :class:`spkdiff.host.MaskSampler` and the batch's generator),
then ``B`` generator calls; :func:`lava_job` runs ``Timeline.total`` steps with one
``run(condition=RunSteps(total))`` and reads tokens and images from the host processes' Vars.

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

__all__ = ["Call", "GenerationGraph", "Stages", "Timeline", "build_graph", "decode_image", "lava_job", "load_stages",
           "run_generation", "sample_lava", "sample_reference"]


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


def decode_image(v: torch.Tensor, factor: int, crop: tuple[int, int]) -> torch.Tensor:
    """Generator read-out ``v_T`` (B, C f^2, h, w) -> image in [0, 1]: depth-to-space, crop, tanh, + 0.5."""
    from spkdiff.export.lowering import depth_to_space

    x = depth_to_space(v, factor)[..., : crop[0], : crop[1]]
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
        images.append(decode_image(gen_fn(z_q), stages.depth_to_space, stages.crop))
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
                record.setdefault(key + "_in", []).append(x.clone())
            return v
        return fn

    m, s, temp = _settings(stages, method, steps, temperature)
    return run_generation(stages, runner("sdid", stages.sdid_steps), runner("generator", stages.gen_steps), n, s, m,
                          temp, seed, batch_size)


@dataclass(frozen=True)
class Call:
    """What runs at a Lava step: ``stage`` call for ``image`` of ``batch`` (SDID: at sampler step
    ``diffusion_step``), at its 1-based ``step``."""

    stage: str  # "sdid" | "generator"
    batch: int
    diffusion_step: int
    image: int
    step: int


@dataclass(frozen=True)
class Timeline:
    """The one Lava run, step by step: per batch of ``B`` images, ``steps x B`` SDID calls of ``sdid_len``
    Lava steps (sampler step by sampler step, image by image), then ``B`` generator calls of ``gen_len``."""

    batches: tuple[int, ...]
    steps: int
    sdid_len: int
    gen_len: int

    def batch_len(self, k: int) -> int:
        return self.batches[k] * (self.steps * self.sdid_len + self.gen_len)

    @property
    def total(self) -> int:
        """Lava steps of the whole run: sum_k B_k (S (d_R + T - 1)_sdid + (d_R + T - 1)_generator)."""
        return sum(self.batch_len(k) for k in range(len(self.batches)))

    @property
    def num_images(self) -> int:
        return sum(self.batches)

    @property
    def num_sdid_calls(self) -> int:
        return self.steps * self.num_images

    def first_image(self, k: int) -> int:
        return sum(self.batches[:k])

    def at(self, t: int) -> Call | None:
        """The call running at Lava step ``t`` (1-based); None outside the run."""
        r = t - 1
        if r < 0:
            return None
        for k, b in enumerate(self.batches):
            n = self.batch_len(k)
            if r < n:
                sdid = self.steps * b * self.sdid_len
                if r < sdid:
                    c, s = divmod(r, self.sdid_len)
                    return Call("sdid", k, c // b, c % b, s + 1)
                c, s = divmod(r - sdid, self.gen_len)
                return Call("generator", k, 0, c, s + 1)
            r -= n
        return None


@dataclass
class GenerationGraph:
    """The Lava processes of one generation: the two stage graphs and the host processes."""

    timeline: Timeline
    sdid: Any  # LavaStage
    generator: Any
    sampler: Any  # MaskSamplerProcess
    lookup: Any  # CodebookLookupProcess
    sink: Any  # ImageSinkProcess

    @property
    def host(self) -> list[Any]:
        return [self.sampler, self.lookup, self.sink]


def build_graph(stages: Stages, plans: dict, n: int, steps: int | None, method: str, temperature: float, seed: int,
                batch_size: int, record: bool = False) -> GenerationGraph:
    """Wire ``sampler -> SDID -> (RefPort) sampler -> lookup -> generator -> (RefPort) sink`` (needs Lava)."""
    from spkdiff.host import MaskSampler
    from spkdiff.neuromorphic.lava_graph import LavaStage
    from spkdiff.neuromorphic.lava_procs.processes import CodebookLookupProcess, ImageSinkProcess, MaskSamplerProcess

    sampler = MaskSampler(stages.num_codes, stages.diffusion_steps, steps, method, temperature)
    batches = tuple(min(batch_size, n - i * batch_size) for i in range(-(-n // batch_size)))
    tl = Timeline(batches, sampler.steps, plans["sdid"].run_steps, plans["generator"].run_steps)
    sp = MaskSamplerProcess(plan=plans["sdid"], timeline=tl, sampler=sampler, seed=seed, num_codes=stages.num_codes,
                            diffusion_steps=stages.diffusion_steps, time_bins=stages.time_bins, grid=stages.grid,
                            record=record, name="mask_sampler")
    sdid = LavaStage(plans["sdid"], sp.spikes_out)
    sp.connect_populations(sdid.lifs)
    lookup = CodebookLookupProcess(plan=plans["generator"], timeline=tl, codebook=stages.codebook, grid=stages.grid,
                                   name="codebook_lookup")
    sp.tokens_out.connect(lookup.tokens_in)
    gen = LavaStage(plans["generator"], lookup.a_out)
    lookup.connect_populations(gen.lifs)
    ro = plans["generator"].populations[plans["generator"].readout].shape
    image_shape = tuple(decode_image(torch.zeros(1, *ro), stages.depth_to_space, stages.crop).shape[1:])
    sink = ImageSinkProcess(plan=plans["generator"], timeline=tl, image_shape=image_shape,
                            depth_to_space=stages.depth_to_space, crop=stages.crop, record=record, name="image_sink")
    sink.v.connect_var(gen.lifs[plans["generator"].readout].v)
    return GenerationGraph(tl, sdid, gen, sp, lookup, sink)


def lava_job(path: str | Stages, n: int, steps: int | None, method: str | None, temperature: float | None, seed: int,
             fixed: bool, batch_size: int, record: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Body of the isolated Lava process: build the one graph, run it once for ``Timeline.total`` steps,
    read tokens and images from the host processes, stop Lava."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    from spkdiff.neuromorphic.lava_graph import build_plan, verify_plan
    from spkdiff.neuromorphic.lava_procs.models import host_models

    # the host processes use torch in Lava's forked workers: an intra-op thread pool started before the
    # fork deadlocks there, so this process (and every worker) stays single-threaded
    torch.set_num_threads(1)
    stages = load_stages(path)
    t0 = time.perf_counter()
    plans = {"sdid": build_plan(stages.simulator("sdid", fixed), stages.sdid_steps),
             "generator": build_plan(stages.simulator("generator", fixed), stages.gen_steps, graded_input=True)}
    if fixed and stages.loihi is not None:
        for key, plan in plans.items():
            verify_plan(plan, stages.loihi[key])
    m, s, temp = _settings(stages, method, steps, temperature)
    g = build_graph(stages, plans, n, s, m, temp, seed, batch_size, record)
    tl = g.timeline
    tag = "fixed_pt" if fixed else "floating_pt"
    cfg = Loihi2SimCfg(select_tag=tag, exception_proc_model_map=host_models(g.host, tag))
    try:
        start = time.perf_counter()
        g.sampler.create_runtime(run_cfg=cfg)  # compile, start Lava's workers
        compiled = time.perf_counter()
        g.sampler.run(condition=RunSteps(num_steps=tl.total))  # the whole generation: one run
        seconds = time.perf_counter() - compiled
        lava_steps = int(np.asarray(g.sampler.steps_done.get()).ravel()[0])
        tokens = np.asarray(g.sampler.tokens.get()).astype(np.int64)
        images = np.asarray(g.sink.images.get()).astype(np.float32)
        raw = (np.asarray(g.sampler.readouts.get()), np.asarray(g.sampler.states.get()),
               np.asarray(g.sink.readouts.get())) if record else None
    finally:
        g.sampler.stop()
    info: dict[str, Any] = {"denoiser_calls": tl.steps, "snn_steps": tl.steps * stages.sdid_steps + stages.gen_steps,
                            "seconds": seconds, "seconds_compile": compiled - start,
                            "seconds_total": time.perf_counter() - t0,
                            "lava_steps": lava_steps, "lava_steps_planned": tl.total,
                            "lava_steps_per_call": {"sdid": tl.sdid_len, "generator": tl.gen_len}}
    if raw is not None:
        info["raw"] = _records(plans, tl, *raw)
    return images, tokens, info


def _records(plans: dict, tl: Timeline, sdid: np.ndarray, states: np.ndarray, gen: np.ndarray) -> dict:
    """The recorded Vars as the simulator's ``record``: ``sdid`` per sampler step (B, K, g, g) and
    ``generator`` per batch in its units, ``*_raw`` per call/image, ``states`` per SDID call
    (``name -> (u, v)``)."""
    from spkdiff.neuromorphic.lava_graph import readout_value

    out: dict[str, list] = {"sdid": [], "generator": [], "sdid_raw": list(sdid), "generator_raw": list(gen),
                            "states": []}
    call = 0
    for k, b in enumerate(tl.batches):
        for _ in range(tl.steps):
            out["sdid"].append(readout_value(plans["sdid"], np.stack(sdid[call: call + b])))
            call += b
        first = tl.first_image(k)
        out["generator"].append(readout_value(plans["generator"], gen[first: first + b]))
    dtype = np.int64 if plans["sdid"].mode == "fixed" else np.float64
    for row in states:
        rec, i = {}, 0
        for name, pop in plans["sdid"].populations.items():
            size = int(np.prod(pop.shape))
            rec[name] = tuple(row[i + j * size: i + (j + 1) * size].reshape(pop.shape).astype(dtype) for j in (0, 1))
            i += 2 * size
        out["states"].append(rec)
    return out


def sample_lava(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``spkdiff sample --bundle B --backend lava``: the whole loop as one Lava graph and one run, in an isolated
    process (timeout, no orphaned workers or shared memory after success, error or Ctrl-C)."""
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
