"""The generative loop as ONE Lava process graph, run once: simulated on-chip sampling of images.

Graph (:func:`build_graph`; host processes in :mod:`.lava_procs`, stage graphs :class:`~.lava_graph.LavaStage`)::

    MaskSamplerProcess --spikes_out--> SDID (Conv/Dense + LIF) --readout v (RefPort)--> MaskSamplerProcess
    MaskSamplerProcess --tokens_out--> CodebookLookupProcess --a_out--> ASG/decoder (Conv + LIF)
    generator readout v --(RefPort)--> ImageSinkProcess

The sampler and the lookup hold RefPorts to ``u`` and ``v`` of every population of their stage and zero
them in the management phase when a call's delayed wave reaches them (the reset between calls, see
:mod:`.chip_plan`).  :class:`Timeline` fixes every step up front: per batch of ``B`` images, ``S x B``
SDID calls of ``d_R + T - 1`` steps (sampler step by sampler step, image by image; after each sampler
step's last image the sampler draws with :class:`spkdiff.host.MaskSampler` and the batch's generator),
then ``B`` generator calls; :func:`lava_job` runs ``Timeline.total`` steps with one
``run(condition=RunSteps(total))`` and reads tokens and images from the host processes' Vars.

The host processes use :mod:`spkdiff.generation`'s sampler settings, keyed generator, embedding and
decode, so fixed_pt Lava and the simulator backend (:func:`spkdiff.simulator.generate.generate`) give the
same tokens and images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spkdiff.errors import SpkdiffError
from spkdiff.generation import HostConstants, SamplerSettings, decode_readout, resolve_sampler_settings

__all__ = ["Call", "GenerationGraph", "ReconstructionGraph", "Stages", "Timeline", "build_graph",
           "build_reconstruction_graph", "lava_job", "load_stages", "reconstruct_job", "reconstruct_lava",
           "sample_lava"]


@dataclass
class Stages:
    """What the Lava loop needs: the SDID and generator NIR graphs, the host constants, the integers."""

    sdid: Any  # nir.NIRGraph
    generator: Any
    host: HostConstants
    loihi: dict | None = None  # stage -> neuron -> the bundle's integers (checked against the Lava graph)
    bundle: Any = None  # the loaded spkdiff.neuromorphic.bundle.Bundle, if any

    @property
    def sdid_steps(self) -> int:
        return self.host.time_steps["sdid"]

    @property
    def gen_steps(self) -> int:
        return self.host.time_steps["generator"]

    def simulator(self, stage: str, fixed: bool) -> Any:
        """The stage's simulator; for a bundle in fixed mode with the bundle's integers (as the sim backend)."""
        from spkdiff.simulator import Simulator

        if self.bundle is not None:
            from spkdiff.simulator.generate import stage_simulator

            return stage_simulator(self.bundle, stage, fixed)
        graph = self.sdid if stage == "sdid" else self.generator
        return Simulator(graph, mode="fixed" if fixed else "float",
                         quant={"num_steps": self.host.time_steps[stage]} if fixed else None)


def load_stages(path: str | Path | Stages) -> Stages:
    """From a deployment bundle (``spkdiff-export --target lava``); a :class:`Stages` is returned as is."""
    if isinstance(path, Stages):
        return path
    from spkdiff.neuromorphic.bundle import load_bundle

    path = Path(path)
    if not (path / "manifest.json").exists():
        raise SpkdiffError(f"{path} is not a deployment bundle (no manifest.json): export one with "
                           "`spkdiff-export --target lava`")
    b = load_bundle(path)
    return Stages(b.graphs["sdid"], b.graphs["generator"], HostConstants.from_bundle(b), b.loihi, b)


@dataclass(frozen=True)
class Call:
    """What runs at a Lava step: ``stage`` call for ``image`` of ``batch`` (SDID: at sampler step
    ``diffusion_step``), at its 1-based ``step``."""

    stage: str  # "sdid" | "encoder" (the Timeline's first stage) | "generator"
    batch: int
    diffusion_step: int
    image: int
    step: int


@dataclass(frozen=True)
class Timeline:
    """The one Lava run, step by step: per batch of ``B`` images, ``steps x B`` SDID calls of ``sdid_len``
    Lava steps (sampler step by sampler step, image by image), then ``B`` generator calls of ``gen_len``.
    Reconstruction: ``first="encoder"``, ``steps=1``: ``B`` encoder calls of ``sdid_len``, then the generator."""

    batches: tuple[int, ...]
    steps: int
    sdid_len: int
    gen_len: int
    first: str = "sdid"  # the stage called before the generator

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
                    return Call(self.first, k, c // b, c % b, s + 1)
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


def build_graph(stages: Stages, plans: dict, n: int, settings: SamplerSettings, seed: int, batch_size: int,
                record: bool = False) -> GenerationGraph:
    """Wire ``sampler -> SDID -> (RefPort) sampler -> lookup -> generator -> (RefPort) sink`` (needs Lava)."""
    from spkdiff.neuromorphic.lava_graph import LavaStage
    from spkdiff.neuromorphic.lava_procs.processes import CodebookLookupProcess, ImageSinkProcess, MaskSamplerProcess

    h = stages.host
    sampler = settings.sampler(h.num_codes, h.diffusion_steps)
    batches = tuple(min(batch_size, n - i * batch_size) for i in range(-(-n // batch_size)))
    tl = Timeline(batches, sampler.steps, plans["sdid"].run_steps, plans["generator"].run_steps)
    sp = MaskSamplerProcess(plan=plans["sdid"], timeline=tl, sampler=sampler, seed=seed, num_codes=h.num_codes,
                            diffusion_steps=h.diffusion_steps, time_bins=h.time_bins, grid=h.grid,
                            patch=h.patch, record=record, name="mask_sampler")
    sdid = LavaStage(plans["sdid"], sp.spikes_out)
    sp.connect_populations(sdid.lifs)
    lookup = CodebookLookupProcess(plan=plans["generator"], timeline=tl, codebook=h.codebook, grid=h.grid,
                                   name="codebook_lookup")
    sp.tokens_out.connect(lookup.tokens_in)
    gen = LavaStage(plans["generator"], lookup.a_out)
    lookup.connect_populations(gen.lifs)
    ro = plans["generator"].populations[plans["generator"].readout].shape
    image_shape = tuple(decode_readout(torch.zeros(1, *ro), h.depth_to_space, h.crop).shape[1:])
    sink = ImageSinkProcess(plan=plans["generator"], timeline=tl, image_shape=image_shape,
                            depth_to_space=h.depth_to_space, crop=h.crop, record=record, name="image_sink")
    sink.v.connect_var(gen.lifs[plans["generator"].readout].v)
    return GenerationGraph(tl, sdid, gen, sp, lookup, sink)


def lava_job(path: str | Stages, n: int, steps: int | None, method: str | None, temperature: float | None, seed: int,
             fixed: bool, batch_size: int, record: bool = False, remask: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Body of the isolated Lava process: build the one graph, run it once for ``Timeline.total`` steps,
    read tokens and images from the host processes, stop Lava."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    from spkdiff.neuromorphic.chip_plan import build_plan
    from spkdiff.neuromorphic.lava_procs.models import host_models

    # the host processes use torch in Lava's forked workers: an intra-op thread pool started before the
    # fork deadlocks there, so this process (and every worker) stays single-threaded
    torch.set_num_threads(1)
    stages = load_stages(path)
    t0 = time.perf_counter()
    # fixed: the plans read the integers the stage simulators run (a bundle's, never recomputed)
    plans = {"sdid": build_plan(stages.simulator("sdid", fixed), stages.sdid_steps),
             "generator": build_plan(stages.simulator("generator", fixed), stages.gen_steps, graded_input=True)}
    settings = resolve_sampler_settings(stages.host.sampler_defaults, method, steps, temperature, remask)
    g = build_graph(stages, plans, n, settings, seed, batch_size, record)
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
    info: dict[str, Any] = {"method": settings.method, "steps": tl.steps, "temperature": settings.temperature,
                            "remask": settings.remask,
                            "denoiser_calls": tl.steps, "snn_steps": tl.steps * stages.sdid_steps + stages.gen_steps,
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
    from spkdiff.neuromorphic.chip_plan import readout_value

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


def sample_lava(bundle: str | Path | Stages, n: int, *, steps: int | None = None, method: str | None = None,
                temperature: float | None = None, remask: float | None = None, seed: int = 0, fixed: bool = False,
                batch_size: int = 256, timeout: float = 600.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The whole loop as one Lava graph and one run, in an isolated process (timeout, no orphaned workers or
    shared memory after success, error or Ctrl-C)."""
    from spkdiff.neuromorphic.lava_runner import run_isolated

    source = bundle if isinstance(bundle, Stages) else str(bundle)
    images, tokens, info = run_isolated(lava_job, source, n, steps, method, temperature, seed, fixed, batch_size,
                                        remask=remask, timeout=timeout)
    return torch.from_numpy(images), torch.from_numpy(tokens), info


