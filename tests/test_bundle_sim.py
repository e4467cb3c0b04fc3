"""Lava bundle (export, load, bad bundles) and the simulator's generative loop (float, fixed, report, CLI)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from spkdiff.cli import main
from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic.bundle import BUNDLE_VERSION, BundleError, load_bundle


@pytest.fixture(scope="module")
def bundle_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    assert main(["export", "--run", str(tiny_run), "--target", "lava", "--out", str(out)]) == 0
    return out


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle_dir, dst)
    return dst


def test_bundle_round_trip(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    m = b.manifest
    assert m["target"] == "lava" and m["bundle_version"] == BUNDLE_VERSION
    assert "lava-nc" in m["versions"] and set(m["lava"]["netx"]["per_stage"]) == {"encoder", "generator", "sdid"}
    assert b.stages == ["encoder", "generator", "sdid"]
    assert b.codebook.shape == tuple(m["host"]["codebook_lookup"]["codebook_shape"])
    for stage, graph in b.graphs.items():
        neurons = {n for n, node in graph.nodes.items() if isinstance(node, nir.LIF | nir.LI | nir.I)}
        assert set(b.loihi[stage]) == neurons
    layer = b.loihi["encoder"]["enc1_lif"]
    assert layer.method == "quantize_layer" and layer.bias_mant.shape == layer.bias_exp.shape
    assert layer.synapses["enc1_conv"].weight_int.shape == b.graphs["encoder"].nodes["enc1_conv"].weight.shape
    # residual sums: joint quantisation with a direct spike edge
    res = b.loihi["sdid"]["block0_b_lif"]
    assert res.method == "joint" and "stem_lif" in res.direct
    assert b.loihi["sdid"]["readout_i"].spiking is False


def test_bad_bundles(bundle_dir: Path, tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _copy(bundle_dir, tmp_path)
    with open(bad / "sdid.nir", "r+b") as fh:  # flip one byte
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)
    assert main(["sim", "--bundle", str(bad), "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256" in err and len(err.splitlines()) == 1

    missing = _copy(bundle_dir, tmp_path / "m")
    (missing / "generator.loihi.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(missing)

    other = _copy(bundle_dir, tmp_path / "v")
    man = json.loads((other / "manifest.json").read_text())
    man["bundle_version"] = BUNDLE_VERSION + 1
    (other / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="version"):
        load_bundle(other)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    nir_out = tmp_path / "nir"
    assert main(["export", "--run", str(tiny_run), "--target", "nir", "--out", str(nir_out)]) == 0
    with pytest.raises(BundleError, match="--target lava"):
        load_bundle(nir_out)


def test_out_of_range_layer_is_one_error() -> None:
    from spkdiff.export.lava_target import quantize_stage

    w = np.array([[np.inf, 1.0]], dtype=np.float32)
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([2])}),
               "fc": nir.Affine(weight=w, bias=np.zeros(1, np.float32)),
               "lif": nir.LIF(tau=np.full(1, 2.0), r=np.ones(1), v_leak=np.zeros(1), v_threshold=np.ones(1),
                              v_reset=np.zeros(1)),
               "output": nir.Output(output_type={"output": np.array([1])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    with pytest.raises(SpkdiffError, match="does not fit Loihi") as info:
        quantize_stage(graph, 4, "toy")
    assert "\n" not in str(info.value)


def _hand_lif(spikes: list[list[list[int]]], w_int: list[list[int]], weight_exp: int, bias: list[int], dv: int,
              vth: int) -> tuple[list, list]:
    """Loihi's dense synapse + LIF (du = 4095: u = a << 6) in plain Python integers, from its equations."""
    out, volts = [], []
    v = [[0] * len(w_int) for _ in spikes[0]]
    for s_t in spikes:
        out.append([]), volts.append([])
        for b_i, s in enumerate(s_t):
            row_s, row_v = [], []
            for j, w_row in enumerate(w_int):
                a = sum(w * x for w, x in zip(w_row, s)) << weight_exp
                decayed = v[b_i][j] * (4096 - dv)
                decayed = (abs(decayed) >> 12) * (1 if decayed >= 0 else -1)
                vj = max(-(2**23 - 1), min(2**23 - 1, decayed + (a << 6) + bias[j]))
                spike = vj > vth << 6
                v[b_i][j] = 0 if spike else vj
                row_s.append(float(spike)), row_v.append(v[b_i][j])
            out[-1].append(row_s), volts[-1].append(row_v)
    return out, volts


