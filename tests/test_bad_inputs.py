"""The catalogue of bad inputs (issue 19): each is refused with exit status 2 and one stderr line, no
traceback, and every file that existed before is unchanged afterwards.

Cases run in-process through :func:`spkdiff.cli.main` on copies of the session's tiny run and bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from spkdiff.cli import main
from spkdiff.files import LOCK_NAME, lock_folder


@dataclass
class Ctx:
    tmp: Path
    tiny_run: Path
    tiny_export: Callable[[str], Path]
    data: Path

    def run(self) -> Path:
        """A writable copy of the tiny run."""
        dest = self.tmp / "run"
        if not dest.exists():
            shutil.copytree(self.tiny_run, dest, ignore=shutil.ignore_patterns("tb"))
        return dest

    def bundle(self) -> Path:
        """A writable copy of the tiny run's Lava bundle."""
        dest = self.tmp / "bundle"
        if not dest.exists():
            shutil.copytree(self.tiny_export("lava"), dest)
        return dest

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def loop(self) -> Path:
        a, b = self.tmp / "loop_a", self.tmp / "loop_b"
        a.symlink_to(b)
        b.symlink_to(a)
        return a


# ----------------------------------------------------------------------------- editing helpers


def edit_config(ctx: Ctx, change: Callable[[dict], object]) -> Path:
    run = ctx.run()
    config = json.loads((run / "config.json").read_text())
    new = change(config)
    (run / "config.json").write_text(json.dumps(config if new is None else new))
    return run


def edit_checkpoint(ctx: Ctx, stage: str, meta: Callable[[dict], object] | None = None,
                    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = ctx.run()
    path = run / f"{stage}.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["spkdiff"])
        values = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    if meta is not None:
        new = meta(header)
        header = header if new is None else new
    if tensors is not None:
        tensors(values)
    save_file(values, str(path), metadata={"spkdiff": json.dumps(header)})
    return run


def edit_manifest(ctx: Ctx, change: Callable[[dict], object]) -> Path:
    bundle = ctx.bundle()
    manifest = json.loads((bundle / "manifest.json").read_text())
    new = change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest if new is None else new))
    return bundle


def first_layer(manifest: dict, stage: str = "sdid") -> dict:
    return next(iter(manifest["stages"][stage]["loihi"]["layers"].values()))


def first_synapse(manifest: dict, stage: str = "sdid") -> dict:
    return next(m for layer in manifest["stages"][stage]["loihi"]["layers"].values()
                for m in layer.get("synapses", {}).values() if m.get("weight"))


def edit_loihi_tensor(ctx: Ctx, pick: Callable[[dict], str], change: Callable[[np.ndarray], np.ndarray]) -> Path:
    """Change one tensor of the sdid stage's Loihi file and re-hash it (so only the range check can object)."""
    from safetensors.numpy import load_file, save_file

    from spkdiff.files import sha256

    bundle = ctx.bundle()
    manifest = json.loads((bundle / "manifest.json").read_text())
    fname = manifest["stages"]["sdid"]["loihi"]["file"]
    values = load_file(str(bundle / fname))
    key = pick(manifest)
    values[key] = change(values[key])
    save_file(values, str(bundle / fname))
    manifest["files"][fname] = sha256(bundle / fname)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def nan_graph(ctx: Ctx) -> Path:
    """The tiny run's sdid.nir with a NaN in the first float weight (a graph file, not a bundle)."""
    import nir

    graph = nir.read(str(ctx.tiny_export("nir") / "sdid.nir"))
    node = next(n for n in graph.nodes.values() if isinstance(getattr(n, "weight", None), np.ndarray))
    node.weight = node.weight.astype(np.float32)
    node.weight.flat[0] = np.nan
    path = ctx.tmp / "nan.nir"
    nir.write(str(path), graph)
    return path


def overwrite(path: Path, data: bytes) -> Path:
    """Replace a file of a run copy; returns the run."""
    path.write_bytes(data)
    return path.parent


def sample(run: Path, *extra: str) -> list[str]:
    return ["sample", "--run", str(run), "--n", "2", "--out", str(run.parent / "grid.png"), *extra]


def sim_bundle(bundle: Path, *extra: str) -> list[str]:
    return ["sim", "--bundle", str(bundle), "--n", "1", *extra]


def export(run: Path, out: Path, target: str = "nir") -> list[str]:
    return ["export", "--run", str(run), "--target", target, "--out", str(out)]


def evaluate(ctx: Ctx, run: Path) -> list[str]:
    return ["eval", "--run", str(run), "--metrics", "mse", "--n", "2", "--data-root", str(ctx.data)]


