"""``--target onnx``: each stage unrolled over T_s, plus the host steps, as ONNX graphs (dynamo exporter).

Files: ``encoder.onnx``, ``generator.onnx``, ``sdid.onnx`` (stages, batch dimension dynamic),
``codebook_lookup.onnx`` and ``sampler_step.onnx`` (host steps; see :mod:`spkdiff.export.onnx_models`).
Every file passes ``onnx.checker`` (full check) and is run once with onnxruntime against torch on a
random batch; the result is recorded in the manifest under ``check``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.host import MaskSampler, coarse_order

from .manifest import build_manifest, write_manifest
from .nir_graphs import build_stage_graphs, latent_size, load_models
from .onnx_models import (
    CodebookLookup,
    EncoderUnrolled,
    GeneratorUnrolled,
    SamplerStepCoarse,
    SamplerStepConfidence,
    SamplerStepPaper,
    SamplerStepRemask,
    SDIDUnrolled,
)

OPSET = 18


@dataclass
class OnnxGraph:
    """A module to export with example inputs; ``batch_axes[i]``: the dynamic batch axis of input i."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    batch_axes: list[int]
    description: str


def onnx_graphs(vq: nn.Module, sdid: nn.Module | None, method: str = "confidence", temperature: float = 1.0,
                batch: int = 3, seed: int = 0, remask: float = 0.0) -> list[OnnxGraph]:
    """The graphs to export, each with a random example batch (also used for the torch/ORT check)."""
    g = torch.Generator().manual_seed(seed)
    cfg = vq.cfg
    h, w = latent_size(vq)
    steps = cfg.time_steps
    image = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g) - 0.5
    z_q = vq.codebook.detach()[torch.randint(0, cfg.codebook_size, (batch, h, w), generator=g)].permute(0, 3, 1, 2)
    enc_spikes = (torch.rand(steps, batch, cfg.latent_channels, h, w, generator=g) < 0.3).float()
    out = [
        OnnxGraph("encoder", EncoderUnrolled(vq), {"image": image}, ["spikes"], [0],
                  "image (B, C, H, W) in [-0.5, 0.5] -> encoder spikes (T, B, C_lat, h, w)"),
        OnnxGraph("codebook_lookup", CodebookLookup(vq), {"spikes": enc_spikes}, ["tokens", "z_q"], [1],
                  "encoder spikes (T, B, C_lat, h, w) -> tokens (B, h, w) int64, z_q (B, C_lat, h, w)"),
        OnnxGraph("generator", GeneratorUnrolled(vq), {"z_q": z_q.contiguous()}, ["readout", "image"], [0],
                  "z_q (B, C_lat, h, w) -> read-out v_T (B, C, H, W) and image tanh(v_T)"),
    ]
    if sdid is not None:
        sc = sdid.cfg
        k, grid = sc.num_codes, sc.grid
        tokens = torch.randint(0, k + 1, (batch, grid, grid), generator=g)
        t = torch.randint(1, sc.diffusion_steps + 1, (batch,), generator=g)
        logits = torch.randn(batch, k, grid, grid, generator=g) * 3
        masked = tokens == k
        u = torch.rand(batch, grid, grid, generator=g)
        out.append(OnnxGraph("sdid", SDIDUnrolled(sdid), {"spikes": sdid.input_spikes(tokens, t)}, ["logits"], [0],
                             "SDID input spikes (B, p^2 (K+1) + bins, h/p, w/p) -> read-out (B, p^2 K, h/p, w/p) "
                             "(p = mask_sampler.patch; the logits themselves for p = 1)"))
        tokens = torch.where(masked, tokens, tokens.clamp(max=k - 1))
        if method == "paper" and remask:
            step_t = torch.randint(1, sc.diffusion_steps + 1, (batch,), generator=g).tolist()
            host = MaskSampler(k, sc.diffusion_steps, sc.diffusion_steps, "paper", temperature, remask=remask)
            p_unmask, sigma = (torch.tensor(v, dtype=torch.float32)
                               for v in zip(*(host.remask_probabilities(t) for t in step_t)))
            out.append(OnnxGraph(
                "sampler_step", SamplerStepRemask(temperature),
                {"logits": logits, "tokens": tokens, "masked": masked, "u": u,
                 "u_unmask": torch.rand(batch, grid, grid, generator=g), "p_unmask": p_unmask, "sigma": sigma},
                ["tokens_out", "masked_out"], [0] * 7,
                "one paper-schedule step with ReMDM-cap remasking: unmask where u_unmask < p_unmask, mask again "
                "the tokens unmasked before where u_unmask < sigma (p_unmask, sigma: the host's "
                "MaskSampler.remask_probabilities(step_t)), draw by inverse CDF of u"))
        elif method == "paper":
            step_t = torch.randint(1, sc.diffusion_steps + 1, (batch,), generator=g)
            out.append(OnnxGraph(
                "sampler_step", SamplerStepPaper(temperature),
                {"logits": logits, "tokens": tokens, "masked": masked, "u": u,
                 "u_unmask": torch.rand(batch, grid, grid, generator=g), "step_t": step_t},
                ["tokens_out", "masked_out"], [0] * 6,
                "one paper-schedule step: unmask w.p. 1/step_t (u_unmask), draw by inverse CDF of u"))
        elif method == "coarse":
            out.append(OnnxGraph(
                "sampler_step", SamplerStepCoarse(temperature),
                {"logits": logits, "tokens": tokens, "masked": masked, "u": u,
                 "rank": coarse_order(batch, (grid, grid), g),
                 "n_unmasked": torch.randint(0, grid * grid + 1, (batch,), generator=g)},
                ["tokens_out", "masked_out"], [0] * 6,
                "one coarse-order step: unmask where rank < n_unmasked, draw by inverse CDF of u"))
        else:
            n_keep = torch.randint(0, grid * grid, (batch,), generator=g)
            out.append(OnnxGraph(
                "sampler_step", SamplerStepConfidence(temperature),
                {"logits": logits, "tokens": tokens, "masked": masked, "u": u, "n_keep_masked": n_keep},
                ["tokens_out", "masked_out"], [0] * 5,
                "one confidence step: draw by inverse CDF of u, keep n_keep_masked tokens masked"))
    return out


