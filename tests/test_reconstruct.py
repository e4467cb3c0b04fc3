"""``spkdiff reconstruct``: encoder -> host codebook lookup (Eq 4-8) -> generator on torch, the simulator and Lava,
on 2 real MNIST test images.

The tiny run's encoder does not spike on real images after its short training (every token would be the same
code), so the comparisons use an *activated* copy of the run: the batch-norm scales of the encoder, ASG and
decoder times 4 (about 15-35 % of the encoder's neurons fire, 6 codes are used), exported as a bundle.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lava_reference import count_process_runs

from spkdiff.cli import export_main, main
from spkdiff.neuromorphic.lava_generate import reconstruct_job

pytestmark = pytest.mark.timeout(300)

GAIN = 4.0


@pytest.fixture(scope="module")
def active(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, bundle) of the activated tiny run."""
    from spkdiff.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("active")
    run = root / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tb"))
    ckpt = load_checkpoint(run / "vqsvae.safetensors")
    weights = {k: v * GAIN if k.startswith(("encoder.", "asg.", "decoder.")) and k.endswith(
        ("synapse.1.weight", "synapse.1.bias")) else v for k, v in ckpt.model.items()}
    save_checkpoint(run / "vqsvae.safetensors", model=weights, config=ckpt.config, stage="vqsvae",
                    position=ckpt.position)
    assert export_main(["--run", str(run), "--target", "lava", "--out", str(root / "bundle")]) == 0
    return run, root / "bundle"


@pytest.fixture(scope="module")
def images(shared_data_root: Path) -> torch.Tensor:
    from spkdiff.data import load_tensor

    return load_tensor("mnist", shared_data_root, "test", limit=2)[0]


@pytest.fixture(scope="module")
def sim_fixed(active, images):
    from spkdiff.simulator.generate import reconstruct

    record: dict = {}
    return reconstruct(active[1], images, fixed=True, record=record), record


def test_torch_sim_and_sim_fixed_tokens(active, images, sim_fixed) -> None:
    """Float simulator = torch, token for token and image for image (the same spikes, the same Eq 4-8 code);
    Loihi fixed point: a few of the 98 tokens may differ (0.9 % over 64 test images once): the encoder's integer
    potentials cross the threshold a step earlier or later than the float ones near it, and a changed spike moves
    z^E across the boundary between two codes."""
    from spkdiff.backends import reconstruct_images
    from spkdiff.simulator.generate import reconstruct

    run, bundle = active
    t_img, t_tok, _, _ = reconstruct_images("torch", images, run=str(run))
    sim = reconstruct(bundle, images, fixed=False, count=False)
    assert len(t_tok.unique()) > 2  # the encoder spikes: the tokens depend on the image
    assert torch.equal(sim.tokens, t_tok) and torch.equal(sim.images, t_img)
    fixed = sim_fixed[0]
    # quantisation moves a spike by a step now and then, and z^E onto a neighbouring code: a minority of tokens
    # (0-11 of 98 seen, depending on the tiny run); the integer generator shows the quantisation in every image
    assert int((fixed.tokens != t_tok).sum()) <= t_tok.numel() // 4
    assert not torch.equal(fixed.images, t_img)
    assert fixed.counters["encoder"].totals()["spikes"] > 100 and fixed.counters["generator"].totals()["spikes"] > 0


def test_lava_fixed_pt_bit_exact_in_one_run(active, images, sim_fixed) -> None:
    """One Lava graph, one run(): tokens, generator read-outs and images equal the fixed-mode simulator's; the
    lookup gets the encoder's spikes through an InPort from its last LIF; no worker is left behind."""
    from spkdiff.neuromorphic.lava_runner import group_members, run_isolated_info

    ref, record = sim_fixed
    ((img, tok, lava), runs), info = run_isolated_info(count_process_runs, reconstruct_job, str(active[1]),
                                                       images.numpy(), True, 256, True, timeout=240)
    assert runs == ["image_source"]
    assert torch.equal(torch.from_numpy(tok), ref.tokens) and len(ref.tokens.unique()) > 2
    assert torch.equal(torch.from_numpy(img), ref.images)
    want = torch.cat(record["generator"])
    assert len(lava["readouts"]) == len(want) == 2
    assert torch.equal(torch.stack(lava["readouts"]), want)
    assert group_members(info.pgid) == []


