"""``--target lava``: a self-contained deployment bundle (read it with :func:`spkdiff.neuromorphic.bundle.load_bundle`).

The bundle holds the NIR files of the nir target, the Loihi integers of every neuron node per stage
(``{stage}.loihi.safetensors``, from :func:`spkdiff.neuromorphic.quantize.quantize_graph`: the numbers the
simulator's fixed mode and the Lava graph read), the codebook and host constants, the sampler settings and
``manifest.json`` (``target = "lava"``, ``bundle_version``, ``versions`` incl. lava-nc, ``lava.netx``: why
lava-dl's netx cannot load a stage).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import nir
import numpy as np
from safetensors.numpy import save

from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic.bundle import BUNDLE_VERSION
from spkdiff.neuromorphic.loihi import QuantizationRangeError
from spkdiff.neuromorphic.quantize import NeuronQuant, QuantOptions, quantize_graph

from .manifest import build_manifest, write_manifest
from .nir_graphs import StageGraph, build_stage_graphs, load_models
from .nir_target import write_graph

NETX_REASONS = {
    "encoder": "netx has no analog (graded) input layer: the encoder is driven by image currents every step",
    "generator": "netx has no transposed convolution (the decoder upsamples; lowered to phase-layout convs with a "
                 "host depth-to-space) and no leaky-integrator read-out state to return",
    "sdid": "netx has no residual skip sums (a second input edge into a LIF population) and no integrator "
            "read-out (logits = v_T / T)",
}


def quantize_stage(graph: nir.NIRGraph, time_steps: int, stage: str = "graph") -> dict[str, NeuronQuant]:
    """``neuron -> NeuronQuant`` of one stage (headroom horizon = the stage's time steps); one-line error."""
    try:
        return quantize_graph(graph, QuantOptions(num_steps=time_steps))
    except QuantizationRangeError as err:
        raise SpkdiffError(f"--target lava: stage {stage} does not fit Loihi's fixed-point ranges: {err}") from None


def _stage_quant(sg: StageGraph, quants: dict[str, NeuronQuant]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """JSON description and tensors of one stage's integers."""
    analog = {layer.name for layer in sg.layers if layer.analog_input}
    layers: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, nq in quants.items():
        bm, be = f"{name}.bias_mant", f"{name}.bias_exp"
        tensors[bm] = np.ascontiguousarray(nq.bias_mant, dtype=np.int64)
        tensors[be] = np.ascontiguousarray(nq.bias_exp, dtype=np.int64)
        syns: dict[str, Any] = {}
        for s, sq in nq.synapses.items():
            key = f"{s}.weight_int"
            tensors[key] = np.ascontiguousarray(sq.weight_int, dtype=np.int64)
            syns[s] = {"weight": key, "weight_exp": int(sq.weight_exp), "analog_input": s in analog,
                       "sign_mode": sq.sign_mode}
        layers[name] = {
            "method": nq.method, "du": int(nq.du), "dv": int(nq.dv), "vth": int(nq.vth), "scale": float(nq.scale),
            "spiking": bool(nq.spiking), "analog_factor": float(nq.analog_factor), "bias_mant": bm, "bias_exp": be,
            "synapses": syns,
            "direct": {d: {"weight": int(w), "weight_exp": int(e)} for d, (w, e) in nq.direct.items()},
        }
    return {"layers": layers, "options": {"num_steps": sg.steps}}, tensors


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("lava-nc", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_lava(run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write the bundle into the empty folder ``out_dir``; returns the manifest."""
    vq, sdid = load_models(run_dir)
    if sdid is None:
        raise SpkdiffError(f"{run_dir} holds no trained SDID (sdid.safetensors): a lava bundle needs both stages")
    stages = build_stage_graphs(vq, sdid)
    manifest = build_manifest(run_dir, vq, sdid, stages, "lava")
    manifest["bundle_version"] = BUNDLE_VERSION
    manifest["versions"].update(_versions())
    out_dir = Path(out_dir)
    options: dict[str, Any] = {}
    for name, sg in stages.items():
        path = out_dir / f"{name}.nir"
        write_graph(path, sg.graph)
        meta, tensors = _stage_quant(sg, quantize_stage(sg.graph, sg.steps, name))
        qfile = f"{name}.loihi.safetensors"
        (out_dir / qfile).write_bytes(save(tensors))  # a full disk: one OSError (save_file: its own type)
        (out_dir / qfile).chmod(path.stat().st_mode & 0o777)  # as readable as the NIR files
        options[name] = meta.pop("options")
        entry = manifest["stages"][name]
        entry["file"] = path.name
        entry["loihi"] = {"file": qfile, **meta}
    manifest["lava"] = {
        "quantization": {
            "made_by": "spkdiff.neuromorphic.quantize.quantize_graph (quantize_layer for one-input layers, "
                       "one shared vth for residual sums)",
            "options": {"per_stage": options},
            "units": "V = v_int / scale; graded input current X -> a = round(X * analog_factor); spike input -> "
                     "a = shift(W_int s, weight_exp); LIF: du, dv (4096 / tau), bias = bias_mant << bias_exp, "
                     "spike if v > vth << 6, reset to 0",
        },
        "netx": {"loadable": False, "reason": "lava-dl is not installable here (lava-dl pins Python < 3.11)",
                 "per_stage": dict(NETX_REASONS)},
    }
    write_manifest(manifest, out_dir)
    return manifest
