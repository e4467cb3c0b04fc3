"""The whole generative loop on the simulator, from a deployment bundle (float or Loihi fixed point).

    host MaskSampler --(token/time spikes)--> SDID (chip) --(logits = v_T / T)--> host sampler   x S steps
    host embedding z_q = codebook[tokens] --> generator (ASG + decoder, chip) --> read-out v_T
    host: depth-to-space, crop, x = tanh(v_T) + 0.5

Randomness: batch ``i`` (images ``i*batch_size...``) draws from the same keyed generator as the torch
backend (:func:`spkdiff.train.sampling.batch_generator`), so float-mode tokens equal the torch backend's
for the same seed and batch size.  Fixed mode takes every integer from the bundle (not recomputed).
Counters are summed over all denoiser calls: per stage, time runs over ``calls x T`` steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spkdiff.bundle import Bundle, BundleError, load_bundle
from spkdiff.errors import SpkdiffError
from spkdiff.host import MaskSampler, sdid_input_spikes

from .counters import Counters, LayerCounts
from .engine import Simulator
from .fixed import FixedNeuronOp, FixedOptions, FixedSynapseOp, NeuronQuant

GEN_STAGES = ("sdid", "generator")


# ----------------------------------------------------------------------------- simulators from a bundle


def apply_bundle_quant(sim: Simulator, layers: dict[str, Any]) -> bool:
    """Replace a fixed-mode simulator's integers by the bundle's ``{neuron: LoihiLayer}``.

    Returns True when the bundle's integers equal what the simulator computed itself.
    """
    same = True
    seen = set()
    for name, op in sim.ops.items():
        if not isinstance(op, FixedNeuronOp):
            continue
        layer = layers.get(name)
        if layer is None:
            raise BundleError(f"the bundle has no Loihi parameters for neuron node {name!r}")
        seen.add(name)
        if set(layer.synapses) != set(op.quant.synapses) or set(layer.direct) != set(op.quant.direct):
            raise BundleError(f"{name}: the bundle's synapses {sorted(layer.synapses)} do not match the graph's "
                              f"{sorted(op.quant.synapses)}")
        syns = {s: (None if ls.weight_int is None else torch.as_tensor(ls.weight_int), ls.weight_exp)
                for s, ls in layer.synapses.items()}
        nq = NeuronQuant(layer.lif_params(), layer.scale, layer.spiking, layer.analog_factor, syns, dict(layer.direct))
        old = op.quant
        same = same and _quant_equal(old, nq)
        op.quant = nq
        op.spiking = nq.spiking
        for s, (w, e) in syns.items():
            sop = sim.ops[s]
            assert isinstance(sop, FixedSynapseOp)
            sop.w_int, sop.weight_exp, sop.analog_factor = w, e, nq.analog_factor
    extra = set(layers) - seen
    if extra:
        raise BundleError(f"the bundle has Loihi parameters for unknown nodes {sorted(extra)}")
    return same


def _quant_equal(a: NeuronQuant, b: NeuronQuant) -> bool:
    pa, pb = a.params, b.params
    if (pa.du, pa.dv, pa.vth, a.spiking, a.direct) != (pb.du, pb.dv, pb.vth, b.spiking, b.direct):
        return False
    if not (torch.equal(torch.as_tensor(pa.bias_mant).long(), torch.as_tensor(pb.bias_mant).long())
            and torch.equal(torch.as_tensor(pa.bias_exp).long(), torch.as_tensor(pb.bias_exp).long())):
        return False
    for s, (w, e) in a.synapses.items():
        w2, e2 = b.synapses[s]
        if e != e2 or (w is None) != (w2 is None) or (w is not None and not torch.equal(w.long(), w2.long())):
            return False
    return bool(np.isclose(a.scale, b.scale, rtol=1e-12) and np.isclose(a.analog_factor, b.analog_factor, rtol=1e-12))


def stage_simulator(bundle: Bundle, stage: str, fixed: bool) -> tuple[Simulator, bool]:
    """The simulator of one bundle stage; in fixed mode with the bundle's integers (and whether they
    equal the simulator's own quantisation)."""
    graph = bundle.graphs.get(stage)
    if graph is None:
        raise BundleError(f"bundle {bundle.path} has no {stage} stage")
    if not fixed:
        return Simulator(graph, mode="float"), True
    sim = Simulator(graph, mode="fixed", quant=FixedOptions(num_steps=bundle.time_steps(stage)))
    return sim, apply_bundle_quant(sim, bundle.loihi[stage])


