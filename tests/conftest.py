"""Shared fixtures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    import torch

    from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TORCH_THREADS = 2  # the tiny fine-tunes are chaotic: one thread drove a generator layer from >5 % to 1.5 % firing
BN_GAIN, BN_SHIFT = 8.0, 1.0  # measured: every LIF layer of a tiny run then fires 15-50 % of the time
TINY_DECODER = (16, 8)  # configs/tiny.yaml: hidden [8, 16], so its decoder has 16 and 8 channels


def load_bench_script(relative: str) -> ModuleType:
    """A script under bench/ (not a package) imported as a module, e.g. ``load_bench_script("quality/c2st.py")``."""
    return load_script(f"bench/{relative}")


def load_script(relative: str) -> ModuleType:
    """A script of the checkout (not a package) imported as a module, e.g. ``load_script("docs/make_grids.py")``."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in the script looks its module up there
    spec.loader.exec_module(module)
    return module


def pytest_configure(config: pytest.Config) -> None:
    """Pin torch's thread count, so a test sees the same numbers whatever OMP_NUM_THREADS says."""
    import torch

    torch.set_num_threads(TORCH_THREADS)


def tiny_preset(folder: Path, stage: str, **train: object) -> Path:
    """Write the tiny preset with ``train`` overriding its ``stage`` training keys into FOLDER; return the file."""
    preset = yaml.safe_load(TINY_PRESET.read_text())
    preset[stage]["train"].update(train)
    path = folder / f"preset_{len(list(folder.glob('preset_*')))}.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def activated_copy(run: Path, out: Path) -> Path:
    """A copy OUT of RUN whose BatchNorms (after every spiking conv) get their gain scaled and a positive shift,
    so that every LIF layer fires: a tiny run barely spikes, and spikes can only agree everywhere if they exist."""
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(run, out, ignore=shutil.ignore_patterns("tb", "tokens_train.npy"))
    for stage in ("vqsvae", "sdid"):
        path = out / f"{stage}.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            values = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
        for key in [k for k in values if k.endswith(".1.weight")]:  # gamma of each conv's BatchNorm
            values[key] = values[key] * BN_GAIN
            values[key.replace(".weight", ".bias")] = torch.full_like(values[key], BN_SHIFT)
        save_file(values, str(path), metadata=meta)
    return out


def assert_nir_stages_match_torch(run: Path, images: torch.Tensor, out: Path) -> tuple[dict, VQSVAEConfig]:
    """Export RUN to NIR in OUT and check the written files of all three stages on IMAGES (pixels in [-0.5, 0.5]):
    every LIF layer fires (5-95 %) and spikes as in torch, the read-out within the verifier's tolerance.
    Returns the export's manifest and RUN's stage-1 config."""
    import dataclasses
    import json

    import nir
    import torch

    from spkdiff.cli import export_main
    from spkdiff.export.nir_graphs import build_stage_graphs, load_models
    from spkdiff.export.verify import encoder_trace, generator_trace, sdid_trace, verify_stage
    from spkdiff.neuromorphic.bundle import STAGES
    from spkdiff.train.sdid import training_mask

    assert export_main(["--run", str(run), "--target", "nir", "--out", str(out)]) == 0
    vq, sdid = load_models(run)
    with torch.no_grad():
        tokens, z_q = vq.quantize(vq.features(vq.encode_spikes(images)))
        t, _, h_t = training_mask(tokens, sdid.cfg.num_codes, sdid.cfg.diffusion_steps,
                                  torch.Generator().manual_seed(0))
        inputs = {"encoder": images, "generator": z_q, "sdid": sdid.input_spikes(h_t, t)}
        traces = {"encoder": encoder_trace(vq, images), "generator": generator_trace(vq, z_q),
                  "sdid": sdid_trace(sdid, inputs["sdid"])}
    stages = build_stage_graphs(vq, sdid)
    for stage in STAGES:
        sg = dataclasses.replace(stages[stage], graph=nir.read(out / f"{stage}.nir"))
        check = verify_stage(sg, sdid if stage == "sdid" else vq, inputs[stage])
        assert check.ok, check.summary()
        rates = {n: float(s.float().mean()) for n, s in traces[stage].items() if n.endswith("_lif")}
        layers = {"encoder": len(vq.encoder), "generator": 1 + len(vq.decoder), "sdid": 1 + 2 * len(sdid.blocks)}
        assert len(rates) == layers[stage] and all(0.05 < r < 0.95 for r in rates.values()), (stage, rates)
    return json.loads((out / "manifest.json").read_text()), vq.cfg


