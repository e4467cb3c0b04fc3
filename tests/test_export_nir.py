"""``spkdiff-export --target nir`` on the tiny-trained run: files, round trip, stage-by-stage verification
against the torch models on real test images, independent consumers, and bad-input errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from torch import nn

from spkdiff.cli import export_main, main
from spkdiff.data import load_tensor
from spkdiff.export.lowering import LoweringError
from spkdiff.export.manifest import sha256
from spkdiff.export.nir_graphs import StageGraph, build_stage_graphs, spiking_core
from spkdiff.export.verify import encoder_trace, generator_trace, sdid_trace, verify_stage
from spkdiff.generation import depth_to_space
from spkdiff.neuromorphic.bundle import STAGES
from spkdiff.train.sdid import training_mask

N_IMAGES = 16


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    return tiny_export("nir")


@pytest.fixture(scope="module")
def stages(models) -> dict[str, StageGraph]:
    return build_stage_graphs(*models)


@pytest.fixture(scope="module")
def stage_inputs(models, shared_data_root: Path) -> dict[str, torch.Tensor]:
    """Real test images, their codebook embeddings, and SDID input spikes of their masked tokens."""
    vq, sdid = models
    images, _ = load_tensor("mnist", shared_data_root, "test", limit=N_IMAGES)
    x = images - 0.5
    with torch.no_grad():
        tokens, z_q = vq.quantize(vq.features(vq.encode_spikes(x)))
    t, _, h_t = training_mask(tokens, sdid.cfg.num_codes, sdid.cfg.diffusion_steps, torch.Generator().manual_seed(0))
    return {"encoder": x, "generator": z_q, "sdid": sdid.input_spikes(h_t, t)}


def _model(models, stage: str) -> nn.Module:
    return models[1] if stage == "sdid" else models[0]


def test_export_writes_one_file_per_stage_and_manifest(exported: Path, models, tiny_run: Path):
    vq, sdid = models
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["encoder.nir", "generator.nir", "manifest.json", "sdid.nir"]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    m = json.loads((exported / "manifest.json").read_text())
    assert (m["format"], m["version"], m["target"], m["time"]["dt"]) == ("spkdiff-export", 1, "nir", 1.0)
    assert m["files"] == {n: sha256(exported / n) for n in names if n != "manifest.json"}
    for stage in STAGES:
        entry = m["stages"][stage]
        assert entry["on_chip"] and entry["file"] == f"{stage}.nir" and entry["time_steps"] == 2
    assert m["stages"]["encoder"]["analog_input_layers"] == ["enc0_conv"]
    assert m["stages"]["generator"]["analog_input_layers"] == ["asg_conv"]
    assert m["stages"]["sdid"]["analog_input_layers"] == []
    lookup = m["host"]["codebook_lookup"]
    np.testing.assert_array_equal(np.asarray(lookup["codebook"], np.float32), vq.codebook.detach().numpy())
    assert lookup["k"] == pytest.approx(float(vq.k.detach())) and lookup["tau_syn"] == vq.cfg.tau_syn
    ro = m["stages"]["generator"]["readout"]
    assert (ro["kind"], ro["depth_to_space"], ro["crop"]) == ("LI", 4, [28, 28])
    sampler = m["host"]["mask_sampler"]
    assert (sampler["mask_token"], sampler["method"], sampler["steps"]) == (sdid.cfg.num_codes, "confidence", 8)
    for stage in ("vqsvae", "sdid"):
        assert m["source"]["checkpoints"][stage]["sha256"] == sha256(tiny_run / f"{stage}.safetensors")


def test_nir_round_trip(exported: Path, stages: dict[str, StageGraph]):
    """nir.read gives back exactly the graph that was written (nodes, parameters, edges, metadata)."""
    for name, sg in stages.items():
        back = nir.read(exported / f"{name}.nir")
        assert set(back.nodes) == set(sg.graph.nodes)
        assert sorted(back.edges) == sorted(sg.graph.edges)
        assert float(back.metadata["dt"]) == 1.0 and int(back.metadata["time_steps"]) == sg.steps
        for node_name, node in sg.graph.nodes.items():
            other = back.nodes[node_name]
            assert type(other) is type(node)
            for key, value in node.to_dict().items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(np.asarray(other.to_dict()[key]), value, err_msg=f"{node_name}.{key}")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_reproduces_torch_model(stage: str, exported: Path, stages, models, stage_inputs):
    """The float NIR executor on the written file: every LIF layer's spikes identical to torch,
    read-out within 1e-5 (after the host-side depth-to-space / crop / divide by T)."""
    sg = dataclasses.replace(stages[stage], graph=nir.read(exported / f"{stage}.nir"))
    check = verify_stage(sg, _model(models, stage), stage_inputs[stage])
    assert check.ok, check.summary()
    lif_layers = [c for c in check.layers if c.mismatches == 0 and c.max_abs_err == 0.0]
    assert len(lif_layers) >= 3
    assert sum(c.total for c in lif_layers) > 0


def test_residual_skip_is_a_second_edge_into_the_lif(stages):
    edges = stages["sdid"].graph.edges
    assert ("block0_b_conv", "block0_b_lif") in edges and ("stem_lif", "block0_b_lif") in edges


def _torch_last_spikes(stage: str, models, x: torch.Tensor, sg: StageGraph) -> tuple[torch.Tensor, int]:
    trace = {"encoder": encoder_trace, "generator": generator_trace, "sdid": sdid_trace}[stage](
        _model(models, stage), x)
    core = spiking_core(sg.graph)
    last = next(s for s, d in core.edges if d == "output")
    info = next(layer for layer in sg.layers if layer.name == last)
    return trace[last], info.phase_factor


def _run_stepwise(module: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    state, outs = None, []
    for _ in range(steps):
        out, state = module(x, state)
        outs.append(out)
    return torch.stack(outs)


def _import_core(consumer: str, core: nir.NIRGraph) -> tuple[nn.Module, bool]:
    """The consumer's module for a NIR graph (dt = 1), and whether it must run one sample at a time."""
    if consumer == "spikingjelly":
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        return import_from_nir(core, dt=1.0), False
    import norse.torch

    return norse.torch.from_nir(core, dt=1.0), True  # Norse's import fails at batch > 1