def train(ctx: Ctx, out: Path | str, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--out", str(out), "--data-root", str(ctx.data), *extra]


def nan_tensor(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(values: dict[str, torch.Tensor]) -> None:
        values[name] = values[name].clone()
        values[name].view(-1)[0] = float("nan")
    return change


def cast_tensor(name: str, dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(values: dict[str, torch.Tensor]) -> None:
        values[name] = values[name].to(dtype)
    return change


def set_model(stage: str, key: str, value: object) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["config"][stage]["model"][key] = value
    return change


def sdid_layer(field: str, value: object) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        first_layer(m)[field] = value
    return change


def sdid_synapse(field: str, value: object) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        first_synapse(m)[field] = value
    return change


def set_path(*keys: str, value: object = None, delete: bool = False) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        for k in keys[:-1]:
            d = d[k]
        if delete:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return change


def preset_case(text: str) -> Callable[[Ctx], list[str]]:
    return lambda c: train(c, c.tmp / "out", "--preset", str(c.file("p.yaml", text)))


TINY_MODEL = "model: {hidden: [8, 16], latent_channels: 8, codebook_size: 16, time_steps: 2}\n"
TINY_TRAIN = "train: {epochs: 1, batch_size: 16}\n"
SDID_OK = "sdid:\n  model: {channels: 16, blocks: 1, time_steps: 2}\n  " + TINY_TRAIN


# ----------------------------------------------------------------------------- the catalogue

CASES: dict[str, Callable[[Ctx], list[str]]] = {
    # arguments: counts, sizes, steps, temperatures, timeouts
    "train-batch-size-0": lambda c: train(c, c.tmp / "o", "--batch-size", "0"),
    "train-batch-size-negative": lambda c: train(c, c.tmp / "o", "--batch-size", "-4"),
    "train-epochs-negative": lambda c: train(c, c.tmp / "o", "--epochs", "-1"),
    "train-epochs-zero": lambda c: train(c, c.tmp / "o", "--epochs", "0"),
    "train-epochs-text": lambda c: train(c, c.tmp / "o", "--epochs", "many"),
    "train-limit-negative": lambda c: train(c, c.tmp / "o", "--limit", "-1"),
    "train-limit-zero": lambda c: train(c, c.tmp / "o", "--limit", "0"),
    "train-max-steps-zero": lambda c: train(c, c.tmp / "o", "--max-steps", "0"),
    "train-seed-negative": lambda c: train(c, c.tmp / "o", "--seed", "-1"),
    "train-dist-timeout-nan": lambda c: train(c, c.tmp / "o", "--dist-timeout", "nan"),
    "train-unknown-stage": lambda c: train(c, c.tmp / "o", "--stage", "both"),
    "train-unknown-preset": lambda c: train(c, c.tmp / "o", "--preset", "huge"),
    "train-unknown-dataset": lambda c: train(c, c.tmp / "o", "--dataset", "imagenet"),
    "sample-n-zero": lambda c: sample(c.run(), "--n", "0"),
    "sample-n-negative": lambda c: sample(c.run(), "--n", "-5"),
    "sample-n-huge": lambda c: sample(c.run(), "--n", "1000000000"),
    "sample-n-float": lambda c: sample(c.run(), "--n", "1e9"),
    "sample-steps-zero": lambda c: sample(c.run(), "--steps", "0"),
    "sample-steps-negative": lambda c: sample(c.run(), "--steps", "-1"),
    "sample-steps-huge": lambda c: sample(c.run(), "--steps", "1000000000"),
    "sample-temperature-nan": lambda c: sample(c.run(), "--temperature", "nan"),
    "sample-temperature-negative": lambda c: sample(c.run(), "--temperature", "-1"),
    "sample-temperature-inf": lambda c: sample(c.run(), "--temperature", "inf"),
    "sample-remask-above-one": lambda c: sample(c.run(), "--remask", "1.5"),
    "sample-remask-nan": lambda c: sample(c.run(), "--remask", "nan"),
    "sample-remask-with-confidence": lambda c: sample(c.run(), "--remask", "0.1", "--method", "confidence"),
    "sample-timeout-nan": lambda c: sample(c.run(), "--timeout", "nan"),
    "sample-timeout-zero": lambda c: sample(c.run(), "--timeout", "0"),
    "sample-batch-size-zero": lambda c: sample(c.run(), "--batch-size", "0"),
    "sim-rate-nan": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--rate", "nan"],
    "sim-rate-above-one": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--rate", "1.5"],
    "sim-steps-huge": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--steps", "1000000000"],
    "sim-inputs-cannot-fit": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--steps", "100000",
                                        "--batch", "65536"],
    "sim-batch-zero": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--batch", "0"],
    "sim-dt-zero": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--dt", "0"],
    "sim-bundle-n-huge": lambda c: sim_bundle(c.bundle(), "--n", "1000000000"),
    "sim-bundle-n-float": lambda c: sim_bundle(c.bundle(), "--n", "1e9"),
    "eval-n-zero": lambda c: [*evaluate(c, c.run()), "--n", "0"],
    "eval-metrics-empty": lambda c: [*evaluate(c, c.run()), "--metrics", ""],
    "eval-metrics-blank-items": lambda c: [*evaluate(c, c.run()), "--metrics", " , "],
    "eval-fid-protocols-empty": lambda c: [*evaluate(c, c.run()), "--metrics", "fid", "--fid-protocols", ","],
    "eval-temperature-negative": lambda c: [*evaluate(c, c.run()), "--temperature", "-1"],
    "eval-remask-negative": lambda c: [*evaluate(c, c.run()), "--remask", "-0.1"],
    "sim-bundle-remask-with-coarse": lambda c: sim_bundle(c.bundle(), "--remask", "0.1", "--method", "coarse"),
    # paths
    "train-out-symlink-loop": lambda c: train(c, c.loop()),
    "train-data-root-symlink-loop": lambda c: train(c, c.tmp / "o", "--data-root", str(c.loop())),
    "train-out-is-a-file": lambda c: train(c, c.file("taken", "x")),
    "train-out-empty": lambda c: train(c, ""),
    "train-out-parent-is-a-file": lambda c: train(c, c.file("plain", "x") / "run"),
    "sample-out-is-a-folder": lambda c: sample(c.run(), "--out", str(c.tmp)),
    "sample-out-parent-is-a-file": lambda c: sample(c.run(), "--out", str(c.file("plain", "x") / "g.png")),
    "sample-out-unknown-extension": lambda c: sample(c.run(), "--out", str(c.tmp / "grid.xyz")),
    "sim-json-parent-is-a-file": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--json",
                                            str(c.file("plain", "x") / "r.json")],
    "sim-graph-missing": lambda c: ["sim", str(c.tmp / "missing.nir")],
    "sim-graph-nan-weight": lambda c: ["sim", str(nan_graph(c)), "--steps", "2"],
    "sim-graph-is-a-folder": lambda c: ["sim", str(c.tmp)],
    "export-out-symlink-loop": lambda c: export(c.run(), c.loop()),
    "export-out-is-a-file": lambda c: export(c.run(), c.file("taken", "x")),
    "export-out-not-empty": lambda c: export(c.run(), c.tmp),
    # config.json
    "config-is-a-list": lambda c: evaluate(c, edit_config(c, lambda d: [])),
    "config-is-empty": lambda c: evaluate(c, edit_config(c, lambda d: {})),
    "config-without-sdid": lambda c: evaluate(c, edit_config(c, set_path("sdid", delete=True))),
    "config-huge-hidden": lambda c: evaluate(c, edit_config(c, set_path("vqsvae", "model", "hidden",
                                                                        value=[200000, 200000]))),
    "config-not-json": lambda c: evaluate(c, overwrite(c.run() / "config.json", b"{oops")),
    "config-resume-list": lambda c: train(c, edit_config(c, lambda d: []), "--resume"),
    # checkpoints
    "checkpoint-meta-without-config": lambda c: export(edit_checkpoint(c, "vqsvae", set_path("config", delete=True)),
                                                       c.tmp / "o"),
    "checkpoint-meta-without-position": lambda c: train(
        c, edit_checkpoint(c, "vqsvae", set_path("position", delete=True)), "--resume"),
    "checkpoint-meta-is-a-list": lambda c: export(edit_checkpoint(c, "vqsvae", lambda m: []), c.tmp / "o"),
    "checkpoint-huge-hidden": lambda c: export(edit_checkpoint(c, "vqsvae", set_model("vqsvae", "hidden",
                                                                                      [200000, 200000])), c.tmp / "o"),
    "checkpoint-negative-size": lambda c: export(edit_checkpoint(c, "sdid", set_model("sdid", "channels", -3)),
                                                 c.tmp / "o"),
    "checkpoint-size-as-text": lambda c: export(edit_checkpoint(c, "sdid", set_model("sdid", "blocks", "3")),
                                                c.tmp / "o"),
    "checkpoint-nan-codebook": lambda c: export(edit_checkpoint(c, "vqsvae", tensors=nan_tensor("model/codebook")),
                                                c.tmp / "o"),
    "checkpoint-nan-weight-sample": lambda c: sample(edit_checkpoint(c, "sdid",
                                                                     tensors=nan_tensor("model/blocks.0.first.synapse.0.weight"))),
    "checkpoint-f16-weight": lambda c: export(edit_checkpoint(
        c, "sdid", tensors=cast_tensor("model/blocks.0.first.synapse.0.weight", torch.float16)), c.tmp / "o"),
    "checkpoint-int64-weight": lambda c: export(edit_checkpoint(
        c, "sdid", tensors=cast_tensor("model/blocks.0.first.synapse.0.weight", torch.int64)), c.tmp / "o"),
    "checkpoint-codebook-wrong-shape": lambda c: export(edit_checkpoint(
        c, "vqsvae", tensors=lambda v: v.update({"model/codebook": v["model/codebook"][:, :3].contiguous()})),
        c.tmp / "o"),
    "checkpoint-truncated": lambda c: export(overwrite(c.run() / "sdid.safetensors",
                                                       (c.run() / "sdid.safetensors").read_bytes()[:500]), c.tmp / "o"),
    # presets
    "preset-malformed-yaml": preset_case("vqsvae: {model: [1, 2\nsdid: x\n"),
    "preset-python-tag": preset_case("vqsvae: !!python/object/apply:os.system ['echo hacked']\n"),
    "preset-missing-train": preset_case("vqsvae:\n  " + TINY_MODEL + SDID_OK),
    "preset-is-a-list": preset_case("- 1\n- 2\n"),
    "preset-hidden-text": preset_case("vqsvae:\n  model: {hidden: wide}\n  " + TINY_TRAIN + SDID_OK),
    "preset-lr-negative": preset_case("vqsvae:\n  " + TINY_MODEL + "  train: {lr: -1}\n" + SDID_OK),
    "preset-base-cycle": preset_case("base: p.yaml\n"),
    "preset-unknown-base": preset_case("base: huge\n"),
    "preset-unset-absent-key": preset_case("base: tiny\nunset: [sdid.model.dilations]\n"),
    # manifests and Loihi integers of a bundle
    "manifest-without-stages": lambda c: sim_bundle(edit_manifest(c, set_path("stages", delete=True))),
    "manifest-without-host": lambda c: sim_bundle(edit_manifest(c, set_path("host", delete=True))),
    "manifest-stage-without-file": lambda c: sim_bundle(edit_manifest(c, set_path("stages", "sdid", "file",
                                                                                   delete=True))),
    "manifest-codebook-wrong-shape": lambda c: sim_bundle(edit_manifest(
        c, set_path("host", "codebook_lookup", "codebook", value=[1.0, 2.0]))),
    "manifest-codebook-nan": lambda c: sim_bundle(edit_manifest(
        c, lambda m: m["host"]["codebook_lookup"]["codebook"][0].__setitem__(0, float("nan")))),
    "manifest-is-a-list": lambda c: sim_bundle(edit_manifest(c, lambda m: [])),
    "loihi-du-out-of-range": lambda c: sim_bundle(edit_manifest(c, sdid_layer("du", 5000))),
    "loihi-vth-fractional": lambda c: sim_bundle(edit_manifest(c, sdid_layer("vth", 12.5))),
    "loihi-vth-negative": lambda c: sim_bundle(edit_manifest(c, sdid_layer("vth", -1))),
    "loihi-dv-text": lambda c: sim_bundle(edit_manifest(c, sdid_layer("dv", "2048"))),
    "loihi-weight-exp-40": lambda c: sim_bundle(edit_manifest(c, sdid_synapse("weight_exp", 40))),
    "loihi-sign-mode-9": lambda c: sim_bundle(edit_manifest(c, sdid_synapse("sign_mode", 9))),
    "loihi-weight-int-1000": lambda c: sim_bundle(edit_loihi_tensor(
        c, lambda m: first_synapse(m)["weight"], lambda a: np.full_like(a, 1000))),
    "loihi-weight-int-minus-100000": lambda c: sim_bundle(edit_loihi_tensor(
        c, lambda m: first_synapse(m)["weight"], lambda a: np.full_like(a, -100000))),
    "loihi-weight-fractional": lambda c: sim_bundle(edit_loihi_tensor(
        c, lambda m: first_synapse(m)["weight"], lambda a: a.astype(np.float32) + 0.5)),
    "loihi-bias-mant-out-of-range": lambda c: sim_bundle(edit_loihi_tensor(
        c, lambda m: first_layer(m)["bias_mant"], lambda a: np.full_like(a, 10000))),
    "loihi-bias-exp-out-of-range": lambda c: sim_bundle(edit_loihi_tensor(
        c, lambda m: first_layer(m)["bias_exp"], lambda a: np.full_like(a, 9))),
    # energy profiles
    "profile-malformed-yaml": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--steps", "2",
                                         "--profile", str(c.file("e.yaml", "energy_pj: {sop: [1\nx: y\n"))],
    "profile-not-a-mapping": lambda c: ["sim", str(c.tiny_export("nir") / "sdid.nir"), "--steps", "2",
                                        "--profile", str(c.file("e.yaml", "- 1\n"))],
    # a second writer
    "train-into-locked-run": lambda c: train(c, c.run(), "--resume"),
    "export-into-locked-output": lambda c: export(c.run(), c.tmp / "locked_out"),
}

