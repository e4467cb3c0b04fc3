"""The generative loop as one Lava run vs the simulator: fixed_pt bit for bit, floating_pt within 1e-5, clean kills.

The tiny model barely spikes after its short training, so the comparisons use an *activated* copy of its
SDID and generator graphs (conv weights scaled up) in which every spiking layer fires: then tokens and
read-outs can only agree if Lava's per-connection delays are compensated exactly.
"""

from __future__ import annotations

import copy
import dataclasses

import nir
import numpy as np
import pytest
import torch
from lava_reference import count_process_runs

from spkdiff.generation import SamplerSettings, generate
from spkdiff.host import sdid_input_spikes
from spkdiff.neuromorphic.chip_plan import build_plan
from spkdiff.neuromorphic.lava_generate import Stages, Timeline, lava_job, load_stages
from spkdiff.neuromorphic.lava_runner import LavaTimeoutError, group_members, run_isolated
from spkdiff.simulator import Simulator

pytestmark = pytest.mark.timeout(600)  # includes building the tiny run on a loaded machine


def _scaled(graph: nir.NIRGraph, gain: float, bias: float | None) -> nir.NIRGraph:
    g = copy.deepcopy(graph)
    for node in g.nodes.values():
        if isinstance(node, nir.Conv2d):
            node.weight = (node.weight * gain).astype(np.float32)
            if bias is not None:
                node.bias = np.full_like(node.bias, bias)
    return g


@pytest.fixture(scope="module")
def stages(tiny_export) -> Stages:
    """The tiny bundle with activated graphs, quantized afresh (``loihi=None``: not the bundle's integers)."""
    st = copy.copy(load_stages(tiny_export("lava")))
    st.sdid = _scaled(st.sdid, 4.0, None)
    st.generator = _scaled(st.generator, 64.0, 0.5)
    st.loihi = st.bundle = None
    return st


