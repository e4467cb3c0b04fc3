"""Simulator float mode: vs a plain step-by-step reference, bit-exact vs SpikingJelly, graph semantics."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spkdiff.errors import SpkdiffError
from spkdiff.simulator import Simulator

# ---------------------------------------------------------------------------------------------
# A straightforward reference: one time step at a time, torch.nn layers, textbook NIR equations
# (v += dt/tau * (v_leak - v + r x)), float64.  Graph values are dyadic rationals, so float32
# (simulator) and float64 (reference) arithmetic are both exact and must agree bit for bit.
# ---------------------------------------------------------------------------------------------


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _reference_layer(node: nir.NIRNode, in_shape: tuple[int, ...]):
    if isinstance(node, nir.Conv2d):
        w = _t(node.weight)
        pad = node.padding if isinstance(node.padding, str) else tuple(int(p) for p in node.padding)
        conv = torch.nn.Conv2d(w.shape[1] * node.groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(node.stride),
                               padding=pad, dilation=tuple(node.dilation), groups=node.groups).double()
        conv.weight.data, conv.bias.data = w, _t(node.bias)
        return conv
    if isinstance(node, nir.Affine | nir.Linear):
        w = _t(node.weight)
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine)).double()
        lin.weight.data = w
        if isinstance(node, nir.Affine):
            lin.bias.data = _t(node.bias)
        return lin
    if isinstance(node, nir.AvgPool2d):
        return torch.nn.AvgPool2d(tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))
    if isinstance(node, nir.SumPool2d):
        k = tuple(int(a) for a in node.kernel_size)
        pool = torch.nn.AvgPool2d(k, tuple(node.stride), tuple(node.padding))
        return lambda x: pool(x) * (k[0] * k[1])
    if isinstance(node, nir.Flatten):
        return torch.nn.Flatten(node.start_dim + 1, node.end_dim + 1 if node.end_dim >= 0 else node.end_dim)
    if isinstance(node, nir.Scale):
        return lambda x: x * _t(node.scale)
    return None


def reference_run(graph: nir.NIRGraph, x: torch.Tensor, dt: float = 1.0) -> dict[str, torch.Tensor]:
    """Plain interpreter: for each step, for each node in a valid order, apply its equations."""
    preds = {n: [s for s, d in graph.edges if d == n] for n in graph.nodes}
    order: list[str] = []
    while len(order) < len(graph.nodes):
        for n in graph.nodes:
            if n not in order and all(p in order for p in preds[n]):
                order.append(n)
    layers = {n: _reference_layer(node, ()) for n, node in graph.nodes.items()}
    state: dict[str, dict[str, torch.Tensor]] = {}
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in graph.nodes}
    for t in range(x.shape[0]):
        val: dict[str, torch.Tensor] = {}
        for n in order:
            node = graph.nodes[n]
            if isinstance(node, nir.Input):
                val[n] = x[t].double()
                continue
            inp = sum(val[p] for p in preds[n])
            s = state.setdefault(n, {})
            if layers[n] is not None:
                y = layers[n](inp)
            elif isinstance(node, nir.LIF):
                v = s.get("v", _t(node.v_leak).expand_as(inp))
                v = v + dt / _t(node.tau) * (_t(node.v_leak) - v + _t(node.r) * inp)
                y = (v >= _t(node.v_threshold)).double()
                s["v"] = torch.where(y > 0, _t(node.v_reset), v)
            elif isinstance(node, nir.IF):
                v = s.get("v", _t(node.v_reset).expand_as(inp)) + dt * _t(node.r) * inp
                y = (v >= _t(node.v_threshold)).double()
                s["v"] = torch.where(y > 0, _t(node.v_reset), v)
            elif isinstance(node, nir.LI):
                v = s.get("v", _t(node.v_leak).expand_as(inp))
                y = s["v"] = v + dt / _t(node.tau) * (_t(node.v_leak) - v + _t(node.r) * inp)
            elif isinstance(node, nir.I):
                y = s["v"] = s.get("v", torch.zeros_like(inp)) + dt * _t(node.r) * inp
            elif isinstance(node, nir.CubaLIF):
                i = s.get("i", torch.zeros_like(inp))
                i = s["i"] = i + dt / _t(node.tau_syn) * (_t(node.w_in) * inp - i)
                v = s.get("v", _t(node.v_leak).expand_as(inp))
                v = v + dt / _t(node.tau_mem) * (_t(node.v_leak) - v + _t(node.r) * i)
                y = (v >= _t(node.v_threshold)).double()
                s["v"] = torch.where(y > 0, _t(node.v_reset), v)
            elif isinstance(node, nir.Threshold):
                y = (inp >= _t(node.threshold)).double()
            elif isinstance(node, nir.Output):
                y = inp
            else:
                raise AssertionError(type(node))
            val[n] = y
            outs[n].append(y)
    return {n: torch.stack(v) for n, v in outs.items() if v}


def _dyadic(rng: np.random.Generator, shape, lo: int, hi: int, denom: int) -> np.ndarray:
    return (rng.integers(lo, hi + 1, size=shape) / denom).astype(np.float32)


def _neuron(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> nir.NIRNode:
    def full(v):
        return np.full(shape, v, dtype=np.float32)

    tau = rng.choice([2.0, 4.0], size=shape).astype(np.float32)  # per-neuron parameters
    if kind == "LIF":
        return nir.LIF(tau=tau, r=full(rng.choice([0.5, 1.0, 2.0])), v_leak=full(rng.choice([0.0, 0.25])),
                       v_threshold=full(rng.choice([0.5, 1.0])), v_reset=full(rng.choice([0.0, -0.25])))
    if kind == "IF":
        return nir.IF(r=full(1.0), v_threshold=full(1.0), v_reset=full(0.0))
    if kind == "CubaLIF":
        return nir.CubaLIF(tau_syn=full(2.0), tau_mem=tau, r=full(1.0), v_leak=full(0.0), v_threshold=full(0.5),
                           v_reset=full(0.0), w_in=full(2.0))
    if kind == "Threshold":
        return nir.Threshold(threshold=full(0.25))
    if kind == "LI":
        return nir.LI(tau=tau, r=full(1.0), v_leak=full(0.0))
    return nir.I(r=full(0.5))


@st.composite
def random_graphs(draw):
    """Conv -> spiking neuron -> [pool | skip block] -> Flatten -> Affine -> neuron -> Output."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    c_in, h, w = draw(st.integers(1, 2)), draw(st.integers(4, 7)), draw(st.integers(4, 7))
    c1 = draw(st.sampled_from([2, 4]))
    k = draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from(["same", 0, 1, (1, 0)] if stride == 1 else [0, 1, (0, 1)]))
    dilation = draw(st.sampled_from([1, 2])) if k > 1 and 2 * (k - 1) < min(h, w) and padding != "same" else 1
    groups = draw(st.sampled_from([1, c_in]))
    wt = _dyadic(rng, (c1, c_in // groups, k, k), -3, 3, 4) * (rng.random((c1, c_in // groups, k, k)) > 0.2)
    conv = nir.Conv2d(input_shape=(h, w), weight=wt.astype(np.float32), stride=stride, padding=padding,
                      dilation=dilation, groups=groups, bias=_dyadic(rng, (c1,), -1, 1, 4))
    shape = tuple(int(s) for s in conv.output_type["output"])
    nodes: dict[str, nir.NIRNode] = {"in": nir.Input(np.array([c_in, h, w])), "conv": conv,
                                     "n1": _neuron(draw(st.sampled_from(["LIF", "IF", "CubaLIF", "Threshold"])),
                                                   shape, rng)}
    edges = [("in", "conv"), ("conv", "n1")]
    last = "n1"
    block = draw(st.sampled_from(["none", "sumpool", "avgpool", "skip"]))
    if block in ("sumpool", "avgpool") and min(shape[1:]) >= 2:
        cls = nir.SumPool2d if block == "sumpool" else nir.AvgPool2d
        nodes["pool"] = cls(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
        edges.append(("n1", "pool"))
        shape = (shape[0], shape[1] // 2, shape[2] // 2)
        last = "pool"
    elif block == "skip":  # residual: spikes of n1 go both through conv2 and straight into n2
        w2 = _dyadic(rng, (shape[0], shape[0], 3, 3), -2, 2, 4)
        nodes["conv2"] = nir.Conv2d(input_shape=shape[1:], weight=w2, stride=1, padding="same", dilation=1,
                                    groups=1, bias=np.zeros(shape[0], dtype=np.float32))
        nodes["n2"] = _neuron("LIF", shape, rng)
        edges += [("n1", "conv2"), ("conv2", "n2"), ("n1", "n2")]
        last = "n2"
    n_flat = int(np.prod(shape))
    nodes["flat"] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
    n_out = draw(st.integers(1, 5))
    nodes["fc"] = nir.Affine(weight=_dyadic(rng, (n_out, n_flat), -2, 2, 4), bias=_dyadic(rng, (n_out,), -2, 2, 4))
    nodes["scale"] = nir.Scale(scale=rng.choice([0.5, 1.0, 2.0], size=(n_out,)).astype(np.float32))
    nodes["n3"] = _neuron(draw(st.sampled_from(["LIF", "LI", "I", "CubaLIF"])), (n_out,), rng)
    nodes["out"] = nir.Output(np.array([n_out]))
    edges += [(last, "flat"), ("flat", "fc"), ("fc", "scale"), ("scale", "n3"), ("n3", "out")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    x = torch.as_tensor(_dyadic(rng, (draw(st.integers(1, 5)), draw(st.integers(1, 3)), c_in, h, w), 0, 8, 4))
    return graph, x


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_matches_reference_on_random_graphs(case):
    graph, x = case
    res = Simulator(graph).run({"in": x}, record=True)
    ref = reference_run(graph, x)
    for name, expected in ref.items():
        got = res.recordings[name]["out"]
        assert torch.equal(got.double(), expected), name
    assert torch.equal(res.outputs["out"].double(), ref["out"])


# ---------------------------------------------------------------------------------------------
# SpikingJelly: bit-exact LIF (random float data, so the operation order matters)
# ---------------------------------------------------------------------------------------------


def _lif_graph(shape: tuple[int, ...], tau: float, weight: np.ndarray, bias: np.ndarray) -> nir.NIRGraph:
    full = lambda v: np.full(shape, v, dtype=np.float32)  # noqa: E731
    return nir.NIRGraph(
        nodes={"in": nir.Input(np.array([weight.shape[1]])), "fc": nir.Affine(weight=weight, bias=bias),
               "lif": nir.LIF(tau=full(tau), r=full(1.0), v_leak=full(0.0), v_threshold=full(1.0), v_reset=full(0.0)),
               "out": nir.Output(np.array(shape))},
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])


@pytest.mark.parametrize("tau", [2.0, 3.0, 1.7])
def test_lif_bit_exact_vs_spikingjelly(tau):
    from spikingjelly.activation_based import neuron

    g = torch.Generator().manual_seed(int(tau * 10))
    weight = torch.randn(64, 20, generator=g) * 0.7
    bias = torch.randn(64, generator=g) * 0.3
    x = torch.rand(16, 8, 20, generator=g)
    graph = _lif_graph((64,), tau, weight.numpy(), bias.numpy())
    res = Simulator(graph).run(x, record=["lif"])

    lif = neuron.LIFNode(tau=tau, decay_input=True, v_threshold=1.0, v_reset=0.0, step_mode="m", store_v_seq=True)
    with torch.no_grad():
        current = torch.nn.functional.linear(x.flatten(0, 1), weight, bias).reshape(16, 8, 64)
        spikes = lif(current)
    assert 0.05 < float(spikes.mean()) < 0.95  # a non-trivial regime
    assert torch.equal(res.outputs["out"], spikes)
    assert torch.equal(res.recordings["lif"]["v"], lif.v_seq)


def test_if_and_residual_bit_exact_vs_spikingjelly():
    """IFNode, and a spike edge summed into a LIF input (residual), against SpikingJelly modules."""
    from spikingjelly.activation_based import neuron

    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(32, 10, generator=g), torch.randn(32, 32, generator=g) * 0.4
    x = torch.rand(12, 4, 10, generator=g)
    ones, zeros = np.ones(32, np.float32), np.zeros(32, np.float32)
    graph = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([10])), "fc1": nir.Linear(weight=w1.numpy()),
               "if": nir.IF(r=ones, v_threshold=ones, v_reset=zeros), "fc2": nir.Linear(weight=w2.numpy()),
               "lif": nir.LIF(tau=2 * ones, r=ones, v_leak=zeros, v_threshold=ones, v_reset=zeros),
               "out": nir.Output(np.array([32]))},
        edges=[("in", "fc1"), ("fc1", "if"), ("if", "fc2"), ("fc2", "lif"), ("if", "lif"), ("lif", "out")])
    out = Simulator(graph).run({"in": x}).outputs["out"]
    ifn = neuron.IFNode(v_threshold=1.0, v_reset=0.0, step_mode="m")
    lif = neuron.LIFNode(tau=2.0, step_mode="m")
    with torch.no_grad():
        s1 = ifn(x @ w1.T)
        expected = lif(s1 @ w2.T + s1)
    assert torch.equal(out, expected)


def test_spikingjelly_export_runs_with_its_dt():
    """A SpikingJelly network exported by SpikingJelly's own NIR exporter (dt = 1e-4 s) reproduces it."""
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1, step_mode="m"), neuron.LIFNode(tau=2.0, step_mode="m"),
        layer.AvgPool2d(2, 2, step_mode="m"), layer.Flatten(step_mode="m"),
        layer.Linear(4 * 4 * 4, 10, step_mode="m"), neuron.IFNode(step_mode="m"))
    for m in net:
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            m.weight.data *= 3
    x = torch.rand(6, 2, 1, 8, 8)
    with torch.no_grad():
        expected = net(x)
    functional.reset_net(net)
    graph = export_to_nir(net, x, dt=1e-4)
    res = Simulator(graph, dt=1e-4).run(x)
    (out,) = res.outputs.values()
    assert expected.sum() > 0
    assert torch.equal(out, expected)


