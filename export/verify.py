"""Check exported NIR stages against the torch models, layer by layer.

Every LIF node's spike train (mapped back from phase layout with depth-to-space) must equal the
torch layer's spikes exactly; read-outs (the LI/I state at the last step, after the host-side
mapping) must match within ``atol``.  The executor is :class:`spkdiff.simulator.Simulator` in
float mode (any callable ``run(graph, inputs, steps) -> {node: (T, B, ...)}`` can be passed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import nir
import torch
from torch import nn

from spkdiff.generation import depth_to_space
from spkdiff.host import leaky_sum
from spkdiff.train.snn import merge_time, split_time

from .nir_graphs import StageGraph

Executor = Callable[[nir.NIRGraph, torch.Tensor, int], dict[str, torch.Tensor]]


@dataclass
class LayerCheck:
    node: str
    source: str
    mismatches: int  # differing spikes (LIF) or 0
    total: int
    max_abs_err: float = 0.0  # read-outs


@dataclass
class StageCheck:
    stage: str
    layers: list[LayerCheck] = field(default_factory=list)
    readout_max_abs_err: float = 0.0
    atol: float = 1e-5

    @property
    def ok(self) -> bool:
        return all(c.mismatches == 0 for c in self.layers) and self.readout_max_abs_err <= self.atol

    def summary(self) -> str:
        bad = [f"{c.node}: {c.mismatches}/{c.total}" for c in self.layers if c.mismatches]
        return (f"{self.stage}: {'ok' if self.ok else 'MISMATCH'}; spikes differ in {bad or 'no layer'}; "
                f"read-out max |err| {self.readout_max_abs_err:.2e}")


def simulator_executor(graph: nir.NIRGraph, x: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """Run ``graph`` on input ``x`` (B, ...) held constant for ``steps`` steps; every node's output."""
    from spkdiff.simulator import Simulator

    sim = Simulator(graph, mode="float")
    result = sim.run(x, steps=steps, record=True, count=False)
    return {name: rec["out"] for name, rec in result.recordings.items()}


# ----------------------------------------------------------------------------- torch traces


def encoder_trace(vq: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Torch spikes of every encoder layer, keyed by NIR node name; ``x`` is the image in [-0.5, 0.5]."""
    steps = vq.steps
    out = {}
    s = x
    for i, layer in enumerate(vq.encoder):
        s = layer(s, steps, constant_input=(i == 0))
        out[f"enc{i}_lif"] = s
    return out


@torch.no_grad()
def generator_trace(vq: nn.Module, z_q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Torch spikes of the ASG and decoder layers, and the pre-tanh read-out ``readout_li`` (B, C, H, W)."""
    steps = vq.steps
    s = vq.asg(z_q, steps, constant_input=True)
    out = {"asg_lif": s}
    for i, layer in enumerate(vq.decoder):
        s = layer(s, steps)
        out[f"dec{i}_lif"] = s
    o = split_time(vq.readout(merge_time(s)), steps)
    out["readout_li"] = leaky_sum(o, vq.cfg.readout_decay)
    return out


@torch.no_grad()
def sdid_trace(sdid: nn.Module, x_in: torch.Tensor) -> dict[str, torch.Tensor]:
    """Torch spikes of the stem and every residual block, and the logits ``readout_i`` (B, K, H, W)."""
    steps = sdid.cfg.time_steps
    s = sdid.stem(x_in, steps, constant_input=True)
    out = {"stem_lif": s}
    for i, block in enumerate(sdid.blocks):
        h = block.first(s, steps)
        out[f"block{i}_a_lif"] = h
        s = block.neuron(split_time(block.second(merge_time(h)), steps) + s)
        out[f"block{i}_b_lif"] = s
    out["readout_i"] = sdid.forward_spikes(x_in)
    return out


# ----------------------------------------------------------------------------- comparison


def stage_readout_value(stage: StageGraph, trace: torch.Tensor) -> torch.Tensor:
    """Host-side mapping of the read-out node's trace (T, B, ...) to the torch value (B, C, H, W)."""
    v_t = trace[-1]
    ro = stage.readout
    v_t = depth_to_space(v_t, int(ro.get("depth_to_space", 1)))
    c, h, w = ro["fine_shape"]
    v_t = v_t[:, :c, :h, :w]
    if ro["kind"] == "I":
        v_t = v_t / stage.steps
    return v_t


def compare_stage(stage: StageGraph, nir_out: dict[str, torch.Tensor], torch_out: dict[str, torch.Tensor],
                  atol: float = 1e-5) -> StageCheck:
    """Compare the executor's node outputs with the torch trace of the same stage."""
    check = StageCheck(stage.stage if hasattr(stage, "stage") else stage.name, atol=atol)
    for info in stage.layers:
        if info.name not in torch_out:
            continue
        ref = torch_out[info.name]
        if info.kind == "LIF":
            got = depth_to_space(nir_out[info.name], info.phase_factor)
            c, h, w = info.fine_shape
            got = got[..., :c, :h, :w]
            if got.shape != ref.shape:
                raise AssertionError(f"{info.name}: shape {tuple(got.shape)} != torch {tuple(ref.shape)}")
            check.layers.append(LayerCheck(info.name, info.source, int((got != ref).sum()), ref.numel()))
        else:
            got = stage_readout_value(stage, nir_out[info.name])
            err = float((got - ref).abs().max())
            check.readout_max_abs_err = max(check.readout_max_abs_err, err)
            check.layers.append(LayerCheck(info.name, info.source, 0, ref.numel(), err))
    return check


def verify_stage(stage: StageGraph, model: nn.Module, x: torch.Tensor, executor: Executor = simulator_executor,
                 atol: float = 1e-5) -> StageCheck:
    """Run one stage's NIR graph and its torch model on ``x`` (the stage input, (B, C, H, W))."""
    traces = {"encoder": encoder_trace, "generator": generator_trace, "sdid": sdid_trace}
    torch_out = traces[stage.name](model, x)
    nir_out = executor(stage.graph, x, stage.steps)
    return compare_stage(stage, nir_out, torch_out, atol)
