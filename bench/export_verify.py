"""Verify a run's NIR export on many real test images: spike mismatches per LIF layer, read-out error,
and the largest difference between the exported conv currents and the torch model's currents.

    python bench/export_verify.py --run runs/mnist-fast --data-root ../shared/data --n 512
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spkdiff.data import load_tensor
from spkdiff.export.nir_graphs import build_stage_graphs, load_models
from spkdiff.export.verify import compare_stage, encoder_trace, generator_trace, sdid_trace, simulator_executor
from spkdiff.generation import depth_to_space
from spkdiff.train.sdid import training_mask
from spkdiff.train.snn import merge_time


def torch_currents(stage: str, model, x: torch.Tensor, trace: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Torch synapse outputs (conv + eval BN) per NIR conv node, time-major where the input varies."""
    steps = model.cfg.time_steps
    with torch.no_grad():
        if stage == "encoder":
            ins = [x] + [trace[f"enc{i}_lif"] for i in range(len(model.encoder) - 1)]
            layers = [(f"enc{i}_conv", layer.synapse) for i, layer in enumerate(model.encoder)]
        elif stage == "generator":
            ins = [x, trace["asg_lif"]] + [trace[f"dec{i}_lif"] for i in range(len(model.decoder))]
            layers = ([("asg_conv", model.asg.synapse)] + [(f"dec{i}_conv", layer.synapse)
                                                           for i, layer in enumerate(model.decoder)]
                      + [("readout_conv", model.readout)])
        else:
            ins, layers = [x], [("stem_conv", model.stem.synapse)]
            prev = "stem_lif"
            for i, block in enumerate(model.blocks):
                ins += [trace[prev], trace[f"block{i}_a_lif"]]
                layers += [(f"block{i}_a_conv", block.first.synapse), (f"block{i}_b_conv", block.second)]
                prev = f"block{i}_b_lif"
            ins.append(trace[prev])
            layers.append(("readout_conv", model.readout))
        out = {}
        for (name, layer), inp in zip(layers, ins):
            out[name] = layer(inp) if inp.dim() == 4 else layer(merge_time(inp)).unflatten(0, (steps, -1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    vq, sdid = load_models(args.run)
    stages = build_stage_graphs(vq, sdid)
    images, _ = load_tensor(args.dataset, args.data_root, "test", limit=args.n)
    report: dict[str, dict] = {s: {"mismatches": {}, "spikes": 0, "readout_max_abs_err": 0.0, "current_max_abs_err": {}}
                               for s in stages}
    t0 = time.time()
    for i in range(0, args.n, args.batch):
        x = images[i:i + args.batch] - 0.5
        with torch.no_grad():
            tokens, z_q = vq.quantize(vq.features(vq.encode_spikes(x)))
        t, _, h_t = training_mask(tokens, sdid.cfg.num_codes, sdid.cfg.diffusion_steps,
                                  torch.Generator().manual_seed(i))
        inputs = {"encoder": (vq, x, encoder_trace), "generator": (vq, z_q, generator_trace),
                  "sdid": (sdid, sdid.input_spikes(h_t, t), sdid_trace)}
        for name, sg in stages.items():
            model, inp, tracer = inputs[name]
            trace = tracer(model, inp)
            nir_out = simulator_executor(sg.graph, inp, sg.steps)
            check = compare_stage(sg, nir_out, trace)
            rep = report[name]
            for c in check.layers:
                rep["mismatches"][c.node] = rep["mismatches"].get(c.node, 0) + c.mismatches
                rep["spikes"] += c.total if c.max_abs_err == 0 else 0
            rep["readout_max_abs_err"] = max(rep["readout_max_abs_err"], check.readout_max_abs_err)
            infos = {layer.name: layer for layer in sg.layers}
            for node, ref in torch_currents(name, model, inp, trace).items():
                got = nir_out[node]
                got = got[0] if ref.dim() == 4 else got  # constant-input layers: every step is the same
                c, h, w = infos[node].fine_shape
                got = depth_to_space(got, infos[node].phase_factor)[..., :c, :h, :w]
                err = float((got - ref).abs().max())
                rep["current_max_abs_err"][node] = max(rep["current_max_abs_err"].get(node, 0.0), err)
    report["_meta"] = {"run": args.run, "images": args.n, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