# ---------------------------------------------------------------------------------------------
# Graph semantics and API
# ---------------------------------------------------------------------------------------------


def _small_graph(seed: int = 0) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)
    shp = (3, 4, 4)
    return nir.NIRGraph(
        nodes={"in": nir.Input(np.array([2, 4, 4])),
               "conv": nir.Conv2d(input_shape=(4, 4), weight=rng.normal(size=(3, 2, 3, 3)).astype(np.float32),
                                  stride=1, padding=1, dilation=1, groups=1, bias=np.full(3, 0.2, np.float32)),
               "lif": nir.LIF(tau=np.full(shp, 2.0), r=np.ones(shp), v_leak=np.zeros(shp),
                              v_threshold=np.ones(shp), v_reset=np.zeros(shp)),
               "flat": nir.Flatten(input_type={"input": np.array(shp)}, start_dim=0),
               "fc": nir.Affine(weight=rng.normal(size=(5, 48)).astype(np.float32), bias=np.zeros(5, np.float32)),
               "li": nir.LI(tau=np.full(5, 4.0), r=np.ones(5), v_leak=np.zeros(5)),
               "out": nir.Output(np.array([5]))},
        edges=[("in", "conv"), ("conv", "lif"), ("lif", "flat"), ("flat", "fc"), ("fc", "li"), ("li", "out")])