LOCKED = {"train-into-locked-run": lambda c: c.run() / LOCK_NAME,
          "export-into-locked-output": lambda c: c.tmp / ".locked_out.lock"}


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse
        rc = exit_.code if isinstance(exit_.code, int) else 1
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert ": error: " in lines[0]


@pytest.fixture
def ctx(tmp_path: Path, tiny_run: Path, tiny_export, shared_data_root: Path, monkeypatch) -> Ctx:
    from tqdm import tqdm

    # stderr must hold the error alone: no progress bar of a training that got under way
    monkeypatch.setattr("spkdiff.train.loop._progress", lambda total, initial, desc: tqdm(disable=True))
    return Ctx(tmp_path, tiny_run, tiny_export, shared_data_root)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    argv = CASES[case](ctx)
    before = digests(ctx.tmp)
    with lock_folder(LOCKED[case](ctx), "held by the test") if case in LOCKED else contextlib.nullcontext():
        rc, err = call(argv, capsys)
    assert_one_line_error(rc, err)
    assert digests(ctx.tmp) == before
    assert not list(ctx.tmp.rglob("*.tmp*")), "a temp file was left behind"


def test_catalogue_size() -> None:
    assert len(CASES) >= 60


def test_comma_separated_lists() -> None:
    """The comma-list argument type shared by the CLI and the bench scripts: blanks dropped, items validated."""
    import argparse

    from spkdiff import validate

    calls = validate.comma_separated(validate.steps)
    assert calls("12, 24,49,") == [12, 24, 49]
    assert validate.comma_separated(str)("std,pytorch-fid") == ["std", "pytorch-fid"]
    assert validate.comma_separated(validate.temperature)("0.8") == [0.8]
    for bad in ("", " , ", "12,x", "12,0", "1e9"):
        with pytest.raises(argparse.ArgumentTypeError):
            calls(bad)


