"""Energy profiles (loading, one-line errors), active/inactive neuron updates, NeuroBench-named metrics
(by hand, and against NeuroBench's own SynapticOperations where it is installed)."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from spkdiff.errors import SpkdiffError
from spkdiff.simulator import ChipLimits, Simulator, energy, load_profile
from spkdiff.simulator.counters import ARRAY_KEYS, Counters, CountsLog, NeuroBenchMetrics
from spkdiff.simulator.energy import sop_time_ns


def _ones(shape, v=1.0):
    return np.full(shape, v, dtype=np.float32)


def _neuron_graph(node: nir.NIRNode) -> nir.NIRGraph:
    return nir.NIRGraph(nodes={"in": nir.Input(np.array([1])), "n": node, "out": nir.Output(np.array([1]))},
                        edges=[("in", "n"), ("n", "out")], type_check=False)


def _lif(shape, tau=2.0):
    return nir.LIF(tau=_ones(shape, tau), r=_ones(shape), v_leak=_ones(shape, 0), v_threshold=_ones(shape),
                   v_reset=_ones(shape, 0))


X = torch.tensor([0.0, 0.5, 0.0, 0.7, 0.0]).reshape(5, 1, 1)


def test_active_updates_by_hand():
    """IF: v = 0, .5, .5, 1.2 -> spike -> 0, 0: active at the two input steps only (a held state is inactive).
    LIF (tau 2): v = 0, .25, .125 (decays: active), .4125, .20625: active from the first input on."""
    if_node = nir.IF(r=_ones((1,)), v_threshold=_ones((1,)), v_reset=_ones((1,), 0))
    c = Simulator(_neuron_graph(if_node)).run(X).counters.layers["n"]
    assert c.active_updates[:, 0].tolist() == [0, 1, 0, 1, 0]
    assert c.spikes[:, 0].tolist() == [0, 0, 0, 1, 0] and c.neuron_updates.sum() == 5
    c = Simulator(_neuron_graph(_lif((1,)))).run(X).counters.layers["n"]
    assert c.active_updates[:, 0].tolist() == [0, 1, 1, 1, 1]
    nb = NeuroBenchMetrics.of(Simulator(_neuron_graph(if_node)).run(X).counters)
    assert nb.MembraneUpdates == 1 + 2  # every neuron at the first step, then the changed ones
    assert nb.ActivationSparsity == pytest.approx(1 - 1 / 5)
    calls = Simulator(_neuron_graph(if_node)).run(torch.cat([X, X])).counters
    assert NeuroBenchMetrics.of(calls, steps_per_call=5).MembraneUpdates == 2 * (1 + 2)  # each call starts at rest


def test_neuron_updates_priced_by_state(tmp_path):
    if_node = nir.IF(r=_ones((1,)), v_threshold=_ones((1,)), v_reset=_ones((1,), 0))
    ctr = Simulator(_neuron_graph(if_node)).run(X).counters
    p = tmp_path / "chip.yaml"
    p.write_text("energy_pj: {neuron_update_active: 81, neuron_update_inactive: 52, spike: 2}\n")
    rep = energy(ctr, p, "cmos45nm")
    assert rep.per_op["neuron_update_active"] == pytest.approx(2 * 81e-12)
    assert rep.per_op["neuron_update_inactive"] == pytest.approx(3 * 52e-12)
    assert rep.total_j == pytest.approx((2 * 81 + 3 * 52 + 1 * 2) * 1e-12)
    flat = tmp_path / "flat.yaml"
    flat.write_text("energy_pj: {neuron_update: 10}\n")
    assert energy(ctr, flat, "cmos45nm").total_j == pytest.approx(5 * 10e-12)


def test_bundled_profiles_cite_their_numbers():
    loihi = load_profile("loihi")
    assert loihi.energy_pj["sop"] == 23.6 and loihi.energy_pj["neuron_update_active"] == 81.0
    assert loihi.energy_pj["neuron_update_inactive"] == 52.0 and loihi.energy_pj["spike"] == 1.7
    assert sop_time_ns("loihi") == 3.5 == ChipLimits().time_per_sop_ns
    assert all(k in loihi.sources for k in loihi.energy_pj) and loihi.leaves_out
    cmos = load_profile("cmos45nm")
    assert (cmos.energy_pj["mac"], cmos.energy_pj["add"]) == (4.6, 0.9)


@pytest.mark.parametrize("body, field", [
    ("energy_pj: {sop: fast}\n", "energy_pj.sop"),
    ("energy_pj: {sop: -1}\n", "energy_pj.sop"),
    ("energy_pj: {teleport: 1}\n", "energy_pj.teleport"),
    ("energy_pj: {sop: 1}\ntime_ns: {sop: 0}\n", "time_ns.sop"),
    ("energy_pj: {sop: 1}\ncolour: red\n", "colour"),
    ("energy_pj: {neuron_update_active: 81}\n", "energy_pj"),
    ("name: x\n", "energy_pj"),
    ("energy_pj: {sop: 1\n  mac: [\n", "YAML"),
])
def test_malformed_profile_is_one_line_naming_file_and_field(tmp_path, body, field):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(SpkdiffError) as err:
        load_profile(p)
    msg = str(err.value)
    assert "\n" not in msg and str(p) in msg and field in msg


def test_profile_time_drives_mapping_latency(tmp_path):
    p = tmp_path / "slow.yaml"
    p.write_text("energy_pj: {sop: 1}\ntime_ns: {sop: 7}\n")
    assert ChipLimits(time_per_sop_ns=sop_time_ns(p)).time_per_sop_ns == 7.0
    with pytest.raises(SpkdiffError, match="time_ns.sop"):
        sop_time_ns("cmos45nm")


def _conv(w: np.ndarray, hw: tuple[int, int]) -> nir.Conv2d:
    return nir.Conv2d(input_shape=hw, weight=w.astype(np.float32), stride=1, padding=1, dilation=1, groups=1,
                      bias=np.zeros(w.shape[0], np.float32))


def _two_layer_net(seed: int = 0) -> tuple[nir.NIRGraph, np.ndarray, np.ndarray]:
    """conv(1->2) -> LIF -> conv(2->3) -> IF read-out, on 5x5, with some zero weights."""
    g = np.random.default_rng(seed)
    w1 = g.normal(size=(2, 1, 3, 3)) * (g.random((2, 1, 3, 3)) > 0.3) + 0.3
    w2 = g.normal(size=(3, 2, 3, 3)) * (g.random((3, 2, 3, 3)) > 0.3)
    s = (2, 5, 5)
    nodes = {"in": nir.Input(np.array([1, 5, 5])), "c1": _conv(w1, (5, 5)), "l1": _lif(s),
             "c2": _conv(w2, (5, 5)), "ro": nir.IF(r=_ones((3, 5, 5)), v_threshold=_ones((3, 5, 5), 1e9),
                                                   v_reset=_ones((3, 5, 5), 0)),
             "out": nir.Output(np.array([3, 5, 5]))}
    edges = [("in", "c1"), ("c1", "l1"), ("l1", "c2"), ("c2", "ro"), ("ro", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), w1, w2


def _graded_input(steps: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(steps, batch, 1, 5, 5, generator=g) * 3
    return x * (torch.rand(x.shape, generator=g) > 0.4)  # analog, with zeros


def test_neurobench_synaptic_ops_by_hand():
    """Effective_MACs: non-zero analog inputs x non-zero weights reaching an output; Effective_ACs: spikes x
    non-zero fan-out; both per sample, bias not counted (NeuroBench's SynapticOperations)."""
    graph, w1, w2 = _two_layer_net()
    x = _graded_input(4, 3)
    res = Simulator(graph).run(x, record=["l1"])
    spikes = res.recordings["l1"]["out"]
    ones = torch.nn.functional.conv2d
    b1 = torch.from_numpy((w1 != 0).astype(np.float32))
    b2 = torch.from_numpy((w2 != 0).astype(np.float32))
    macs = ones((x != 0).float().flatten(0, 1), b1, padding=1).sum() / 3
    acs = ones(spikes.flatten(0, 1), b2, padding=1).sum() / 3
    nb = NeuroBenchMetrics.of(res.counters)
    assert nb.Effective_MACs == pytest.approx(float(macs))
    assert nb.Effective_ACs == pytest.approx(float(acs))
    # over every spiking layer: l1 (2x5x5) and the read-out IF (3x5x5, threshold too high to fire)
    assert nb.ActivationSparsity == pytest.approx(1 - float(spikes.sum()) / ((50 + 75) * 4 * 3))


@pytest.mark.parametrize("capacity_runs", [1, 2, 5])
def test_counts_log_equals_concatenated_runs_and_keeps_none_of_them(capacity_runs):
    """A sampler's calls logged one by one give what concatenating them in time gives (also when the log
    outgrows its capacity), and the log holds no run's arrays once a run is appended (kept runs fragmented the
    heap: resident memory grew with every denoiser call)."""
    import gc
    import weakref

    graph, _, _ = _two_layer_net()
    sim = Simulator(graph)
    runs = [sim.run(_graded_input(4, 3) * (1 + i)).counters for i in range(5)]
    log = CountsLog(capacity_runs)
    for run in runs:
        log.append(run)
    want, got = Counters.concat(runs, axis=0, ann_scale=len(runs)), log.counters()
    assert (got.steps, got.batch, got.ann_macs, got.ann_adds) == (want.steps, want.batch, want.ann_macs, want.ann_adds)
    for name, lc in want.layers.items():
        for key in ARRAY_KEYS:
            np.testing.assert_array_equal(getattr(got.layers[name], key), getattr(lc, key))
        assert got.layers[name].synapses == lc.synapses and got.layers[name].spiking == lc.spiking
    assert got.totals() == want.totals()

    fresh = sim.run(_graded_input(4, 3)).counters
    watched = weakref.ref(fresh.layers["c1"].sops)
    log.append(fresh)
    del fresh
    gc.collect()
    assert watched() is None
    with pytest.raises(ValueError, match="batch 2"):
        log.append(sim.run(_graded_input(4, 2)).counters)


def test_neurobench_matches_neurobench_itself():
    """The same counts from NeuroBench 2.3's SynapticOperations, fed the simulator's spikes step by step."""
    pytest.importorskip("snntorch")
    wl = pytest.importorskip("neurobench.metrics.workload")
    from neurobench.models import SNNTorchModel

    graph, w1, w2 = _two_layer_net()
    x = _graded_input(4, 3)
    res = Simulator(graph).run(x, record=["l1"])
    spikes = res.recordings["l1"]["out"]

    class Replay(torch.nn.Module):  # the simulator's hidden spikes at each step (the neuron model is ours)
        def __init__(self) -> None:
            super().__init__()
            self.t = 0

        def forward(self, _: torch.Tensor) -> torch.Tensor:
            self.t += 1
            return spikes[self.t - 1]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 2, 3, padding=1)
            self.c2 = torch.nn.Conv2d(2, 3, 3, padding=1)
            self.replay = Replay()
            with torch.no_grad():
                self.c1.weight.copy_(torch.from_numpy(w1))
                self.c2.weight.copy_(torch.from_numpy(w2))

        def reset(self) -> None:
            self.replay.t = 0

        def forward(self, xt: torch.Tensor) -> tuple[torch.Tensor, None]:
            return self.c2(self.replay(self.c1(xt))), None

    model = SNNTorchModel(Net())
    model.register_hooks()
    data = x.transpose(0, 1)  # NeuroBench: (batch, time, ...)
    preds = model(data)
    ops = wl.SynapticOperations()(model, preds, (data, torch.zeros(3)))
    nb = NeuroBenchMetrics.of(res.counters)
    assert nb.Effective_ACs == pytest.approx(ops["Effective_ACs"])
    assert nb.Effective_MACs == pytest.approx(ops["Effective_MACs"])