def simulator_reference(stages: Stages, n: int, steps: int, seed: int, fixed: bool,
                        record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same loop on the simulator backend: :mod:`spkdiff.generation` with the stages' simulators."""
    from spkdiff.simulator.generate import SimulatorPipeline

    sims = {k: stages.simulator(k, fixed) for k in ("sdid", "generator")}
    pipe = SimulatorPipeline(sims, stages.host, count=False, record=record)
    h = stages.host
    out = generate(pipe.denoise, pipe.decode, n, num_codes=h.num_codes, diffusion_steps=h.diffusion_steps,
                   grid=h.grid, settings=SamplerSettings("confidence", steps, 1.0), seed=seed)
    return out.images, out.tokens


def _rates(stages: Stages, graph: nir.NIRGraph, x: torch.Tensor, steps: int) -> dict[str, float]:
    sim = Simulator(graph, mode="fixed")
    res = sim.run({sim.flat.inputs[0]: x}, steps=steps, record=True, count=False)
    return {n: float(r["out"].mean()) for n, r in res.recordings.items()
            if sim.ops[n].kind == "neuron" and sim.ops[n].spiking}


def test_plan_delays(stages: Stages) -> None:
    """Each connection delays one step; the residual skip holds its spikes one step more in a synaptic delay,
    so both inputs of the sum align, and the plan has no population the network lacks."""
    plan = build_plan(Simulator(stages.sdid, mode="fixed"), stages.sdid_steps)
    d = {n: p.depth for n, p in plan.populations.items()}
    assert d == {"stem_lif": 2, "block0_a_lif": 3, "block0_b_lif": 4, "readout_i": 5}
    into_b = {c.src: (c.kind, c.delay) for c in plan.connections if c.dst == "block0_b_lif"}
    assert into_b == {"block0_a_lif": ("conv", 0), "stem_lif": ("diag", 1)}
    assert all(c.delay == 0 for c in plan.connections if c.dst != "block0_b_lif")
    assert plan.run_steps == 5 + stages.sdid_steps - 1
    gen = build_plan(Simulator(stages.generator, mode="fixed"), stages.gen_steps, graded_input=True)
    assert gen.input_kind == "current" and gen.populations[gen.input_target].depth == 1


def test_timeline_covers_every_step_once() -> None:
    """Per batch: S x B SDID calls (sampler step by step, image by image), then B generator calls."""
    tl = Timeline((3, 1), steps=2, sdid_len=6, gen_len=5)
    assert tl.total == 3 * (2 * 6 + 5) + 1 * (2 * 6 + 5) and tl.num_sdid_calls == 8
    calls = [tl.at(t) for t in range(1, tl.total + 1)]
    assert tl.at(0) is None and tl.at(tl.total + 1) is None and None not in calls
    starts = [(c.stage, c.batch, c.diffusion_step, c.image) for c in calls if c.step == 1]
    first = [("sdid", 0, i, b) for i in range(2) for b in range(3)] + [("generator", 0, 0, b) for b in range(3)]
    assert starts == first + [("sdid", 1, i, 0) for i in range(2)] + [("generator", 1, 0, 0)]
    for prev, cur in zip(calls, calls[1:]):  # each call runs its steps 1..len without gaps
        if cur.step != 1:
            assert cur.step == prev.step + 1 and (cur.stage, cur.image) == (prev.stage, prev.image)
        else:
            assert prev.step == (tl.sdid_len if prev.stage == "sdid" else tl.gen_len)


def test_host_processes_are_lava_processes_wired_by_ports(stages: Stages) -> None:
    """Sampler -> SDID, SDID read-out -> sampler (RefPort), sampler -> lookup -> ASG, read-out -> sink."""
    from lava.magma.core.process.process import AbstractProcess
    from lava.proc.conv.process import Conv
    from lava.proc.lif.process import LIF

    from spkdiff.neuromorphic.lava_generate import build_graph

    plans = {"sdid": build_plan(stages.simulator("sdid", True), stages.sdid_steps),
             "generator": build_plan(stages.simulator("generator", True), stages.gen_steps, graded_input=True)}
    g = build_graph(stages, plans, 2, SamplerSettings("confidence", 2, 1.0), 0, 256)
    assert all(isinstance(p, AbstractProcess) for p in g.host)
    sampler, lookup, sink = g.host
    assert {type(p.process) for p in sampler.spikes_out.get_dst_ports()} == {Conv}
    assert [p.process for p in sampler.tokens_out.get_dst_ports()] == [lookup]
    asg = g.generator.lifs[plans["generator"].input_target]
    assert [p.process for p in lookup.a_out.get_dst_ports()] == [asg]
    assert sink.v.get_dst_vars() == [g.generator.lifs[plans["generator"].readout].v]
    for proc, stage in ((sampler, g.sdid), (lookup, g.generator)):  # a RefPort to u and v of every population
        targets = {v for port in proc.ref_ports for v in port.get_dst_vars()}
        assert targets == {getattr(lif, var) for lif in stage.lifs.values() for var in ("u", "v")}
        assert all(isinstance(lif, LIF) for lif in stage.lifs.values())


def test_fixed_pt_bit_exact_in_one_run(stages: Stages) -> None:
    """One Lava run: tokens, images, every read-out and u, v of every SDID population after every call equal
    the fixed-mode simulator's (so the resets between calls and the host processes' timing are exact)."""
    gen = torch.Generator().manual_seed(0)
    h = stages.host
    tok = torch.randint(0, h.num_codes + 1, (2, *h.grid), generator=gen)
    x = sdid_input_spikes(tok, torch.tensor([49, 20]), h.num_codes, h.diffusion_steps, h.time_bins)
    assert all(r > 0.01 for r in _rates(stages, stages.sdid, x, stages.sdid_steps).values())
    rec: dict = {}
    ref_img, ref_tok = simulator_reference(stages, 2, steps=2, seed=3, fixed=True, record=rec)
    (img, tok, info), runs = run_isolated(count_process_runs, lava_job, stages, 2, 2, "confidence", 1.0, 3, True,
                                          256, True, timeout=280)
    plan = build_plan(stages.simulator("sdid", True), stages.sdid_steps)
    gen_plan = build_plan(stages.simulator("generator", True), stages.gen_steps, graded_input=True)
    planned = 2 * (2 * plan.run_steps + gen_plan.run_steps)  # 2 images: 2 sampler steps each, then the generator
    assert runs == ["mask_sampler"] and info["lava_steps"] == info["lava_steps_planned"] == planned
    assert torch.equal(torch.from_numpy(tok), ref_tok)
    assert torch.equal(torch.from_numpy(img), ref_img)
    for key in ("sdid", "generator"):
        assert len(info["raw"][key]) == len(rec[key]) > 0
        for got, want in zip(info["raw"][key], rec[key]):
            assert torch.equal(got, want)
    inputs = [x[b].numpy().tobytes() for x in rec["sdid_in"] for b in range(len(x))]  # per call and image
    assert len(info["raw"]["sdid_raw"]) == len(inputs) == 4
    assert len({a.tobytes() for a in info["raw"]["sdid_raw"]}) == len(set(inputs)) > 1  # calls differ as inputs do
    assert info["denoiser_calls"] == 2 and info["snn_steps"] == 2 * stages.sdid_steps + stages.gen_steps
    # u and v of every population at the end of each SDID call = the simulator at that population's step
    depth = {n: p.depth for n, p in plan.populations.items()}
    sim = stages.simulator("sdid", True)
    states = info["raw"]["states"]
    assert len(states) == 4
    checked = 0
    for c, state in enumerate(states):
        step, image = divmod(c, 2)
        x = rec["sdid_in"][step][image: image + 1]
        res = sim.run({sim.flat.inputs[0]: x}, steps=plan.run_steps - 1, record=True, count=False)
        for name, (u, v) in state.items():
            t = plan.run_steps - depth[name]
            assert np.array_equal(v, res.recordings[name]["v_int"][t, 0].numpy()), (c, name)
            assert np.array_equal(u, res.recordings[name]["u_int"][t, 0].numpy()), (c, name)
            checked += 1
    assert checked == 16 and any(np.any(v != 0) for _, v in states[-1].values())


def test_floating_pt_matches_float_simulator(stages: Stages) -> None:
    rec: dict = {}
    _, ref_tok = simulator_reference(stages, 1, steps=2, seed=1, fixed=False, record=rec)
    _, tok, info = run_isolated(lava_job, stages, 1, 2, "confidence", 1.0, 1, False, 256, True, timeout=280)
    for key in ("sdid", "generator"):
        for got, want in zip(info["raw"][key], rec[key]):  # Lava: float64; the simulator: float32 (rel. 6e-8)
            assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))
    assert torch.equal(torch.from_numpy(tok), ref_tok)