# ----------------------------------------------------------------------------- counters


def _cat_counters(parts: list[Counters], axis: int, ann_scale: int = 1) -> Counters:
    """Concatenate counters along time (``axis=0``, one graph run after another) or samples (``axis=1``)."""
    first = parts[0]
    steps = sum(p.steps for p in parts) if axis == 0 else first.steps
    batch = sum(p.batch for p in parts) if axis == 1 else first.batch
    out = Counters(steps, batch, ann_macs=first.ann_macs * ann_scale, ann_adds=first.ann_adds * ann_scale)
    for name, lc in first.layers.items():
        layers = [p.layers[name] for p in parts]
        out.layers[name] = LayerCounts(
            name, lc.nir_type, lc.kind, lc.neurons, lc.synapses,
            *(np.concatenate([getattr(x, k) for x in layers], axis=axis)
              for k in ("sops", "macs", "neuron_updates", "spikes")))
    return out


# ----------------------------------------------------------------------------- the loop


@dataclass
class Generation:
    """Result of :func:`generate`: images in [0, 1], tokens, per-stage counters (time = calls x T)."""

    images: torch.Tensor
    tokens: torch.Tensor
    seconds: float
    denoiser_calls: int
    snn_steps: int
    settings: dict[str, Any]
    counters: dict[str, Counters] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    quant_from_bundle: bool = False
    quant_matches_simulator: bool = True
    simulators: dict[str, Simulator] = field(default_factory=dict, repr=False)

    def info(self) -> dict[str, Any]:
        n = self.images.shape[0]
        out: dict[str, Any] = {"denoiser_calls": self.denoiser_calls, "snn_steps": self.snn_steps,
                               "seconds": self.seconds, "images_per_s": n / max(self.seconds, 1e-9),
                               **self.settings}
        if self.counters:
            out["per_image"] = {s: c.totals() for s, c in self.counters.items()}
        out["warnings"] = list(self.warnings)
        return out


def sampler_settings(bundle: Bundle, method: str | None = None, steps: int | None = None,
                     temperature: float | None = None) -> tuple[str, int | None, float]:
    """Method, steps and temperature: given values, else the bundle's (its steps belong to its method)."""
    ms = bundle.sampler
    m = method or ms.get("method") or "confidence"
    s = steps or (ms.get("steps") if m == ms.get("method") else None)
    t = temperature if temperature is not None else float(ms.get("temperature") or 1.0)
    return m, s, t


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The torch backend's generator for batch ``batch_index`` (same draws, same tokens)."""
    from spkdiff.train.distributed import keyed_generator

    return keyed_generator(seed, batch_index)