def test_residual_skip_costs_one_sop_per_spike_and_no_populations():
    """lif_a feeds lif_c directly and through conv_b -> lif_b -> conv_c: on the chip the skip is a synapse with a
    one-step delay (no relay population), so the report counts one SOP per lif_a spike into lif_c and no neuron
    layer beyond the network's; the plan agrees."""
    from spkdiff.neuromorphic.chip_plan import build_plan

    s = (2, 4, 4)
    g = np.random.default_rng(3)
    w = lambda: g.normal(size=(2, 2, 3, 3)) + 0.4  # noqa: E731
    nodes = {"in": nir.Input(np.array(list(s))), "ca": _conv(w(), (4, 4)), "la": _lif(s), "cb": _conv(w(), (4, 4)),
             "lb": _lif(s), "cc": _conv(w(), (4, 4)), "lc": _lif(s), "out": nir.Output(np.array(list(s)))}
    edges = [("in", "ca"), ("ca", "la"), ("la", "cb"), ("cb", "lb"), ("lb", "cc"), ("cc", "lc"), ("la", "lc"),
             ("lc", "out")]
    sim = Simulator(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    ctr = sim.run((torch.rand(3, 2, *s, generator=torch.Generator().manual_seed(0)) < 0.5).float()).counters
    plan = build_plan(sim, 3)
    assert set(plan.populations) == {"la", "lb", "lc"}
    assert {(c.src, c.delay) for c in plan.connections if c.dst == "lc"} == {("lb", 0), ("la", 1)}
    la, lc = ctr.layers["la"], ctr.layers["lc"]
    assert la.spikes.sum() > 0 and {layer.nir_type for layer in ctr.layers.values()} == {"Conv2d", "LIF"}
    # lc's synaptic input: the conv's SOPs are counted at cc; the skip's, one per lif_a spike, at lc
    np.testing.assert_array_equal(lc.sops, la.spikes)