def test_constant_input_is_computed_once_and_matches_repeated():
    sim = Simulator(_small_graph())
    x = torch.rand(3, 2, 4, 4)
    static = sim.run(x, steps=7, record=True)
    repeated = sim.run(x.expand(7, *x.shape).contiguous(), record=True)
    assert torch.equal(static.outputs["out"], repeated.outputs["out"])
    assert torch.equal(static.recordings["lif"]["v"], repeated.recordings["lif"]["v"])
    for name in ("conv", "fc", "lif"):
        for key in ("sops", "macs", "spikes", "neuron_updates"):
            assert np.array_equal(getattr(static.counters.layers[name], key),
                                  getattr(repeated.counters.layers[name], key)), (name, key)


def test_nir_write_read_roundtrip_runs_identically(tmp_path):
    graph = _small_graph(1)
    path = tmp_path / "g.nir"
    nir.write(str(path), graph)
    x = torch.rand(5, 2, 2, 4, 4)
    a = Simulator(graph).run(x)
    b = Simulator(path).run(x)
    assert torch.equal(a.outputs["out"], b.outputs["out"])
    assert a.counters.totals() == b.counters.totals()


def test_nested_subgraph_equals_flat_graph():
    flat = _small_graph(2)
    inner = nir.NIRGraph(
        nodes={"i": nir.Input(np.array([3, 4, 4])), "lif": flat.nodes["lif"], "flat": flat.nodes["flat"],
               "o": nir.Output(np.array([48]))},
        edges=[("i", "lif"), ("lif", "flat"), ("flat", "o")], type_check=False)
    nested = nir.NIRGraph(
        nodes={"in": flat.nodes["in"], "conv": flat.nodes["conv"], "block": inner, "fc": flat.nodes["fc"],
               "li": flat.nodes["li"], "out": flat.nodes["out"]},
        edges=[("in", "conv"), ("conv", "block"), ("block", "fc"), ("fc", "li"), ("li", "out")], type_check=False)
    x = torch.rand(4, 2, 2, 4, 4)
    a = Simulator(flat).run(x, record=["lif"])
    b = Simulator(nested).run(x, record=["block.lif"])
    assert torch.equal(a.outputs["out"], b.outputs["out"])
    assert torch.equal(a.recordings["lif"]["v"], b.recordings["block.lif"]["v"])