def test_killed_run_leaves_no_workers(stages: Stages) -> None:
    with pytest.raises(LavaTimeoutError) as err:
        run_isolated(lava_job, stages, 200, 49, "paper", 1.0, 0, True, 256, timeout=12)  # far longer than 12 s
    info = err.value.info
    assert info.timed_out and info.killed_pids  # Lava was running and was killed
    assert group_members(info.pgid) == []
    from pathlib import Path

    assert not any(Path("/dev/shm", name).exists() for name in info.unlinked_shm)


def test_lava_plan_reads_the_bundle_integers(tiny_run, tmp_path) -> None:
    """A bundle's Lava graph runs the bundle's integers as they are (read, never recomputed)."""
    pytest.importorskip("spkdiff.export.lava_target")
    from spkdiff.cli import export_main

    out = tmp_path / "bundle"
    assert export_main(["--run", str(tiny_run), "--target", "lava", "--out", str(out)]) == 0
    st = load_stages(out)
    exported = st.loihi["sdid"]["stem_lif"]
    for change in (0, 1):  # as exported, then a changed bundle: the plan follows it
        syn = dataclasses.replace(exported.synapses["stem_conv"],
                                  weight_int=exported.synapses["stem_conv"].weight_int + 2 * change)
        layer = dataclasses.replace(exported, vth=exported.vth + change,
                                    synapses={**exported.synapses, "stem_conv": syn})
        st.loihi["sdid"]["stem_lif"] = layer
        plan = build_plan(st.simulator("sdid", True), st.sdid_steps)
        pop = plan.populations["stem_lif"]
        assert pop.params["vth"] == layer.vth and np.array_equal(pop.params["bias_mant"], layer.bias_mant)
        conv = next(c for c in plan.connections if c.dst == "stem_lif")
        assert conv.synapse == "stem_conv" and np.array_equal(conv.weight, syn.weight_int << syn.weight_exp)

    # the CLI's Lava backend on the bundle equals the simulator backend (bundle integers) bit for bit
    from spkdiff.backends import sample_images
    from spkdiff.simulator.generate import generate as simulate

    images, tokens, info = sample_images("lava", bundle=out, n=1, steps=2, seed=5, fixed=True, timeout=240)
    ref = simulate(out, 1, fixed=True, steps=2, seed=5, count=False)
    assert torch.equal(tokens, ref.tokens) and torch.equal(images, ref.images)
    assert images.shape == (1, 1, 28, 28) and info["denoiser_calls"] == ref.denoiser_calls
