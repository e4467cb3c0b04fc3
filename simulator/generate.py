"""The simulator backend of :mod:`spkdiff.generation`: the SDID and generator stages of a deployment bundle
run on :class:`~spkdiff.simulator.engine.Simulator` (float, or Loihi fixed point with the bundle's integers).

    host MaskSampler --(token/time spikes)--> SDID (chip) --(logits = v_T / T)--> host sampler   x S steps
    host embedding z_q = codebook[tokens] --> generator (ASG + decoder, chip) --> read-out v_T
    host: depth-to-space, crop, x = tanh(v_T) + 0.5

The loop, the sampler settings, the keyed generator and the decode are :mod:`spkdiff.generation`'s, so
float-mode tokens equal the torch backend's for the same seed and batch size.  Counters are summed over
all denoiser calls: per stage, time runs over ``calls x T`` steps.

Reconstruction (:func:`reconstruct`) runs the bundle's other route with the same pipeline:
encoder (analog pixel currents in, the last layer's spikes over all T_s steps out) -> the host's
:class:`~spkdiff.generation.CodebookLookup` (Eq 4-8) -> generator -> host decode, in
:func:`spkdiff.generation.reconstruct`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spkdiff.errors import SpkdiffError
from spkdiff.generation import (
    HostConstants,
    ReconstructionConstants,
    check_images,
    decode_readout,
    embed_tokens,
    resolve_sampler_settings,
    spike_denoiser,
)
from spkdiff.generation import generate as generate_loop
from spkdiff.generation import reconstruct as reconstruct_loop
from spkdiff.neuromorphic.bundle import Bundle, BundleError, load_bundle

from .counters import Counters, CountsLog
from .engine import Simulator

GEN_STAGES = ("sdid", "generator")

#: Memory one simulator call may use.  A call runs every node on its whole (T, B, ...) sequence, so its peak
#: grows with the batch; the pipeline splits a call into chunks of images that fit (results and counts are
#: per image, so the chunks change nothing but the peak).
MEMORY_BUDGET_BYTES = 2 * 2**30
#: Peak bytes of one call per byte of its node sequences held at 8 bytes a value (convolution buffers and the
#: neuron states kept for counting come on top).  Measured: the 256 / 128 Fashion-MNIST generator in fixed point
#: peaks at about 100 MB per image against 19.6 MB of sequences (`spkdiff reconstruct --backend sim-fixed`,
#: batches of 8 and 32); rounded up.
PEAK_PER_SEQUENCE_BYTE = 6


# ----------------------------------------------------------------------------- simulators from a bundle


def stage_simulator(bundle: Bundle, stage: str, fixed: bool) -> Simulator:
    """The simulator of one bundle stage; in fixed mode it runs the bundle's integers (never recomputed)."""
    graph = bundle.graphs.get(stage)
    if graph is None:
        raise BundleError(f"bundle {bundle.path} has no {stage} stage")
    if not fixed:
        return Simulator(graph, mode="float")
    try:
        return Simulator(graph, mode="fixed", quant=bundle.loihi[stage])
    except SpkdiffError as err:
        raise BundleError(f"bundle {bundle.path}: stage {stage}: {err}") from None