@pytest.mark.parametrize("consumer", ["spikingjelly", "norse"])
@pytest.mark.parametrize("stage", STAGES)
def test_independent_import_gives_the_same_spikes(consumer: str, stage: str, exported: Path, stages, models,
                                                 stage_inputs):
    """SpikingJelly 2.0 import_from_nir / Norse from_nir of the file's spiking core (neither has LI/I nodes)
    reproduce the torch model's last spiking layer bit for bit."""
    sg = stages[stage]
    core = spiking_core(nir.read(exported / f"{stage}.nir"))
    x = stage_inputs[stage][:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, per_sample = _import_core(consumer, core)
        chunks = x.split(1) if per_sample else [x]
        got = torch.cat([_run_stepwise(module, c, sg.steps) for c in chunks], dim=1)
    ref, f = _torch_last_spikes(stage, models, x, sg)
    assert torch.equal(depth_to_space(got, f), ref)


def test_unlowerable_layers_give_one_clear_error(models):
    vq, _ = models
    bad = copy.deepcopy(vq)
    bad.decoder[0].synapse[0] = nn.ConvTranspose2d(8, 16, 3, 2, 1)  # 7 -> 13: no whole phase blocks
    with pytest.raises(LoweringError, match=r"generator/decoder\.0\.synapse: output size \(13, 13\)"):
        build_stage_graphs(bad, None)
    bad = copy.deepcopy(vq)
    bad.encoder[1].neuron = nn.ReLU()
    with pytest.raises(LoweringError, match=r"encoder/encoder\.1\.neuron: ReLU is not a LIF"):
        build_stage_graphs(bad, None)


# ----------------------------------------------------------------------------- bad input via the CLI


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_cli_errors_are_one_line_and_leave_nothing(tiny_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"

    def fails(argv: list[str], message: str) -> None:
        assert export_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists() and _leftovers(tmp_path) == []

    fails(["--run", str(tmp_path / "nope"), "--target", "nir", "--out", str(out)], "run directory not found")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    fails(["--run", str(empty), "--target", "nir", "--out", str(out)], "holds no trained VQ-SVAE")
    foreign = tmp_path / "foreign_run"
    foreign.mkdir()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign / "vqsvae.safetensors"))
    fails(["--run", str(foreign), "--target", "nir", "--out", str(out)], "was not written by spkdiff")
    (foreign / "vqsvae.safetensors").write_bytes(b"not a checkpoint at all")
    fails(["--run", str(foreign), "--target", "nir", "--out", str(out)], "truncated or not a safetensors file")
    fails(["--run", str(tiny_run), "--target", "tflite", "--out", str(out)], "unknown target 'tflite'")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert export_main(["--run", str(tiny_run), "--target", "nir", "--out", str(blocker / "sub" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write output" in err, err
    assert _leftovers(tmp_path) == []


def test_cli_refuses_to_overwrite_without_force(tiny_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--run", str(tiny_run), "--target", "nir", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["export", "--run", str(tiny_run), "--target", "nir", "--out", str(tiny_run), "--force"]) == 2
    assert "would replace the run directory" in capsys.readouterr().err and (tiny_run / "vqsvae.safetensors").exists()
    assert main(["export", "--run", str(tiny_run), "--target", "nir", "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["encoder.nir", "generator.nir", "manifest.json", "sdid.nir"]
    assert _leftovers(tmp_path) == []


def test_failing_writer_leaves_no_partial_output(tiny_run: Path, tmp_path: Path, monkeypatch, capsys):
    """A write error after some files exist (here: the third stage) removes everything written so far."""
    from spkdiff.export import nir_target

    written = []
    real_write = nir_target.write_graph

    def write(path, graph):
        if Path(path).name == "sdid.nir":
            assert len(written) == 2 and all(p.exists() for p in written)
            raise OSError(28, "No space left on device")
        written.append(Path(path))
        real_write(path, graph)

    monkeypatch.setattr(nir_target, "write_graph", write)
    out = tmp_path / "deep" / "out"
    assert export_main(["--run", str(tiny_run), "--target", "nir", "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
