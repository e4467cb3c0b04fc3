"""NIR graphs of the three on-chip SNN stages (see :mod:`spkdiff.export.lowering` for the exact lowerings).

Time convention (stated once): ``dt = 1`` = one SNN step, and NIR time constants are in steps.
NIR ``LIF``: ``tau dv/dt = (v_leak - v) + r I``; one forward-Euler step with ``dt = 1`` is ::

    v <- v + (1/tau) (v_leak - v + r I)

which, with ``tau = 2, r = 1, v_leak = v_reset = 0, v_threshold = 1``, is SpikingJelly's
``LIFNode(tau=2, decay_input=True, v_reset=0)``: ``H = V + (X - (V - V_reset)) / tau``,
``S = H >= V_th``, hard reset to ``V_reset``.  Read-outs: the decoder's leaky sum
``v_t = 0.8 v_{t-1} + o_t`` is NIR ``LI(tau=5, r=5, v_leak=0)`` (``v + (5 o - v)/5``), the SDID's
integrator ``v_t = v_{t-1} + o_t`` is NIR ``I(r=1)``.  Conv biases are constant input currents
(NIR ``Conv2d.bias``, added every step).  A residual skip is a second edge into the same LIF
node (NIR sums a node's inputs).  Inputs that are constant over time (image currents, codebook
embeddings, token/time spikes) are given at every step.

Stages::

    encoder    image currents (C, H, W)             -> enc2_lif spikes (C_lat, h, w)
    generator  z^Q embedding currents (C_lat, h, w) -> ASG -> decoder -> readout_li (phase layout)
    sdid       token/time spikes (K+1+bins, h, w)   -> stem -> residual blocks -> readout_i (K, h, w)

with (h, w) = (H/4, W/4) the token grid from the run's config (MNIST 1x28x28 -> 7x7, CIFAR-10 3x32x32 -> 8x8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.train.snn import LIF, ConvBN, LIFParams, SpikingConv

from .lowering import LoweringError, PhaseConv, conv_spec, lower_conv

DT = 1.0
GRAPH_FORMAT = "spkdiff-nir"
GRAPH_VERSION = "1"


@dataclass
class Port:
    """A node's output: fine shape ``(C, H, W)`` held in phase layout with factor ``f``."""

    node: str
    channels: int
    size: tuple[int, int]
    f: int = 1
    spikes: bool = False

    @property
    def coarse(self) -> tuple[int, int, int]:
        return (self.channels * self.f * self.f, -(-self.size[0] // self.f), -(-self.size[1] // self.f))


@dataclass
class LayerInfo:
    """Manifest entry of one node: its torch source, population shape and phase layout."""

    name: str
    kind: str
    source: str
    shape: tuple[int, ...]  # NIR (coarse) shape
    fine_shape: tuple[int, ...]  # torch shape (C, H, W)
    phase_factor: int = 1
    analog_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "source": self.source, "shape": list(self.shape),
                "fine_shape": list(self.fine_shape), "phase_factor": self.phase_factor,
                "analog_input": self.analog_input}


@dataclass
class StageGraph:
    """A stage's NIR graph plus what the host needs to feed it and read it."""

    name: str
    graph: nir.NIRGraph
    layers: list[LayerInfo]
    input: Port
    output: Port
    steps: int
    readout: dict[str, Any] = field(default_factory=dict)


class _Builder:
    """Appends NIR nodes and edges; every layer is lowered exactly or raises :class:`LoweringError`."""

    def __init__(self, stage: str):
        self.stage = stage
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.layers: list[LayerInfo] = []

    def input(self, name: str, channels: int, size: tuple[int, int], spikes: bool, source: str) -> Port:
        port = Port(name, channels, size, 1, spikes)
        self.nodes[name] = nir.Input(input_type={"input": np.array(port.coarse)})
        self.layers.append(LayerInfo(name, "Input", source, port.coarse, (channels, *size)))
        return port

    def conv(self, name: str, module: nn.Module, bn: nn.Module | None, src: Port, source: str,
             final: bool = False) -> tuple[Port, PhaseConv]:
        if not isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            raise LoweringError(f"{self.stage}/{source}: {type(module).__name__} has no NIR lowering "
                                f"(Conv2d and ConvTranspose2d only)")
        if bn is not None and not isinstance(bn, nn.BatchNorm2d | nn.Identity):
            raise LoweringError(f"{self.stage}/{source}: {type(bn).__name__} after a conv cannot be folded")
        norm = bn if isinstance(bn, nn.BatchNorm2d) else None
        if norm is not None and norm.training:
            raise LoweringError(f"{self.stage}/{source}: BatchNorm2d is in training mode; call model.eval()")
        spec = conv_spec(module, norm, f"{self.stage}/{source}")
        if spec.in_channels != src.channels:
            raise LoweringError(f"{self.stage}/{source}: expects {spec.in_channels} input channels, "
                                f"gets {src.channels}")
        pc = lower_conv(spec, src.f, src.size, f"{self.stage}/{source}")
        if not pc.exact_grid and not final:
            raise LoweringError(
                f"{self.stage}/{source}: output size {pc.out_size} is not a whole number of {pc.f_out}x{pc.f_out} "
                f"phase blocks (needs kernel + output_padding - 2*padding = stride); only the final read-out "
                f"may be cropped on the host")
        self.nodes[name] = nir.Conv2d(
            input_shape=tuple(int(n) for n in pc.in_coarse), weight=pc.weight.astype(np.float32),
            stride=tuple(pc.stride), padding=tuple(pc.padding), dilation=tuple(pc.dilation), groups=pc.groups,
            bias=pc.bias.astype(np.float32), metadata={"source": source, "phase_factor_in": pc.f_in,
                                                       "phase_factor_out": pc.f_out})
        self.edges.append((src.node, name))
        out = Port(name, spec.out_channels, pc.out_size, pc.f_out, False)
        self.layers.append(LayerInfo(name, "Conv2d", source, (out.coarse[0], *pc.out_coarse),
                                     (spec.out_channels, *pc.out_size), pc.f_out, analog_input=not src.spikes))
        return out, pc

    def _neuron(self, name: str, node: nir.NIRNode, srcs: list[Port], source: str, spikes: bool) -> Port:
        shapes = {p.coarse for p in srcs}
        if len(shapes) != 1 or len({p.f for p in srcs}) != 1:
            raise LoweringError(f"{self.stage}/{source}: inputs of different shapes or phase layouts cannot be summed")
        self.nodes[name] = node
        self.edges.extend((p.node, name) for p in srcs)
        out = Port(name, srcs[0].channels, srcs[0].size, srcs[0].f, spikes)
        self.layers.append(LayerInfo(name, type(node).__name__, source, out.coarse, (out.channels, *out.size),
                                     out.f))
        return out

    def lif(self, name: str, neuron: nn.Module, srcs: list[Port], source: str) -> Port:
        params = lif_params(neuron, f"{self.stage}/{source}")
        shape = srcs[0].coarse
        node = nir.LIF(**{k: np.full(shape, v, dtype=np.float32) for k, v in params.items()},
                       metadata={"source": source})
        return self._neuron(name, node, srcs, source, True)

    def li(self, name: str, decay: float, src: Port, source: str) -> Port:
        tau = li_tau(decay)
        shape = src.coarse
        node = nir.LI(tau=np.full(shape, tau, dtype=np.float32), r=np.full(shape, tau, dtype=np.float32),
                      v_leak=np.zeros(shape, dtype=np.float32), metadata={"source": source})
        return self._neuron(name, node, [src], source, False)

    def integrator(self, name: str, src: Port, source: str) -> Port:
        node = nir.I(r=np.ones(src.coarse, dtype=np.float32), metadata={"source": source})
        return self._neuron(name, node, [src], source, False)

    def output(self, src: Port) -> None:
        self.nodes["output"] = nir.Output(output_type={"output": np.array(src.coarse)})
        self.edges.append((src.node, "output"))

    def graph(self, steps: int) -> nir.NIRGraph:
        meta = {"format": GRAPH_FORMAT, "version": GRAPH_VERSION, "stage": self.stage, "dt": DT,
                "time_steps": steps}
        try:
            return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=meta)
        except (ValueError, AssertionError) as err:
            raise SpkdiffError(f"{self.stage}: the NIR graph does not type-check: {err}") from err