def test_two_inputs_sum_into_one_node():
    ones = np.ones(3, np.float32)
    graph = nir.NIRGraph(
        nodes={"a": nir.Input(np.array([3])), "b": nir.Input(np.array([3])),
               "if": nir.IF(r=ones, v_threshold=ones, v_reset=0 * ones), "out": nir.Output(np.array([3]))},
        edges=[("a", "if"), ("b", "if"), ("if", "out")], type_check=False)
    a = torch.tensor([[[0.25, 0.5, 1.0]]]).expand(4, 1, 3)
    b = torch.tensor([[0.25, 0.0, 0.0]])  # constant in time
    out = Simulator(graph).run({"a": a, "b": b}).outputs["out"][:, 0]
    # v accumulates 0.5 / 0.5 / 1.0 per step: spikes every 2nd, 2nd, every step
    assert out.tolist() == [[0, 0, 1], [1, 1, 1], [0, 0, 1], [1, 1, 1]]


def test_errors_are_one_line_spkdiff_errors(tmp_path):
    ones = np.ones(2, np.float32)
    cyclic = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([2])), "a": nir.Linear(weight=np.eye(2, dtype=np.float32)),
               "b": nir.IF(r=ones, v_threshold=ones, v_reset=0 * ones), "out": nir.Output(np.array([2]))},
        edges=[("in", "a"), ("a", "b"), ("b", "a"), ("b", "out")], type_check=False)
    with pytest.raises(SpkdiffError, match="recurrent cycle"):
        Simulator(cyclic)
    with pytest.raises(SpkdiffError, match="not found"):
        Simulator(tmp_path / "missing.nir")
    sim = Simulator(_small_graph())
    with pytest.raises(SpkdiffError, match="steps="):
        sim.run(torch.rand(2, 2, 4, 4))
    with pytest.raises(SpkdiffError, match="must be"):
        sim.run(torch.rand(3, 2, 2, 5, 5))
    with pytest.raises(SpkdiffError, match="unknown simulator mode"):
        Simulator(_small_graph(), mode="analog")