def run_on_tokens_of(source: Path, out: Path) -> Path:
    """A new run directory OUT holding SOURCE's stage 1 (so the tokens are SOURCE's) and no prior yet."""
    import shutil

    out.mkdir()
    for name in ("vqsvae.safetensors", "config.json"):
        shutil.copy(source / name, out / name)
    return out


def grown_generator_preset(folder: Path, source: Path, **model: object) -> Path:
    """The tiny preset with the ``model`` settings, fine-tuning SOURCE's generator; written into FOLDER."""
    preset = yaml.safe_load(TINY_PRESET.read_text())
    preset["vqsvae"]["model"].update(model)
    preset["vqsvae"]["train"].update(init_from=str(source), train_parts="generator")
    path = folder / f"grown_{len(list(folder.glob('grown_*')))}.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def assert_same_generator_function(source: VQSVAE, grown: VQSVAE, images: torch.Tensor) -> None:
    """``grown`` tokenizes ``images`` as ``source`` does and its generator computes the same potentials."""
    import torch

    for mode in (False, True):  # running statistics, and a training batch's own
        source.train(mode), grown.train(mode)
        with torch.no_grad():
            tokens, z_q = source.quantize(source.features(source.encode_spikes(images)))
            grown_tokens, grown_z_q = grown.quantize(grown.features(grown.encode_spikes(images)))
            assert torch.equal(tokens, grown_tokens)
            assert torch.equal(source.generator_potential(z_q), grown.generator_potential(grown_z_q))


def train_stage(stage: str, out: Path, preset: Path, data: Path, *extra: str) -> int:
    """``spkdiff train --stage STAGE`` on MNIST into OUT with PRESET, seed 0; returns the exit status."""
    from spkdiff.cli import main

    return main(["train", "--stage", stage, "--preset", str(preset), "--dataset", "mnist", "--out", str(out),
                 "--data-root", str(data), "--seed", "0", *extra])


def train_vqsvae(out: Path, preset: Path, data: Path, *extra: str) -> int:
    return train_stage("vqsvae", out, preset, data, *extra)


def train_sdid(out: Path, preset: Path, data: Path, *extra: str) -> int:
    return train_stage("sdid", out, preset, data, *extra)


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The real dataset files (MNIST, Fashion-MNIST) in ../shared/data beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_run(shared_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with both stages trained briefly on the tiny preset (MNIST subset), ~10 s.

    Read-only for tests: copy it before writing into it.
    """
    from spkdiff.cli import main

    run_dir = tmp_path_factory.mktemp("tiny_run")
    rc = main(["train", "--stage", "all", "--preset", "tiny", "--dataset", "mnist", "--out", str(run_dir),
               "--data-root", str(shared_data_root), "--seed", "0"])
    assert rc == 0
    return run_dir


@pytest.fixture(scope="session")
def tiny_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """``tiny_export(target)``: the tiny run exported to ``target`` (nir, onnx, lava) once per session.

    Read-only for tests.
    """
    from spkdiff.cli import export_main

    done: dict[str, Path] = {}

    def export(target: str) -> Path:
        if target not in done:
            out = tmp_path_factory.mktemp("export") / target
            assert export_main(["--run", str(tiny_run), "--target", target, "--out", str(out)]) == 0
            done[target] = out
        return done[target]

    return export


@pytest.fixture(scope="session")
def models(tiny_run: Path):
    """The tiny run's (VQSVAE, SDID) in eval mode. Shared: deep-copy before changing them."""
    from spkdiff.export.nir_graphs import load_models

    return load_models(tiny_run)