def lif_params(neuron: nn.Module, name: str) -> dict[str, float]:
    """NIR LIF parameters of a SpikingJelly-style LIF (decay_input=True, hard reset) at dt = 1."""
    if not isinstance(neuron, LIF):
        raise LoweringError(f"{name}: {type(neuron).__name__} is not a LIF neuron this exporter knows")
    p: LIFParams = neuron.params
    if not p.tau > 1:
        raise LoweringError(f"{name}: LIF tau={p.tau} must exceed one step (dt = 1)")
    # SpikingJelly: H = V + (X - (V - V_reset)) / tau  ==  NIR Euler step with r = 1 and v_leak = v_reset.
    return {"tau": p.tau, "r": 1.0, "v_leak": p.v_reset, "v_threshold": p.v_threshold, "v_reset": p.v_reset}


def li_tau(decay: float) -> float:
    """NIR LI with ``tau = r = 1/(1 - decay)``: ``v + (r o - v)/tau = decay v + o`` at dt = 1."""
    if not 0 <= decay < 1:
        raise LoweringError(f"read-out decay {decay} has no LI equivalent (needs 0 <= decay < 1)")
    return 1.0 / (1.0 - decay)


def _spiking_conv(b: _Builder, prefix: str, layer: SpikingConv, src: Port, source: str) -> Port:
    conv, bn = _conv_bn(layer.synapse, f"{b.stage}/{source}.synapse")
    port, _ = b.conv(f"{prefix}_conv", conv, bn, src, f"{source}.synapse")
    return b.lif(f"{prefix}_lif", layer.neuron, [port], f"{source}.neuron")