def test_sim_fixed_runs_hand_quantized_integers() -> None:
    """Export's integers for a tiny layer, derived by hand from the documented mapping, and the fixed-mode
    simulator fed those integers, against a plain-integer LIF."""
    from spkdiff.export.lava_target import quantize_stage
    from spkdiff.simulator import Simulator

    w = np.array([[0.5, -0.25, 1.0], [0.25, 0.25, 0.25]], np.float32)
    o = np.ones(2, np.float32)
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([3])}),
               "fc": nir.Affine(weight=w, bias=np.array([0.0, 0.125], np.float32)),
               "lif": nir.LIF(tau=2 * o, r=o, v_leak=0 * o, v_threshold=o, v_reset=0 * o),
               "output": nir.Output(output_type={"output": np.array([2])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    # W / (tau v_th) = [[.25, -.125, .5], [.125] * 3]: MIXED signs (k = 1), unit = min(127 / .5, 128 / .125) = 254;
    # per step 0.875 thresholds, headroom 0.875 * 2 + 1 = 2.75 -> vth <= (2**23 - 1) // (64 * 2.75) = 47662;
    # e = 7 would need vth = 254 * 2**8 > 47662, so e = 6, vth = 254 * 2**7 = 32512, m = round(254 * Wn);
    # bias 0.0625 * 64 * 32512 = 130048 = 4064 << 5
    q = quantize_stage(graph, 4)["lif"]
    assert (q.method, q.du, q.dv, q.vth, q.scale) == ("quantize_layer", 4095, 2048, 32512, 64 * 32512)
    syn = q.synapses["fc"]
    assert syn.weight_exp == 6 and syn.weight_int.tolist() == [[128, -64, 254], [64, 64, 64]]
    assert q.bias_mant.tolist() == [0, 4064] and q.bias_exp.tolist() == [0, 5]

    spikes = (torch.rand(12, 2, 3, generator=torch.Generator().manual_seed(3)) > 0.4).float()
    res = Simulator(graph, mode="fixed", quant={"lif": q}).run(spikes, record=["lif"])
    hand_s, hand_v = _hand_lif(spikes.int().tolist(), syn.weight_int.tolist(), 6, [0, 4064 << 5], 2048, 32512)
    assert res.outputs["output"].tolist() == hand_s and res.recordings["lif"]["v_int"].tolist() == hand_v
    assert 0 < res.outputs["output"].sum() < res.outputs["output"].numel()
    # the simulator runs the integers it is given, not its own: a lower vth spikes more, as by hand
    low = dataclasses.replace(q, vth=20000)
    s_low = Simulator(graph, mode="fixed", quant={"lif": low}).run(spikes).outputs["output"]
    hand_low, _ = _hand_lif(spikes.int().tolist(), syn.weight_int.tolist(), 6, [0, 4064 << 5], 2048, 20000)
    assert s_low.tolist() == hand_low and s_low.sum() > res.outputs["output"].sum()


def test_sim_float_tokens_equal_torch(bundle_dir: Path, tiny_run: Path) -> None:
    from spkdiff.generation import SamplerSettings
    from spkdiff.simulator.generate import generate
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import generate_images

    gen = generate(bundle_dir, 6, seed=5, batch_size=4)
    vq, sdid = load_stage(tiny_run, "vqsvae"), load_stage(tiny_run, "sdid")
    settings = SamplerSettings(gen.settings["method"], gen.settings["steps"], gen.settings["temperature"])
    images, tokens, stats = generate_images(vq, sdid, 6, settings, seed=5, batch_size=4)
    assert torch.equal(gen.tokens, tokens)
    assert gen.denoiser_calls == stats.denoiser_calls and gen.snn_steps == stats.snn_steps
    assert torch.allclose(gen.images, images, atol=1e-4)
    other = generate(bundle_dir, 6, seed=6, batch_size=4)
    assert not torch.equal(other.tokens, gen.tokens)  # the seed matters


def test_sim_float_tokens_equal_torch_with_remasking(bundle_dir: Path, tiny_run: Path) -> None:
    """The remasking sampler is the host's, so the simulator's tokens equal torch's with it too, and it is in
    the report's settings."""
    from spkdiff.generation import SamplerSettings
    from spkdiff.simulator.generate import generate
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import generate_images

    gen = generate(bundle_dir, 4, method="paper", steps=6, remask=0.3, seed=2, batch_size=4)
    vq, sdid = load_stage(tiny_run, "vqsvae"), load_stage(tiny_run, "sdid")
    _, tokens, _ = generate_images(vq, sdid, 4, SamplerSettings("paper", 6, gen.settings["temperature"], 0.3),
                                   seed=2, batch_size=4)
    assert gen.settings["remask"] == 0.3 and torch.equal(gen.tokens, tokens)
    plain = generate(bundle_dir, 4, method="paper", steps=6, seed=2, batch_size=4)
    assert not torch.equal(plain.tokens, gen.tokens)


def test_sim_fixed_uses_bundle_integers(bundle_dir: Path) -> None:
    from spkdiff.simulator.generate import generate

    gen = generate(bundle_dir, 4, fixed=True, seed=1, batch_size=4)
    assert gen.images.shape[0] == 4 and gen.images.min() >= 0 and gen.images.max() <= 1
    assert torch.isfinite(gen.images).all()
    assert gen.tokens.min() >= 0 and gen.tokens.max() < load_bundle(bundle_dir).sampler["num_codes"]
    again = generate(bundle_dir, 4, fixed=True, seed=1, batch_size=4)
    assert torch.equal(again.tokens, gen.tokens) and torch.equal(again.images, gen.images)
    # change the bundle's read-out bias in memory: the simulator must run the bundle's integers, not its own
    from spkdiff.simulator.generate import SimulatorPipeline

    b = load_bundle(bundle_dir)
    tokens = torch.full((2, *b.sampler["grid"]), b.sampler["num_codes"])
    t = torch.tensor([b.sampler["diffusion_steps"]] * 2)
    before = SimulatorPipeline.from_bundle(b, fixed=True).denoise(tokens, t)
    readout = b.loihi["sdid"]["readout_i"]
    readout.bias_mant[0] = 4095  # the largest bias for code 0
    readout.bias_exp[0] = 7
    after = SimulatorPipeline.from_bundle(b, fixed=True).denoise(tokens, t)
    assert (after[:, 0] > before[:, 0]).all() and torch.equal(after[:, 1:], before[:, 1:])
    assert not torch.equal(generate(b, 4, fixed=True, seed=1, batch_size=4).tokens, gen.tokens)


def test_a_call_over_the_memory_budget_runs_in_chunks_with_the_same_results(
        bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose simulator calls exceed the memory budget runs them one image at a time: the images, tokens
    and every per-layer count are those of one call over the whole batch."""
    from spkdiff.generation import ReconstructionConstants
    from spkdiff.simulator import generate as sim_generate
    from spkdiff.simulator.counters import ARRAY_KEYS

    b = load_bundle(bundle_dir)
    assert all(sim_generate.images_per_call(sim_generate.stage_simulator(b, st, True), b.time_steps(st)) >= 4
               for st in ("encoder", "sdid", "generator"))  # the tiny graphs fit whole batches by default
    shape = ReconstructionConstants.from_bundle(b).image_shape
    images = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0))
    whole_gen = sim_generate.generate(b, 4, fixed=True, seed=3, batch_size=4)
    whole_rec = sim_generate.reconstruct(b, images, fixed=True, batch_size=4)
    monkeypatch.setattr(sim_generate, "MEMORY_BUDGET_BYTES", 1)  # every call over budget: one image per chunk
    assert sim_generate.images_per_call(sim_generate.stage_simulator(b, "generator", True), 8) == 1
    chunked_gen = sim_generate.generate(b, 4, fixed=True, seed=3, batch_size=4)
    chunked_rec = sim_generate.reconstruct(b, images, fixed=True, batch_size=4)
    for whole, chunked in ((whole_gen, chunked_gen), (whole_rec, chunked_rec)):
        assert torch.equal(whole.images, chunked.images) and torch.equal(whole.tokens, chunked.tokens)
        assert whole.counters.keys() == chunked.counters.keys()
        for stage, counts in whole.counters.items():
            other = chunked.counters[stage]
            assert (counts.steps, counts.batch) == (other.steps, other.batch)
            for name, layer in counts.layers.items():
                assert all(np.array_equal(getattr(layer, k), getattr(other.layers[name], k)) for k in ARRAY_KEYS)


def test_ann_equivalent_counts_the_layers_own_macs(bundle_dir: Path, tiny_run: Path) -> None:
    """The ANN equivalent of each exported stage costs the torch layers' dense MACs in float and fixed mode: the
    zero taps of the exact ConvTranspose lowering are not MACs of an ANN running the ConvTranspose itself."""
    from spkdiff.simulator.generate import stage_simulator
    from spkdiff.train.loop import load_stage

    b = load_bundle(bundle_dir)
    vq, sdid = load_stage(tiny_run, "vqsvae"), load_stage(tiny_run, "sdid")
    lowered = b.graphs["generator"].nodes.values()  # it does hold zero taps, so a dense count would differ
    assert any((np.asarray(n.weight) == 0).mean() > 0.3 for n in lowered if isinstance(n, nir.Conv2d))
    for fixed in (False, True):
        assert stage_simulator(b, "generator", fixed).ann_macs == pytest.approx(vq.generator_dense_macs())
        assert stage_simulator(b, "sdid", fixed).ann_macs == pytest.approx(sdid.dense_macs())


def test_sim_report_cli(bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["sim", "--bundle", str(bundle_dir), "--n", "3", "--batch-size", "2", "--report", str(out)]) == 0
    for name in ("samples.png", "tokens.npy", "report.json", "report.md", "sops_per_layer.png", "firing_rates.png",
                 "energy.png"):
        assert (out / name).stat().st_size > 0, name
    rep = json.loads((out / "report.json").read_text())
    sdid = rep["stages"]["sdid"]
    assert sdid["per_image"]["sops"] > 0 and sdid["per_image"]["neuron_updates"] > 0
    assert sdid["time_steps_per_image"] == rep["throughput"]["denoiser_calls_per_image"] * load_bundle(
        bundle_dir).time_steps("sdid")
    e = rep["energy_per_image"]
    # energy = counts x profile (loihi: 23.6 pJ/SOP, 81 pJ per active and 52 pJ per inactive update; cmos45nm:
    # 4.6 pJ/MAC)
    active, updates = sdid["per_image"]["active_updates"], sdid["per_image"]["neuron_updates"]
    assert e["per_stage_j"]["sdid"]["sop"] == pytest.approx(sdid["per_image"]["sops"] * 23.6e-12)
    assert e["per_stage_j"]["sdid"]["neuron_update_active"] == pytest.approx(active * 81e-12)
    assert e["per_stage_j"]["sdid"].get("neuron_update_inactive", 0.0) == pytest.approx((updates - active) * 52e-12)
    assert e["ann_j"]["sdid"] == pytest.approx(sdid["per_image"]["ann_macs"] * 4.6e-12)
    assert sum(r["sops"] for r in sdid["layers"]) == pytest.approx(sdid["per_image"]["sops"])
    assert rep["stages"]["generator"]["mapping"]["cores"] >= 1
    assert np.load(out / "tokens.npy").shape == (3, 7, 7)


def test_eval_on_the_simulator_reports_each_images_energy(tiny_run: Path, bundle_dir: Path, tmp_path: Path,
                                                          shared_data_root: Path) -> None:
    """``spkdiff eval --backend sim-fixed`` puts the energy per generated image beside the quality metrics, the
    same numbers as ``spkdiff sim --fixed --report`` prices for the same images."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["eval", "--run", str(run), "--backend", "sim-fixed", "--bundle", str(bundle_dir), "--metrics", "cfd",
                 "--n", "3", "--batch-size", "2", "--data-root", str(shared_data_root)]) == 0
    row = json.loads((run / "metrics.json").read_text())["rows"][-1]
    out = tmp_path / "report"
    assert main(["sim", "--bundle", str(bundle_dir), "--n", "3", "--batch-size", "2", "--fixed", "--report",
                 str(out)]) == 0
    e = json.loads((out / "report.json").read_text())["energy_per_image"]
    assert row["energy_mj_per_image_loihi"] == pytest.approx(e["total_j"] * 1e3, rel=1e-9)
    assert row["energy_mj_per_image_ann_cmos45nm"] == pytest.approx(e["ann_total_j"] * 1e3, rel=1e-9)
    assert row["energy_mj_per_image_papers_convention"] == pytest.approx(e["papers_convention"]["snn_j"] * 1e3)
    assert 0 < row["energy_mj_per_image_papers_convention"] < row["energy_mj_per_image_loihi"]


def test_sample_cli_sim_backend(bundle_dir: Path, tmp_path: Path) -> None:
    from spkdiff.simulator.generate import generate

    out = tmp_path / "s.png"
    assert main(["sample", "--bundle", str(bundle_dir), "--backend", "sim", "--n", "3", "--seed", "2",
                 "--batch-size", "2", "--out", str(out)]) == 0
    tokens = np.load(out.with_suffix(".tokens.npy"))
    expected = generate(bundle_dir, 3, seed=2, batch_size=2, count=False).tokens
    assert np.array_equal(tokens, expected.numpy())