def export_graph(graph: OnnxGraph, path: Path) -> None:
    """``torch.onnx.export(dynamo=True)`` with a dynamic batch axis, then ``onnx.checker`` (full check)."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = tuple({axis: batch} for axis in graph.batch_axes)
    module = graph.module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, tuple(graph.inputs.values()), None, dynamo=True,
                                        input_names=list(graph.inputs), output_names=graph.outputs,
                                        dynamic_shapes=dynamic, opset_version=OPSET, verbose=False)
        except Exception as err:  # the exporter raises many types
            raise SpkdiffError(f"ONNX export of {graph.name} failed: {str(err).splitlines()[0]}") from err
    program.save(str(path))
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as err:
        raise SpkdiffError(f"{path.name} fails onnx.checker: {str(err).splitlines()[0]}") from err


def run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Run an exported graph with onnxruntime (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})


def compare_outputs(graph: OnnxGraph, got: list[np.ndarray], inputs: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, Any]:
    """Torch (eager) vs ONNX Runtime: max |err| for floats, count of differing entries for spikes/ints."""
    with torch.no_grad():
        ref = graph.module(*(inputs or graph.inputs).values())
    ref = ref if isinstance(ref, tuple) else (ref,)
    result: dict[str, Any] = {}
    for name, r, o in zip(graph.outputs, ref, got):
        r = r.numpy()
        if r.shape != o.shape:
            raise SpkdiffError(f"{graph.name}.{name}: ONNX shape {o.shape} != torch {r.shape}")
        exact = r.dtype != np.float32 or name == "spikes"
        result[name] = ({"mismatches": int((r != o).sum()), "total": int(r.size)} if exact
                        else {"max_abs_err": float(np.abs(r - o).max()) if r.size else 0.0})
    return result


def write_onnx(run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write the stage and host ONNX graphs and ``manifest.json`` into ``out_dir``."""
    vq, sdid = load_models(run_dir)
    stages = build_stage_graphs(vq, sdid)
    manifest = build_manifest(run_dir, vq, sdid, stages, "onnx")
    sampler = manifest["host"].get("mask_sampler", {})
    graphs = onnx_graphs(vq, sdid, sampler.get("method", "confidence"), float(sampler.get("temperature", 1.0)),
                         remask=float(sampler.get("remask") or 0.0))
    for graph in graphs:
        path = Path(out_dir) / f"{graph.name}.onnx"
        export_graph(graph, path)
        entry = {"file": path.name, "opset": OPSET, "description": graph.description,
                 "inputs": {k: {"shape": ["B" if i == ax else n for i, n in enumerate(v.shape)],
                                "dtype": str(v.dtype).removeprefix("torch.")}
                            for (k, v), ax in zip(graph.inputs.items(), graph.batch_axes)},
                 "outputs": graph.outputs,
                 "check": compare_outputs(graph, run_onnx(path, graph.inputs))}
        if graph.name in manifest["stages"]:
            stage = manifest["stages"][graph.name]
            for key in ("output", "readout", "layers", "analog_input_layers"):  # NIR-specific (phase layout)
                stage.pop(key, None)
            stage.update(entry, unrolled_over_time=True)
        else:
            key = "mask_sampler" if graph.name == "sampler_step" else graph.name
            manifest["host"][key].update(entry)
    manifest["host"]["decoder_output"]["onnx"] = "generator.onnx outputs both v_T (readout) and tanh(v_T) (image)"
    write_manifest(manifest, out_dir)
    return manifest