def _conv_bn(synapse: nn.Module, name: str) -> tuple[nn.Module, nn.Module | None]:
    if isinstance(synapse, ConvBN) or (isinstance(synapse, nn.Sequential) and len(synapse) == 2):
        return synapse[0], synapse[1]
    if isinstance(synapse, nn.Conv2d | nn.ConvTranspose2d):
        return synapse, None
    raise LoweringError(f"{name}: {type(synapse).__name__} is not conv (+ BatchNorm)")


def encoder_graph(vq: nn.Module) -> StageGraph:
    """VQ-SVAE encoder: analog image currents (direct encoding) -> last layer's spikes z^E_{1:Ts}."""
    cfg = vq.cfg
    b = _Builder("encoder")
    port = b.input("input", cfg.in_channels, (cfg.image_size, cfg.image_size), False, "image (x - 0.5)")
    src_in = port
    for i, layer in enumerate(vq.encoder):
        port = _spiking_conv(b, f"enc{i}", layer, port, f"encoder.{i}")
    b.output(port)
    return StageGraph("encoder", b.graph(cfg.time_steps), b.layers, src_in, port, cfg.time_steps,
                      {"node": port.node, "kind": "spikes", "take": "all steps"})


def generator_graph(vq: nn.Module) -> StageGraph:
    """ASG + decoder + read-out: codebook-embedding currents z^Q -> LI read-out (phase layout)."""
    cfg = vq.cfg
    b = _Builder("generator")
    grid = latent_size(vq)
    src_in = b.input("input", cfg.latent_channels, grid, False, "z_q = codebook[tokens] (C, H, W)")
    port = _spiking_conv(b, "asg", vq.asg, src_in, "asg")
    for i, layer in enumerate(vq.decoder):
        port = _spiking_conv(b, f"dec{i}", layer, port, f"decoder.{i}")
    conv_port, pc = b.conv("readout_conv", vq.readout, None, port, "readout", final=True)
    out = b.li("readout_li", cfg.readout_decay, conv_port, "readout (leaky sum)")
    b.output(out)
    readout = {"node": "readout_li", "kind": "LI", "take": "state v at the last step (v_T)",
               "equation": f"v_t = {cfg.readout_decay} v_(t-1) + o_t", "depth_to_space": out.f,
               "crop": [int(n) for n in pc.out_size], "fine_shape": [out.channels, *pc.out_size],
               "host_post": "x_hat = tanh(v_T)"}
    return StageGraph("generator", b.graph(cfg.time_steps), b.layers, src_in, out, cfg.time_steps, readout)