# ----------------------------------------------------------------------------- reconstruction


@dataclass
class ReconstructionGraph:
    """The Lava processes of one reconstruction: the encoder and generator graphs and the host processes."""

    timeline: Timeline
    encoder: Any  # LavaStage
    generator: Any
    source: Any  # ImageSourceProcess
    lookup: Any  # EncoderLookupProcess
    sink: Any  # ImageSinkProcess

    @property
    def host(self) -> list[Any]:
        return [self.source, self.lookup, self.sink]


def build_reconstruction_graph(host: Any, plans: dict, images: np.ndarray, batch_size: int,
                               record: bool = False) -> ReconstructionGraph:
    """Wire ``source -> encoder -> (spikes, InPort) lookup -> generator -> (RefPort) sink`` (needs Lava);
    ``host``: :class:`spkdiff.generation.ReconstructionConstants`, ``images`` (n, C, H, W) in [0, 1]."""
    from spkdiff.neuromorphic.lava_graph import LavaStage
    from spkdiff.neuromorphic.lava_procs.processes import EncoderLookupProcess, ImageSinkProcess, ImageSourceProcess

    n = len(images)
    batches = tuple(min(batch_size, n - i * batch_size) for i in range(-(-n // batch_size)))
    enc, gen_plan = plans["encoder"], plans["generator"]
    tl = Timeline(batches, 1, enc.run_steps, gen_plan.run_steps, first="encoder")
    source = ImageSourceProcess(plan=enc, timeline=tl, images=np.asarray(images, np.float32), name="image_source")
    encoder = LavaStage(enc, source.a_out)
    source.connect_populations(encoder.lifs)
    grid = enc.populations[enc.readout].shape[1:]
    lookup = EncoderLookupProcess(plan=gen_plan, encoder_plan=enc, timeline=tl, lookup=host.lookup, grid=grid,
                                  name="codebook_lookup")
    encoder.lifs[enc.readout].s_out.connect(lookup.spikes_in)
    gen = LavaStage(gen_plan, lookup.a_out)
    lookup.connect_populations(gen.lifs)
    ro = gen_plan.populations[gen_plan.readout].shape
    image_shape = tuple(decode_readout(torch.zeros(1, *ro), host.depth_to_space, host.crop).shape[1:])
    sink = ImageSinkProcess(plan=gen_plan, timeline=tl, image_shape=image_shape, depth_to_space=host.depth_to_space,
                            crop=host.crop, record=record, name="image_sink")
    sink.v.connect_var(gen.lifs[gen_plan.readout].v)
    return ReconstructionGraph(tl, encoder, gen, source, lookup, sink)


def reconstruct_job(path: str, images: np.ndarray, fixed: bool, batch_size: int, record: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Body of the isolated Lava process: the reconstruction graph of bundle ``path``, run once for
    ``Timeline.total`` steps; tokens and images read from the host processes."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    from spkdiff.generation import ReconstructionConstants
    from spkdiff.neuromorphic.bundle import load_bundle
    from spkdiff.neuromorphic.chip_plan import build_plan, readout_value
    from spkdiff.neuromorphic.lava_procs.models import host_models
    from spkdiff.simulator.generate import stage_simulator

    torch.set_num_threads(1)  # as lava_job: no intra-op pool across Lava's fork
    t0 = time.perf_counter()
    bundle = load_bundle(path)
    host = ReconstructionConstants.from_bundle(bundle)
    # fixed: the plans read the bundle's integers, as the simulator backend runs them
    plans = {stage: build_plan(stage_simulator(bundle, stage, fixed), host.time_steps[stage], graded_input=True)
             for stage in ("encoder", "generator")}
    g = build_reconstruction_graph(host, plans, images, batch_size, record)
    tl = g.timeline
    tag = "fixed_pt" if fixed else "floating_pt"
    cfg = Loihi2SimCfg(select_tag=tag, exception_proc_model_map=host_models(g.host, tag))
    try:
        start = time.perf_counter()
        g.source.create_runtime(run_cfg=cfg)
        compiled = time.perf_counter()
        g.source.run(condition=RunSteps(num_steps=tl.total))  # the whole reconstruction: one run
        seconds = time.perf_counter() - compiled
        tokens = np.asarray(g.lookup.tokens.get()).astype(np.int64)
        images_out = np.asarray(g.sink.images.get()).astype(np.float32)
        raw = np.asarray(g.sink.readouts.get()) if record else None
    finally:
        g.source.stop()
    info: dict[str, Any] = {"backend": "lava", "fixed": fixed, "seconds": seconds, "seconds_compile": compiled - start,
                            "seconds_total": time.perf_counter() - t0, "lava_steps": tl.total,
                            "lava_steps_per_call": {"encoder": tl.sdid_len, "generator": tl.gen_len},
                            "snn_steps": host.time_steps["encoder"] + host.time_steps["generator"]}
    if raw is not None:  # the generator read-outs per image, in the simulator's units
        info["readouts"] = [readout_value(plans["generator"], r) for r in raw]
    return images_out, tokens, info


def reconstruct_lava(bundle: str | Path, images: torch.Tensor, *, fixed: bool = False, batch_size: int = 256,
                     timeout: float = 600.0, record: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Reconstruct ``images`` in [0, 1] (n, C, H, W) as one Lava graph and one run, in an isolated process (as
    :func:`sample_lava`); the images are checked against the bundle's encoder first (one-line errors)."""
    from spkdiff.generation import ReconstructionConstants, check_images
    from spkdiff.neuromorphic.bundle import load_bundle
    from spkdiff.neuromorphic.lava_runner import run_isolated

    if batch_size < 1:
        raise SpkdiffError("batch_size must be positive")
    x = check_images(images, ReconstructionConstants.from_bundle(load_bundle(bundle)).image_shape)
    out, tokens, info = run_isolated(reconstruct_job, str(bundle), x.numpy(), fixed, batch_size, record,
                                     timeout=timeout)
    return torch.from_numpy(out), torch.from_numpy(tokens), info