# ----------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes beyond ``nbytes`` fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


DISK_FULL: dict[str, Callable[[Ctx], list[str]]] = {
    "sample": lambda c: sample(c.run(), "--n", "64"),  # grid.png and grid.tokens.npy exist from before
    "train": lambda c: train(c, c.tmp / "fresh", "--stage", "vqsvae", "--limit", "64"),
    # HDF5 writing straight to a full disk used to crash the process (h5py finalisers, then a segfault)
    "export-lava": lambda c: export(c.run(), c.tmp / "bundle_out", "lava"),
    "export-nir": lambda c: export(c.run(), c.tmp / "bundle_out", "nir"),
}


@pytest.mark.parametrize("case", sorted(DISK_FULL))
def test_disk_full(case: str, ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    argv = DISK_FULL[case](ctx)
    (ctx.tmp / "grid.png").write_bytes(b"old png")
    (ctx.tmp / "grid.tokens.npy").write_bytes(b"old tokens")
    before = digests(ctx.tmp)
    with file_size_limit(2000):
        rc, err = call(argv, capsys)
    assert_one_line_error(rc, err)
    after = digests(ctx.tmp)
    assert {k: v for k, v in after.items() if k in before} == before
    new = sorted(set(after) - set(before))
    assert not [p for p in new if ".tmp" in p or p.endswith((".png", ".npy", ".safetensors", "manifest.json"))], new
    assert not (ctx.tmp / "bundle_out").exists()
    assert not [p for p in ctx.tmp.iterdir() if p.name.startswith(".bundle_out")], "export temp or lock left"
    if os.path.exists(ctx.tmp / "fresh"):  # the run directory holds no half-written file
        assert not [p for p in (ctx.tmp / "fresh").iterdir() if ".tmp" in p.name]