def sdid_graph(sdid: nn.Module) -> StageGraph:
    """SDID: one-hot token/time spikes -> stem -> residual blocks -> integrator read-out."""
    cfg = sdid.cfg
    b = _Builder("sdid")
    src_in = b.input("input", cfg.in_channels, (cfg.chip_grid, cfg.chip_grid), True,
                     "one-hot token (incl. [MASK]; patch x patch tokens space-to-depth) and time-bin spikes")
    port = _spiking_conv(b, "stem", sdid.stem, src_in, "stem")
    for i, block in enumerate(sdid.blocks):
        src = f"blocks.{i}"
        h = _spiking_conv(b, f"block{i}_a", block.first, port, f"{src}.first")
        conv, bn = _conv_bn(block.second, f"sdid/{src}.second")
        cur, _ = b.conv(f"block{i}_b_conv", conv, bn, h, f"{src}.second")
        port = b.lif(f"block{i}_b_lif", block.neuron, [cur, port], f"{src}.neuron (input + skip)")
    conv_port, _ = b.conv("readout_conv", sdid.readout, None, port, "readout", final=True)
    out = b.integrator("readout_i", conv_port, "readout (integrator)")
    b.output(out)
    readout = {"node": "readout_i", "kind": "I", "take": "state v at the last step (v_T)",
               "equation": "v_t = v_(t-1) + o_t", "host_post": f"logits = v_T / {cfg.time_steps}",
               "depth_to_space": 1, "fine_shape": [out.channels, *out.size]}
    return StageGraph("sdid", b.graph(cfg.time_steps), b.layers, src_in, out, cfg.time_steps, readout)


def latent_size(vq: nn.Module) -> tuple[int, int]:
    """The encoder's output grid (h, w) for the configured image size."""
    size = (vq.cfg.image_size, vq.cfg.image_size)
    for layer in vq.encoder:
        conv, _ = _conv_bn(layer.synapse, "encoder")
        size = conv_spec(conv, None).out_size(size)
    return size


def build_stage_graphs(vq: nn.Module, sdid: nn.Module | None) -> dict[str, StageGraph]:
    """All stages of trained (eval-mode) models."""
    graphs = {"encoder": encoder_graph(vq), "generator": generator_graph(vq)}
    if sdid is not None:
        grid = latent_size(vq)
        if (sdid.cfg.grid, sdid.cfg.grid) != grid:
            raise SpkdiffError(f"the SDID works on a {sdid.cfg.grid}x{sdid.cfg.grid} token grid but the VQ-SVAE's "
                               f"codebook embeddings are {grid[0]}x{grid[1]}: the stages come from different runs")
        graphs["sdid"] = sdid_graph(sdid)
    return graphs


def load_models(run_dir: Path) -> tuple[nn.Module, nn.Module | None]:
    """The run's VQ-SVAE and (if trained) SDID in eval mode; checkpoint problems are one-line errors."""
    from spkdiff.train.loop import load_stage

    run_dir = Path(run_dir)
    if not (run_dir / "vqsvae.safetensors").exists():
        raise SpkdiffError(f"{run_dir} holds no trained VQ-SVAE (vqsvae.safetensors); train stage 1 first")
    vq = load_stage(run_dir, "vqsvae")
    sdid = load_stage(run_dir, "sdid") if (run_dir / "sdid.safetensors").exists() else None
    return vq, sdid


def spiking_core(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The graph without its non-spiking read-out (conv -> LI/I): its output is the last LIF's spikes.

    For consumers that have no LI/I node (SpikingJelly's importer); the read-out is a linear map of
    these spikes, so matching spikes plus the exported read-out weights pin the whole stage down.
    """
    readouts = [n for n, node in graph.nodes.items() if isinstance(node, nir.LI | nir.I)]
    if not readouts:
        return graph
    drop = set(readouts)
    drop |= {src for src, dst in graph.edges if dst in drop}
    last = [src for src, dst in graph.edges if dst in drop and src not in drop]
    if len(last) != 1:
        raise SpkdiffError("the read-out must be fed by exactly one spiking node")
    nodes = {n: node for n, node in graph.nodes.items() if n not in drop and not isinstance(node, nir.Output)}
    nodes["output"] = nir.Output(output_type={"output": np.array(graph.nodes[last[0]].output_type["output"])})
    edges = [(s, d) for s, d in graph.edges if s not in drop and d not in drop and d in nodes]
    edges.append((last[0], "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata))