def test_cli_sim_reports_counts_energy_and_mapping(tmp_path, capsys):
    import json

    from spkdiff.cli import main

    path = tmp_path / "g.nir"
    nir.write(str(path), _small_graph())
    np.save(tmp_path / "x.npy", np.full((3, 2, 4, 4), 0.5, np.float32))  # analog, constant in time
    out = tmp_path / "r.json"
    assert main(["sim", str(path), "--input", f"in={tmp_path / 'x.npy'}", "--steps", "5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["totals_per_sample"]["neuron_updates"] == 5 * (48 + 5)
    assert report["totals_per_sample"]["macs"] > 0  # analog input: dense MACs in the first conv
    assert report["mapping"]["cores"] == 2 and report["energy"]["total_j"] > 0
    assert "uJ/sample" in capsys.readouterr().out
    assert main(["sim", str(tmp_path / "missing.nir")]) == 2


def test_affine_after_partial_flatten_reads_the_whole_sample():
    """Some exporters count Flatten dims with the batch axis: (C, H*W) into an Affine over C*H*W features."""
    graph = _small_graph(3)
    x = torch.rand(4, 2, 2, 4, 4)
    expected = Simulator(graph).run(x).outputs["out"]
    graph.nodes["flat"] = nir.Flatten(input_type={"input": np.array([3, 4, 4])}, start_dim=1)  # -> (3, 16)
    assert torch.equal(Simulator(graph).run(x).outputs["out"], expected)


def test_delay_shifts_each_element_by_its_steps():
    graph = nir.NIRGraph(nodes={"in": nir.Input(np.array([3])), "d": nir.Delay(delay=np.array([0.0, 1.0, 2.0])),
                                "out": nir.Output(np.array([3]))}, edges=[("in", "d"), ("d", "out")], type_check=False)
    x = torch.arange(1, 13, dtype=torch.float32).reshape(4, 1, 3)
    out = Simulator(graph).run(x).outputs["out"][:, 0]
    assert out.tolist() == [[1, 0, 0], [4, 2, 0], [7, 5, 3], [10, 8, 6]]
    graph.nodes["d"] = nir.Delay(delay=np.full(3, 0.5))  # 0.5 time units = 1 step at dt = 0.5
    out = Simulator(graph, dt=0.5).run(x).outputs["out"][:, 0]
    assert torch.equal(out, torch.cat([torch.zeros(1, 3), x[:3, 0]]))
