"""Simulator counters (by hand and brute force), energy = counts x profile, chip mapping limits."""

from __future__ import annotations

import itertools

import nir
import numpy as np
import pytest
import torch

from spkdiff.errors import SpkdiffError
from spkdiff.simulator import ChipLimits, Simulator, energy, load_profile, map_to_chip


def _ones(shape, v=1.0):
    return np.full(shape, v, dtype=np.float32)


def _conv_graph(weight: np.ndarray, in_hw: tuple[int, int], stride=1, padding=1, dilation=1, groups=1,
                neuron: bool = True) -> nir.NIRGraph:
    conv = nir.Conv2d(input_shape=in_hw, weight=weight.astype(np.float32), stride=stride, padding=padding,
                      dilation=dilation, groups=groups, bias=np.zeros(weight.shape[0], np.float32))
    out_shape = tuple(int(s) for s in conv.output_type["output"])
    nodes = {"in": nir.Input(np.array([weight.shape[1] * groups, *in_hw])), "conv": conv,
             "out": nir.Output(np.array(out_shape))}
    edges = [("in", "conv"), ("conv", "out")]
    if neuron:
        nodes["if"] = nir.IF(r=_ones(out_shape), v_threshold=_ones(out_shape, 1e9), v_reset=_ones(out_shape, 0))
        edges = [("in", "conv"), ("conv", "if"), ("if", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def test_conv_sops_by_hand_with_borders_and_zero_weights():
    """3x3 ones kernel, padding 1, on a 3x3 map: fan-out is 4 (corner), 6 (edge), 9 (centre);
    zeroing the top-left tap removes one target for every input except the bottom-right row/col."""
    w = np.ones((1, 1, 3, 3))
    sim = Simulator(_conv_graph(w, (3, 3)))
    x = torch.zeros(3, 1, 1, 3, 3)
    x[0, 0, 0, 0, 0] = 1  # corner
    x[1, 0, 0, 0, 1] = 1  # edge
    x[2, 0, 0, 1, 1] = 1  # centre
    c = sim.run(x).counters.layers["conv"]
    assert c.sops[:, 0].tolist() == [4, 6, 9]
    assert c.macs.sum() == 0  # spike input: no dense MACs

    w[0, 0, 0, 0] = 0  # tap k=(0,0): input q reaches output q + (1,1)
    sim = Simulator(_conv_graph(w, (3, 3)))
    x2 = torch.zeros(4, 1, 1, 3, 3)
    x2[0, 0, 0, 0, 0] = 1  # corner (0,0): 3
    x2[1, 0, 0, 2, 2] = 1  # corner (2,2): target (3,3) is outside anyway: 4
    x2[2, 0, 0, 1, 1] = 1  # centre: 8
    x2[3] = 1  # all nine: 49 valid taps - 4 lost (inputs (0..1, 0..1) lose one each)
    c = sim.run(x2).counters.layers["conv"]
    assert c.sops[:, 0].tolist() == [3, 4, 8, 45]
    assert c.synapses == 45


def test_analog_input_counts_dense_macs_every_step():
    w = np.ones((2, 1, 3, 3))
    w[1] = 0  # zero weights still cost the SNN a dense MAC on analog input (the conservative side)
    sim = Simulator(_conv_graph(w, (3, 3)))
    x = torch.full((5, 2, 1, 3, 3), 0.3)
    c = sim.run(x).counters.layers["conv"]
    assert np.all(c.macs == 2 * 49)  # valid taps of a 3x3 kernel on a padded 3x3 map, per output channel
    assert c.sops.sum() == 0
    assert sim.ann_macs == 49  # the ANN equivalent has no synapses where the weights are zero

    dense = nir.NIRGraph(nodes={"in": nir.Input(np.array([4])), "fc": nir.Linear(weight=np.ones((3, 4), np.float32)),
                                "out": nir.Output(np.array([3]))}, edges=[("in", "fc"), ("fc", "out")])
    c = Simulator(dense).run(torch.full((2, 1, 4), 0.5)).counters.layers["fc"]
    assert c.macs.tolist() == [[12], [12]]


def _brute_conv_sops(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups) -> float:
    """Loop over outputs and taps: every non-zero weight that reads a real input adds that input's value."""
    c_out, c_per_g, kh, kw = w.shape
    _, h, wd = x.shape
    if padding == "same":
        ph, pw = (dilation * (kh - 1)) // 2, (dilation * (kw - 1)) // 2
        oh, ow = h, wd
    else:
        ph = pw = padding
        oh = (h + 2 * ph - dilation * (kh - 1) - 1) // stride + 1
        ow = (wd + 2 * pw - dilation * (kw - 1) - 1) // stride + 1
    total = 0.0
    out_per_g = c_out // groups
    for o, py, px, ci, ky, kx in itertools.product(range(c_out), range(oh), range(ow), range(c_per_g),
                                                  range(kh), range(kw)):
        iy, ix = py * stride - ph + ky * dilation, px * stride - pw + kx * dilation
        if 0 <= iy < h and 0 <= ix < wd and w[o, ci, ky, kx] != 0:
            total += x[(o // out_per_g) * c_per_g + ci, iy, ix]
    return total


@pytest.mark.parametrize("stride,padding,dilation,groups,k", [
    (1, 1, 1, 1, 3), (2, 1, 1, 1, 3), (1, 0, 2, 2, 3), (1, "same", 1, 1, 2), (2, 2, 1, 2, 4), (1, "same", 2, 1, 3)])
def test_conv_sops_equal_brute_force(stride, padding, dilation, groups, k):
    rng = np.random.default_rng(k * 10 + stride)
    c_in, c_out, h, w_ = 2, 4, 6, 5
    weight = rng.normal(size=(c_out, c_in // groups, k, k)) * (rng.random((c_out, c_in // groups, k, k)) > 0.4)
    sim = Simulator(_conv_graph(weight, (h, w_), stride, padding, dilation, groups))
    spikes = (rng.random((3, 2, c_in, h, w_)) > 0.6).astype(np.float32)
    sops = sim.run(torch.as_tensor(spikes)).counters.layers["conv"].sops
    for t, b in itertools.product(range(3), range(2)):
        assert sops[t, b] == _brute_conv_sops(spikes[t, b], weight, stride, padding, dilation, groups)


def test_dense_sops_are_nonzero_entries_of_spiking_columns():
    w = np.array([[1, 0, 2], [0, 0, 3], [4, 0, 0], [5, 6, 0]], dtype=np.float32)  # column nnz: 3, 1, 2
    g = nir.NIRGraph(nodes={"in": nir.Input(np.array([3])), "fc": nir.Affine(weight=w, bias=np.ones(4, np.float32)),
                            "out": nir.Output(np.array([4]))}, edges=[("in", "fc"), ("fc", "out")])
    x = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1, 1, 1], [0, 0, 0]]])  # (T=2, B=2, 3)
    c = Simulator(g).run(x).counters
    assert c.layers["fc"].sops.tolist() == [[3, 3], [6, 0]]
    assert c.per_sample("sops").tolist() == [9, 3]
    assert c.ann_macs == 6  # the non-zero weights: an ANN pass multiplies each once


def test_neuron_updates_spikes_and_direct_spike_edges():
    """IF with constant input 0.5 fires every 2nd step; its spikes also go straight into a LIF (1 SOP each)."""
    n = 3
    g = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([n])), "if": nir.IF(r=_ones(n), v_threshold=_ones(n), v_reset=_ones(n, 0)),
               "lif": nir.LIF(tau=_ones(n, 2), r=_ones(n), v_leak=_ones(n, 0), v_threshold=_ones(n, 10),
                              v_reset=_ones(n, 0)),
               "out": nir.Output(np.array([n]))},
        edges=[("in", "if"), ("if", "lif"), ("lif", "out")])
    res = Simulator(g).run(torch.full((2, n), 0.5), steps=6, per_neuron=True)
    c = res.counters
    assert c.layers["if"].neuron_updates.sum() == n * 6 * 2
    assert c.layers["if"].spikes[:, 0].tolist() == [0, n, 0, n, 0, n]
    assert c.layers["if"].firing_rate == 0.5
    assert c.layers["lif"].sops[:, 1].tolist() == [0, n, 0, n, 0, n]
    assert c.layers["lif"].spikes.sum() == 0
    assert c.layers["lif"].incoming_sops.sum() == c.layers["lif"].sops.sum()
    assert c.totals()["neuron_updates"] == 2 * n * 6