class BundlePipeline:
    """The SDID and generator simulators of a bundle plus the host steps between them."""

    def __init__(self, bundle: Bundle, fixed: bool = False, count: bool = True) -> None:
        self.bundle = bundle
        self.fixed = fixed
        self.count = count
        self.sims: dict[str, Simulator] = {}
        self.quant_matches = True
        for stage in GEN_STAGES:
            self.sims[stage], same = stage_simulator(bundle, stage, fixed)
            self.quant_matches = self.quant_matches and same
        ms = bundle.sampler
        self.num_codes, self.diffusion_steps, self.time_bins = ms["num_codes"], ms["diffusion_steps"], ms["time_bins"]
        self.grid = tuple(ms["grid"])
        self.codebook = torch.as_tensor(bundle.codebook)
        self.calls: dict[str, list[Counters]] = {s: [] for s in GEN_STAGES}
        self.warnings: list[str] = []

    def _run(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        sim = self.sims[stage]
        res = sim.run({next(iter(sim.inputs)): x}, steps=self.bundle.time_steps(stage), count=self.count)
        if res.counters is not None:
            self.calls[stage].append(res.counters)
        self.warnings.extend(w for w in res.warnings if w not in self.warnings)
        return res.outputs[next(iter(sim.outputs))][-1]

    def denoise(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """SDID on chip: one-hot token/time spikes for T steps -> logits = v_T / T (B, K, h, w)."""
        x = sdid_input_spikes(tokens, t, self.num_codes, self.diffusion_steps, self.time_bins)
        return self._run("sdid", x) / self.bundle.time_steps("sdid")

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedding z_q = codebook[tokens] -> generator -> depth-to-space, crop, tanh(v_T) + 0.5 in [0, 1]."""
        z_q = self.codebook[tokens].permute(0, 3, 1, 2).contiguous()
        v = self._run("generator", z_q)
        post = self.bundle.decoder_output
        f = int(post["depth_to_space"])
        if f > 1:
            v = torch.nn.functional.pixel_shuffle(v, f)
        h, w = post["crop"]
        return (torch.tanh(v[..., :h, :w]) + 0.5).clamp(0, 1)

    def take_counters(self) -> dict[str, Counters]:
        """Counters of the calls since the last take: one batch, time = all its calls."""
        out = {}
        for stage, parts in self.calls.items():
            if parts:
                out[stage] = _cat_counters(parts, axis=0, ann_scale=len(parts))
        self.calls = {s: [] for s in GEN_STAGES}
        return out


def generate(bundle: Bundle | str | Path, n: int, *, fixed: bool = False, steps: int | None = None,
             method: str | None = None, temperature: float | None = None, seed: int = 0, batch_size: int = 256,
             count: bool = True) -> Generation:
    """Sample ``n`` images on the simulator (see the module docstring)."""
    if n < 1 or batch_size < 1:
        raise SpkdiffError("n and batch_size must be positive")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    m, s, temp = sampler_settings(b, method, steps, temperature)
    pipe = BundlePipeline(b, fixed, count)
    sampler = MaskSampler(pipe.num_codes, pipe.diffusion_steps, s, m, temp)
    images, tokens, per_batch = [], [], []
    start = time.perf_counter()
    for i in range(-(-n // batch_size)):
        size = min(batch_size, n - i * batch_size)
        tok = sampler.sample(pipe.denoise, size, pipe.grid, batch_generator(seed, i))
        images.append(pipe.decode(tok))
        tokens.append(tok)
        per_batch.append(pipe.take_counters())
    seconds = time.perf_counter() - start
    counters = {st: _cat_counters([c[st] for c in per_batch], axis=1) for st in GEN_STAGES if count}
    settings = {"backend": "sim-fixed" if fixed else "sim", "method": m, "steps": sampler.steps, "temperature": temp,
                "seed": seed, "batch_size": batch_size, "n": n}
    return Generation(torch.cat(images), torch.cat(tokens), seconds, sampler.steps,
                      sampler.steps * b.time_steps("sdid") + b.time_steps("generator"), settings, counters,
                      pipe.warnings, fixed, pipe.quant_matches, pipe.sims)


# ----------------------------------------------------------------------------- CLI entry points


def _export_temp_bundle(run_dir: str | Path, tmp: str) -> Path:
    from spkdiff.export.command import export

    out = Path(tmp) / "bundle"
    export(run_dir, "lava", out)
    return out


def sample_backend(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``spkdiff sample --backend sim|sim-fixed|lava`` (``--bundle B``, or ``--run R`` exported on the fly)."""
    if args.backend == "lava":
        from spkdiff.neuromorphic.lava_generate import sample_lava

        return sample_lava(args)
    if args.backend not in ("sim", "sim-fixed"):
        raise SpkdiffError(f"unknown simulator backend {args.backend!r}")
    with tempfile.TemporaryDirectory(prefix="spkdiff-bundle-") as tmp:
        path = args.bundle if args.bundle else _export_temp_bundle(args.run, tmp)
        gen = generate(path, args.n, fixed=args.backend == "sim-fixed", steps=args.steps, method=args.method,
                       temperature=args.temperature, seed=args.seed, batch_size=args.batch_size)
    return gen.images, gen.tokens, gen.info()


def generate_from_run(run_dir: str | Path, bundle: str | Path | None, n: int, fixed: bool, steps: int | None,
                      method: str | None, temperature: float | None, seed: int, batch_size: int = 256
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``spkdiff eval --backend sim|sim-fixed``: images in [0, 1] and info (a temp bundle when none given)."""
    with tempfile.TemporaryDirectory(prefix="spkdiff-bundle-") as tmp:
        path = bundle if bundle else _export_temp_bundle(run_dir, tmp)
        gen = generate(path, n, fixed=fixed, steps=steps, method=method, temperature=temperature, seed=seed,
                       batch_size=batch_size)
    return gen.images, gen.info()