def test_lava_graph_wiring(active, images) -> None:
    """Encoder Conv + LIF fed by the image source; the encoder's last LIF s_out -> the lookup's InPort."""
    from lava.proc.conv.process import Conv
    from lava.proc.lif.process import LIF

    from spkdiff.generation import ReconstructionConstants
    from spkdiff.neuromorphic.bundle import load_bundle
    from spkdiff.neuromorphic.chip_plan import build_plan
    from spkdiff.neuromorphic.lava_generate import build_reconstruction_graph
    from spkdiff.simulator.generate import stage_simulator

    b = load_bundle(active[1])
    host = ReconstructionConstants.from_bundle(b)
    plans = {s: build_plan(stage_simulator(b, s, True), host.time_steps[s], graded_input=True)
             for s in ("encoder", "generator")}
    g = build_reconstruction_graph(host, plans, images.numpy(), 256)
    enc = plans["encoder"]
    assert all(isinstance(lif, LIF) for lif in g.encoder.lifs.values()) and len(g.encoder.lifs) == 3
    assert any(isinstance(c, Conv) for c in g.encoder.conns)
    assert [p.process for p in g.source.a_out.get_dst_ports()] == [g.encoder.lifs[enc.input_target]]
    assert [p.process for p in g.encoder.lifs[enc.readout].s_out.get_dst_ports()] == [g.lookup]
    for proc, stage in ((g.source, g.encoder), (g.lookup, g.generator)):  # resets: RefPorts to every u and v
        targets = {v for port in proc.ref_ports for v in port.get_dst_vars()}
        assert targets == {getattr(lif, var) for lif in stage.lifs.values() for var in ("u", "v")}


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["reconstruct", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_sim_fixed_report(active, shared_data_root, tmp_path, capsys) -> None:
    out = tmp_path / "r.png"
    rc, stdout, _ = _cli(["--bundle", str(active[1]), "--backend", "sim-fixed", "--data-root", str(shared_data_root),
                          "--n", "2", "--out", str(out), "--report", str(tmp_path / "rep")], capsys)
    assert rc == 0 and "MSE" in stdout and "1-SSIM" in stdout and "energy per image" in stdout
    import json

    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n"] == 2 and 0 < summary["mse"] < 1 and 0 <= summary["1-ssim"] <= 2
    tokens = np.load(out.with_suffix(".tokens.npy"))
    assert tokens.shape == (2, 7, 7)
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(report["stages"]) == {"encoder", "generator"} and report["host_lookup"]["macs"] > 0
    assert report["energy_with_host_j"] > report["energy_per_image"]["total_j"] > 0


@pytest.mark.parametrize("case", ["size", "channels", "nan", "no-encoder"])
def test_bad_inputs_are_one_line(case, active, tmp_path, capsys) -> None:
    bundle = active[1]
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    if case == "size":
        x = x[:, :, :20, :20]
    elif case == "channels":
        x = np.repeat(x, 3, axis=1)
    elif case == "nan":
        x[1, 0, 3, 3] = np.nan
    else:
        import json

        bundle = tmp_path / "bundle"
        shutil.copytree(active[1], bundle)
        m = json.loads((bundle / "manifest.json").read_text())
        del m["stages"]["encoder"]
        del m["files"]["encoder.nir"], m["files"]["encoder.loihi.safetensors"]
        (bundle / "manifest.json").write_text(json.dumps(m))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "r.png"
    rc, _, err = _cli(["--bundle", str(bundle), "--backend", "sim", "--images", str(tmp_path / "x.npy"),
                       "--out", str(out)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    assert {"size": "the encoder takes", "channels": "the encoder takes", "nan": "NaN",
            "no-encoder": "no encoder"}[case] in err