def images_per_call(sim: Simulator, time_steps: int, budget_bytes: int | None = None) -> int:
    """How many images one call of ``sim`` over ``time_steps`` steps may take within ``budget_bytes`` (default
    :data:`MEMORY_BUDGET_BYTES`), at least 1."""
    sequence_bytes = 8 * time_steps * sum(math.prod(op.out_shape) for op in sim.ops.values())
    return max(1, (budget_bytes or MEMORY_BUDGET_BYTES) // (PEAK_PER_SEQUENCE_BYTE * sequence_bytes))


# ----------------------------------------------------------------------------- the pipeline


@dataclass(kw_only=True)
class SimulatorRun:
    """What a pipeline run returns: images in [0, 1], tokens, wall time, settings, per-stage counters."""

    images: torch.Tensor
    tokens: torch.Tensor
    seconds: float
    settings: dict[str, Any]
    counters: dict[str, Counters] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    simulators: dict[str, Simulator] = field(default_factory=dict, repr=False)

    def own_info(self) -> dict[str, Any]:
        """The subclass's own entries of :meth:`info`."""
        return {}

    def info(self) -> dict[str, Any]:
        n = self.images.shape[0]
        out: dict[str, Any] = {**self.own_info(), "seconds": self.seconds,
                               "images_per_s": n / max(self.seconds, 1e-9), **self.settings}
        if self.counters:
            out["per_image"] = {s: c.totals() for s, c in self.counters.items()}
        out["warnings"] = list(self.warnings)
        return out


@dataclass(kw_only=True)
class Generation(SimulatorRun):
    """Result of :func:`generate`; counters per stage over all calls (time = calls x T)."""

    denoiser_calls: int
    snn_steps: int

    def own_info(self) -> dict[str, Any]:
        return {"denoiser_calls": self.denoiser_calls, "snn_steps": self.snn_steps}


@dataclass(kw_only=True)
class Reconstruction(SimulatorRun):
    """Result of :func:`reconstruct`; counters of the encoder and generator (one call per image) and the host
    lookup's operations per image."""

    host_ops: dict[str, int]

    def own_info(self) -> dict[str, Any]:
        return {"host_lookup_ops": dict(self.host_ops)}


class SimulatorPipeline:
    """Stage simulators with the host constants: ``denoise`` (SDID) and ``decode`` plug into
    :func:`spkdiff.generation.generate`, ``encode`` and ``decode`` into :func:`spkdiff.generation.reconstruct`
    (``host``: :class:`HostConstants` or :class:`ReconstructionConstants`).  Counters are kept per batch
    (time = all of the batch's calls); ``record`` collects each call's input and raw read-out (per stage,
    ``*_in``; the encoder's whole spike train).  A call larger than ``budget_bytes`` allows runs in chunks of
    images (:func:`images_per_call`), with the same outputs and counts."""

    def __init__(self, sims: dict[str, Simulator], host: HostConstants | ReconstructionConstants, count: bool = True,
                 record: dict[str, list[torch.Tensor]] | None = None, budget_bytes: int | None = None,
                 calls_per_batch: dict[str, int] | None = None) -> None:
        self.sims, self.host, self.count, self.record = sims, host, count, record
        self.calls_per_batch = dict(calls_per_batch or {})
        self.chunk = {stage: images_per_call(sim, host.time_steps[stage], budget_bytes) for stage, sim in sims.items()}
        if "sdid" in sims:
            self.denoise = spike_denoiser(lambda x: self._run("sdid", x), host.num_codes, host.diffusion_steps,
                                          host.time_bins, host.time_steps["sdid"], host.patch)
        self.calls = self._new_logs()
        self.per_batch: list[dict[str, Counters]] = []
        self.warnings: list[str] = []

    @classmethod
    def from_bundle(cls, bundle: Bundle, fixed: bool, count: bool = True,
                    record: dict[str, list[torch.Tensor]] | None = None, denoiser_calls: int = 1
                    ) -> SimulatorPipeline:
        sims = {stage: stage_simulator(bundle, stage, fixed) for stage in GEN_STAGES}
        return cls(sims, HostConstants.from_bundle(bundle), count, record, calls_per_batch={"sdid": denoiser_calls})

    def _new_logs(self) -> dict[str, CountsLog]:
        return {stage: CountsLog(self.calls_per_batch.get(stage, 1)) for stage in self.sims}

    def _run(self, stage: str, x: torch.Tensor, all_steps: bool = False) -> torch.Tensor:
        """One call of ``stage`` on ``x`` (constant in time): the output at the last step (a read-out's v_T),
        or at every step (``all_steps``: a spike train (T, B, ...))."""
        sim, chunk = self.sims[stage], self.chunk[stage]
        outs, counts = [], []
        for start in range(0, x.shape[0], chunk):
            res = sim.run({next(iter(sim.inputs)): x[start:start + chunk]}, steps=self.host.time_steps[stage],
                          count=self.count)
            outs.append(res.outputs[next(iter(sim.outputs))])
            if res.counters is not None:
                counts.append(res.counters)
            self.warnings.extend(w for w in res.warnings if w not in self.warnings)
        if counts:
            self.calls[stage].append(counts[0] if len(counts) == 1 else Counters.concat(counts, axis=1))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (T, B, ...)
        v = out if all_steps else out[-1]
        if self.record is not None:
            self.record.setdefault(stage, []).append(v.clone())
            self.record.setdefault(stage + "_in", []).append(x.clone())
        return v

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder stage on pixel currents ``x`` (B, C, H, W): its last layer's spikes at every step."""
        return self._run("encoder", x.contiguous(), all_steps=True)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The batch's last call: embedding (Eq 8) -> generator -> host decode; closes the batch's counters."""
        h = self.host
        images = decode_readout(self._run("generator", embed_tokens(h.codebook, tokens).contiguous()),
                                h.depth_to_space, h.crop)
        self.per_batch.append({stage: log.counters() for stage, log in self.calls.items() if log.runs})
        self.calls = self._new_logs()
        return images

    def counters(self) -> dict[str, Counters]:
        """All batches' counters, per stage (samples = images)."""
        if not self.count or not self.per_batch:
            return {}
        return {st: Counters.concat([c[st] for c in self.per_batch], axis=1) for st in self.sims}


def generate(bundle: Bundle | str | Path, n: int, *, fixed: bool = False, steps: int | None = None,
             method: str | None = None, temperature: float | None = None, remask: float | None = None, seed: int = 0,
             batch_size: int = 256, count: bool = True, record: dict[str, list[torch.Tensor]] | None = None
             ) -> Generation:
    """Sample ``n`` images on the simulator from a deployment bundle (see the module docstring)."""
    if n < 1 or batch_size < 1:
        raise SpkdiffError("n and batch_size must be positive")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    settings = resolve_sampler_settings(b.sampler, method, steps, temperature, remask)
    calls = settings.sampler(int(b.sampler["num_codes"]), int(b.sampler["diffusion_steps"])).steps
    pipe = SimulatorPipeline.from_bundle(b, fixed, count, record, denoiser_calls=calls)
    h = pipe.host
    out = generate_loop(pipe.denoise, pipe.decode, n, num_codes=h.num_codes, diffusion_steps=h.diffusion_steps,
                        grid=h.grid, settings=settings, seed=seed, batch_size=batch_size)
    info = {"backend": "sim-fixed" if fixed else "sim", "method": settings.method, "steps": out.denoiser_calls,
            "temperature": settings.temperature, "remask": settings.remask, "seed": seed, "batch_size": batch_size,
            "n": n}
    snn_steps = out.denoiser_calls * h.time_steps["sdid"] + h.time_steps["generator"]
    return Generation(images=out.images, tokens=out.tokens, seconds=out.seconds, settings=info,
                      counters=pipe.counters(), warnings=pipe.warnings, simulators=pipe.sims,
                      denoiser_calls=out.denoiser_calls, snn_steps=snn_steps)


def reconstruct(bundle: Bundle | str | Path, images: torch.Tensor, *, fixed: bool = False, batch_size: int = 256,
                count: bool = True, record: dict[str, list[torch.Tensor]] | None = None) -> Reconstruction:
    """Reconstruct ``images`` in [0, 1] (n, C, H, W) on the simulator: encoder -> host lookup -> generator ->
    host decode (see the module docstring); the bundle's integers in ``fixed`` mode."""
    if batch_size < 1:
        raise SpkdiffError("batch_size must be positive")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    host = ReconstructionConstants.from_bundle(b)
    x = check_images(images, host.image_shape)
    sims = {stage: stage_simulator(b, stage, fixed) for stage in ("encoder", "generator")}
    pipe = SimulatorPipeline(sims, host, count, record)
    out = reconstruct_loop(pipe.encode, host.lookup, pipe.decode, x, batch_size=batch_size)
    enc_out = b.stage("encoder")["output"]["shape"]
    info = {"backend": "sim-fixed" if fixed else "sim", "batch_size": batch_size, "n": int(x.shape[0]),
            "snn_steps": host.time_steps["encoder"] + host.time_steps["generator"]}
    return Reconstruction(images=out.images, tokens=out.tokens, seconds=out.seconds, settings=info,
                          counters=pipe.counters(), warnings=pipe.warnings, simulators=pipe.sims,
                          host_ops=host.lookup.operations((host.time_steps["encoder"], *enc_out)))