def test_per_neuron_incoming_sops_sum_to_layer_sops():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 3, 3)) * (rng.random((3, 2, 3, 3)) > 0.3)
    sim = Simulator(_conv_graph(w, (5, 5), stride=2, padding=1))
    x = torch.as_tensor((rng.random((4, 3, 2, 5, 5)) > 0.5).astype(np.float32))
    lc = sim.run(x, per_neuron=True).counters.layers["conv"]
    assert lc.incoming_sops.shape == (4, 3, 3, 3)
    assert np.array_equal(lc.incoming_sops.reshape(4, -1).sum(1), lc.sops.sum(1))


# --------------------------------------------------------------------------------------------------
# energy
# --------------------------------------------------------------------------------------------------


def _mlp(n_in=6, n_hid=5, n_out=3, seed=0) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)
    return nir.NIRGraph(
        nodes={"in": nir.Input(np.array([n_in])),
               "fc1": nir.Affine(weight=rng.normal(size=(n_hid, n_in)).astype(np.float32),
                                 bias=np.zeros(n_hid, np.float32)),
               "lif1": nir.LIF(tau=_ones(n_hid, 2), r=_ones(n_hid), v_leak=_ones(n_hid, 0),
                               v_threshold=_ones(n_hid, 0.3), v_reset=_ones(n_hid, 0)),
               "fc2": nir.Linear(weight=rng.normal(size=(n_out, n_hid)).astype(np.float32)),
               "lif2": nir.LIF(tau=_ones(n_out, 2), r=_ones(n_out), v_leak=_ones(n_out, 0),
                               v_threshold=_ones(n_out, 0.3), v_reset=_ones(n_out, 0)),
               "out": nir.Output(np.array([n_out]))},
        edges=[("in", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"), ("lif2", "out")])


def test_energy_is_counts_times_profile(tmp_path):
    res = Simulator(_mlp()).run(torch.rand(8, 4, 6))
    c = res.counters
    t = c.totals()
    assert t["sops"] > 0 and t["macs"] == 8 * 30 and t["spikes"] > 0
    rep = energy(c, "loihi")
    pj = 1e-12
    inactive = t["neuron_updates"] - t["active_updates"]  # Davies 2018: 81 pJ active, 52 pJ inactive
    expected = (t["sops"] * 23.6 + t["active_updates"] * 81.0 + inactive * 52.0 + t["spikes"] * 1.7
                + t["macs"] * 4.6) * pj
    assert rep.total_j == pytest.approx(expected, rel=1e-12)
    assert rep.ann_total_j == pytest.approx((30 + 15) * 4.6 * pj)
    assert rep.ratio_vs_ann == pytest.approx(rep.ann_total_j / rep.total_j)
    assert sum(sum(v.values()) for v in rep.per_layer["graph"].values()) == pytest.approx(rep.total_j)

    custom = tmp_path / "mine.yaml"
    custom.write_text("name: mine\nenergy_pj: {sop: 1.0, mac: 2.0}\n")
    rep2 = energy({"enc": c, "dec": c}, custom)
    assert rep2.profile == "mine"
    assert rep2.total_j == pytest.approx(2 * (t["sops"] * 1.0 + t["macs"] * 2.0) * pj)
    assert rep2.unpriced == {"neuron_update": 2 * t["neuron_updates"], "spike": 2 * t["spikes"]}
    assert set(rep2.per_stage) == {"enc", "dec"}


def test_profiles_have_sources_and_errors_are_clear(tmp_path):
    loihi = load_profile("loihi")
    assert loihi.energy_pj["sop"] == 23.6 and loihi.time_ns["sop"] == 3.5
    assert "Davies" in loihi.sources["sop"]
    assert load_profile("cmos45nm").energy_pj["mac"] == 4.6
    with pytest.raises(SpkdiffError, match="unknown energy profile"):
        load_profile("tpu9000")
    bad = tmp_path / "bad.yaml"
    bad.write_text("energy_pj: {flops: 1}\n")
    with pytest.raises(SpkdiffError, match="unknown operations"):
        load_profile(bad)


# --------------------------------------------------------------------------------------------------
# chip mapping
# --------------------------------------------------------------------------------------------------


def test_mapping_respects_limits_and_counts_cores():
    w = np.random.default_rng(1).normal(size=(8, 2, 3, 3))
    g = _conv_graph(w, (10, 10))  # 8 x 10 x 10 = 800 IF neurons, <= 18 synapses each
    limits = ChipLimits(cores_per_chip=4, compartments_per_core=64, synapse_memory_bytes=1000, synapse_bits=8)
    m = map_to_chip(g, limits)
    assert sum(c.compartments for c in m.cores) == 800
    assert all(c.compartments <= 64 and c.synapse_bytes(8) <= 1000 for c in m.cores)
    fan_in = Simulator(g).ops["conv"].fan_in().numpy().reshape(-1)
    assert sum(c.synapses for c in m.cores) == fan_in.sum()
    assert m.n_cores >= max(800 / 64, fan_in.sum() / 1000)
    assert m.n_chips == -(-m.n_cores // 4)
    assert m.folded == {"conv": "if"}
    # cores are contiguous and cover the layer
    assert [(c.start, c.stop) for c in m.cores][0][0] == 0 and m.cores[-1].stop == 800
    with pytest.raises(SpkdiffError, match="more than a core"):
        map_to_chip(g, ChipLimits(synapse_memory_bytes=10))


def test_mapping_latency_is_busiest_core_sops_times_time_per_op():
    sim = Simulator(_mlp(n_in=6, n_hid=5, n_out=3))
    x = (torch.rand(5, 2, 6) > 0.4).float()  # spiking input: every layer counts SOPs
    res = sim.run(x, per_neuron=True)
    limits = ChipLimits(compartments_per_core=2)
    m = map_to_chip(sim, limits, counters=res.counters)
    assert m.latency_exact
    assert [len(v) for v in m.layers.values()] == [3, 2]  # lif1: 5 neurons -> 3 cores, lif2: 3 -> 2
    lc = res.counters.layers["fc1"]
    per_neuron = lc.incoming_sops.reshape(5, -1) / 2  # batch mean
    core0 = per_neuron[:, 0:2].sum(1)
    assert np.allclose(m.cores[0].sops_per_step, core0)
    busiest = np.max([c.sops_per_step for c in m.cores], axis=0)
    assert np.allclose(m.latency_per_step_s, busiest * 3.5e-9)
    # without per-neuron counts the estimate spreads layer SOPs over cores by synapse share
    m2 = map_to_chip(sim, limits, counters=sim.run(x).counters)
    assert not m2.latency_exact
    total = sum(c.sops_per_step for c in m2.cores)
    assert np.allclose(total, res.counters.layers["fc1"].sops.mean(1) + res.counters.layers["fc2"].sops.mean(1))
