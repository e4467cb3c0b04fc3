"""Simulator fixed-point mode: the Loihi integer model of spkdiff.neuromorphic.loihi, run on NIR graphs."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic import quantize
from spkdiff.simulator import Simulator


def _lif(shape, tau=2.0, v_leak=0.0):
    o = np.ones(shape, np.float32)
    return nir.LIF(tau=tau * o, r=o, v_leak=v_leak * o, v_threshold=o, v_reset=0 * o)


def _run_layer_by_hand(q: quantize.QuantizedLayer, spikes: torch.Tensor) -> torch.Tensor:
    u = v = None
    out = []
    for s in spikes:
        if u is None:
            a = q.synapse(s)
            u = v = torch.zeros_like(a)
        st = q.step(s, u, v)
        u, v = st.u, st.v
        out.append(st.s.float())
    return torch.stack(out)


def test_dense_lif_equals_quantize_layer_step_by_step():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(30, 20, generator=g) * 0.6, torch.randn(30, generator=g) * 0.1
    graph = nir.NIRGraph(nodes={"in": nir.Input(np.array([20])), "fc": nir.Affine(weight=w.numpy(), bias=b.numpy()),
                                "lif": _lif(30), "out": nir.Output(np.array([30]))},
                         edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])
    x = (torch.rand(12, 4, 20, generator=g) > 0.5).float()
    fixed = Simulator(graph, mode="fixed").run(x)
    expected = _run_layer_by_hand(quantize.quantize_layer(w, b, tau=2.0), x)
    assert expected.sum() > 0
    assert torch.equal(fixed.outputs["out"], expected)
    flt = Simulator(graph).run(x)
    assert (fixed.outputs["out"] == flt.outputs["out"]).float().mean() > 0.97
    assert fixed.counters.totals()["sops"] == flt.counters.totals()["sops"]  # same input spikes


def test_conv_lif_equals_quantize_layer_and_layers_override():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(4, 2, 3, 3, generator=g) * 0.5, torch.randn(4, generator=g) * 0.1
    graph = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([2, 6, 6])),
               "conv": nir.Conv2d(input_shape=(6, 6), weight=w.numpy(), stride=1, padding=1, dilation=1, groups=1,
                                  bias=b.numpy()),
               "lif": _lif((4, 6, 6)), "out": nir.Output(np.array([4, 6, 6]))},
        edges=[("in", "conv"), ("conv", "lif"), ("lif", "out")])
    x = (torch.rand(10, 3, 2, 6, 6, generator=g) > 0.6).float()
    q = quantize.quantize_layer(w, b, tau=2.0, padding=1)
    assert torch.equal(Simulator(graph, mode="fixed").run(x).outputs["out"], _run_layer_by_hand(q, x))
    q2 = quantize.quantize_layer(w, b, tau=2.0, padding=1, headroom=50.0)  # a different vth
    # given integers are run as they are (a bundle's; here quantized for another headroom)
    sim = Simulator(graph, mode="fixed", quant=quantize.quantize_graph(graph, quantize.QuantOptions(headroom=50.0)))
    assert sim.ops["lif"].params.vth == q2.vth != q.vth
    assert torch.equal(sim.run(x).outputs["out"], _run_layer_by_hand(q2, x))


def _residual_net(seed: int = 0) -> nir.NIRGraph:
    """Analog image -> conv/LIF -> residual block (conv/LIF, skip spikes summed into the 2nd LIF) -> I read-out."""
    rng = np.random.default_rng(seed)
    c, h = 4, 6
    shp = (c, h, h)

    def conv(cin):
        return nir.Conv2d(input_shape=(h, h), weight=(rng.normal(size=(c, cin, 3, 3)) * 0.5).astype(np.float32),
                          stride=1, padding=1, dilation=1, groups=1, bias=(rng.normal(size=c) * 0.1).astype(np.float32))

    nodes = {"in": nir.Input(np.array([1, h, h])), "c0": conv(1), "l0": _lif(shp), "c1": conv(c), "l1": _lif(shp),
             "c2": conv(c), "l2": _lif(shp), "flat": nir.Flatten(input_type={"input": np.array(shp)}, start_dim=0),
             "fc": nir.Affine(weight=(rng.normal(size=(5, c * h * h)) * 0.2).astype(np.float32),
                              bias=np.zeros(5, np.float32)),
             "ro": nir.I(r=np.ones(5, np.float32)), "out": nir.Output(np.array([5]))}
    edges = [("in", "c0"), ("c0", "l0"), ("l0", "c1"), ("c1", "l1"), ("l1", "c2"), ("c2", "l2"), ("l0", "l2"),
             ("l2", "flat"), ("flat", "fc"), ("fc", "ro"), ("ro", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def test_residual_network_with_analog_input_tracks_float_mode():
    graph = _residual_net()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(2)) * 2  # direct encoding: constant image
    flt = Simulator(graph).run(x, steps=8, record=True)
    sim = Simulator(graph, mode="fixed")
    fx = sim.run(x, steps=8, record=True)
    assert fx.warnings == []
    for n in ("l0", "l1", "l2"):
        a, b = flt.recordings[n]["out"], fx.recordings[n]["out"]
        assert a.sum() > 0 and (a == b).float().mean() > 0.99, n
    # the skip edge and the conv share l2's vth: integer mantissas of 8 bits (m << 1 for mixed signs)
    q2 = sim.ops["l2"].quant
    (w_skip, e_skip), = q2.direct.values()
    w_c2 = torch.as_tensor(q2.synapses["c2"].weight_int)
    assert 0 < w_skip <= 254 and int(w_c2.abs().max()) <= 256 and int(w_c2.max()) <= 254
    assert set(q2.direct) == {"l0"} and e_skip >= 0
    # read-out: fixed v / scale equals the float map of fixed spikes up to weight rounding
    s = fx.recordings["l2"]["out"].flatten(2)
    ref = (s @ torch.as_tensor(graph.nodes["fc"].weight).T).cumsum(0)
    assert torch.allclose(fx.outputs["out"], ref, atol=0.05 * float(ref.abs().max()))
    assert fx.recordings["ro"]["v_int"].dtype == torch.int64


def test_unsupported_neurons_are_clear_errors():
    graph = nir.NIRGraph(nodes={"in": nir.Input(np.array([3])), "fc": nir.Linear(weight=np.eye(3, dtype=np.float32)),
                                "lif": _lif(3, v_leak=0.5), "out": nir.Output(np.array([3]))},
                         edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])
    with pytest.raises(SpkdiffError, match="v_leak = v_reset = 0"):
        Simulator(graph, mode="fixed")
    o = np.ones(3, np.float32)
    graph.nodes["lif"] = nir.CubaLIF(tau_syn=2 * o, tau_mem=2 * o, r=o, v_leak=0 * o, v_threshold=o)
    with pytest.raises(SpkdiffError, match="no Loihi fixed-point model"):
        Simulator(graph, mode="fixed")
    with pytest.raises(SpkdiffError, match="unknown fixed-mode options"):
        Simulator(_residual_net(), mode="fixed", quant={"bits": 4})
