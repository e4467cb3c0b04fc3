"""Presets that derive from another (``base:``, ``unset:``): resolution, errors, and the shipped derived presets
resolving to their base plus exactly their documented differences."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from spkdiff.config import PRESETS, _base_source, _package_source, load_preset, read_run_config, write_json_atomic
from spkdiff.errors import SpkdiffError

ROOT = Path(__file__).resolve().parents[1]
MISSING = "<missing>"


def _diff(base: dict[str, Any], derived: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: derived value (MISSING where removed)} for every key where DERIVED differs from BASE."""
    out: dict[str, Any] = {}
    for key in base.keys() | derived.keys():
        a, b = base.get(key, MISSING), derived.get(key, MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            out |= _diff(a, b, f"{prefix}{key}.")
        elif a != b or type(a) is not type(b):
            out[f"{prefix}{key}"] = b
    return out


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the derived presets

# The generator fine-tune of a run trained with the base (vqsvae.train only; models, prior and sampler unchanged).
ADVERSARIAL = {"vqsvae.train.epochs": 2, "vqsvae.train.lr": 1e-3, "vqsvae.train.warmup_steps": 50,
               "vqsvae.train.codebook_init": MISSING, "vqsvae.train.train_parts": "generator",
               "vqsvae.train.adversarial_weight": 0.3, "vqsvae.train.adversarial_start": 300,
               "vqsvae.train.discriminator_channels": 32}
DERIVED = {
    "fast_adversarial": ("fast", ADVERSARIAL),
    "fast_grid14": ("fast", {"vqsvae.model.latent_stride": 2, "sdid.model.channels": 96, "sdid.model.time_steps": 1,
                             "sdid.train.sop_weight": 0.5}),
    "fast_grid14_adversarial": ("fast_grid14", ADVERSARIAL),
    # documented in each file's header
    "bench/prior/preset_sdid_more_epochs.yaml": ("fast_adversarial", {
        "sdid.train.lr": 5e-4, "sdid.train.warmup_steps": 100, "sdid.model.neuron": MISSING}),
    "bench/prior/preset_grid14_patch2.yaml": ("fast_grid14", {
        "sdid.model.channels": 128, "sdid.model.time_steps": 2, "sdid.model.patch": 2,
        "sdid.train.sop_weight": MISSING}),
    "bench/prior/preset_grid14_patch2_wide.yaml": ("preset_grid14_patch2.yaml", {"sdid.model.channels": 160}),
    "bench/prior/preset_grid14_patch2_wide_more_epochs.yaml": ("preset_grid14_patch2_wide.yaml", {
        "sdid.train.lr": 5e-4, "sdid.train.warmup_steps": 100}),
    "bench/prior/preset_sdid_small_bad.yaml": ("fast", {"sdid.model.channels": 64, "sdid.train.epochs": 1}),
    "bench/energy_front/quality_prior_sop/preset_sop0.3.yaml": ("fast", {
        "sdid.model.neuron": MISSING, "sdid.train.epochs": 1, "sdid.train.lr": 3e-4, "sdid.train.warmup_steps": 50,
        "sdid.train.sop_weight": 0.3, "sdid.train.distill_from": "pretrained:fashion-mnist",
        "sdid.train.distill_weight": 1.0, "sdid.sample.steps": 49, "sdid.sample.temperature": 0.9}),
    "bench/energy_front/quality_prior_sop/preset_sop1.0.yaml": ("preset_sop0.3.yaml", {"sdid.train.sop_weight": 1.0}),
    "bench/energy_front/quality_prior_sop/preset_sop0.3_distill4.yaml": ("preset_sop0.3.yaml", {
        "sdid.train.distill_weight": 4.0}),
    "bench/energy_front/quality_prior_sop/preset_sop1.0_distill4.yaml": ("preset_sop1.0.yaml", {
        "sdid.train.distill_weight": 4.0}),
    "bench/energy_front/quality_prior_sop/preset_sop1.0_distill16.yaml": ("preset_sop1.0.yaml", {
        "sdid.train.distill_weight": 16.0}),
    "bench/energy_front/quality_prior_sop/preset_sop2.0_distill16.yaml": ("preset_sop1.0_distill16.yaml", {
        "sdid.train.sop_weight": 2.0}),
    "bench/energy_front/quality_prior_sop/preset_sop1.0_distill4_2epochs.yaml": ("preset_sop1.0_distill4.yaml", {
        "sdid.train.epochs": 2}),
    "bench/energy_front/quality_prior_sop/preset_sop0.3_distill4_2epochs.yaml": ("preset_sop0.3_distill4.yaml", {
        "sdid.train.epochs": 2}),
    "bench/energy_front/quality_prior_sop/preset_sop0_distill4_2epochs.yaml": ("preset_sop1.0_distill4_2epochs.yaml", {
        "sdid.train.sop_weight": 0.0}),
    "bench/energy_front/quality_prior_sop/preset_sop1.0_distill4_lr1e-4.yaml": ("preset_sop1.0_distill4.yaml", {
        "sdid.train.lr": 1e-4}),
    "bench/quality/preset_codebook_restart.yaml": ("fast", {
        "vqsvae.train.codebook_restart_every": 100, "vqsvae.train.codebook_restart_until": 0.9}),
    "bench/quality/preset_codebook_restart_k512.yaml": ("preset_codebook_restart.yaml", {
        "vqsvae.model.codebook_size": 512}),
    "bench/quality/preset_context2_generator.yaml": ("preset_context_generator.yaml", {
        "vqsvae.model.decoder_context": 2}),
    "bench/quality/preset_context3_generator.yaml": ("preset_context2_generator.yaml", {
        "vqsvae.model.decoder_context": 3}),
    "bench/quality/preset_context3_generator_adv08.yaml": ("preset_context3_generator.yaml", {
        "vqsvae.train.adversarial_weight": 0.8}),
    "bench/quality/preset_context3_tokenizer.yaml": ("preset_context3_generator.yaml", {
        "vqsvae.train.train_parts": "all", "vqsvae.train.codebook_restart_every": 100,
        "vqsvae.train.codebook_restart_until": 0.9}),
    "bench/quality/preset_context3_tokenizer_settle.yaml": ("preset_context3_tokenizer.yaml", {
        "vqsvae.train.codebook_restart_every": 0}),
    "bench/prior/preset_sdid_retokenized.yaml": ("preset_sdid_more_epochs.yaml", {
        "sdid.train.init_from_other_tokens": True, "sdid.sample.steps": 49,
        "sdid.sample.temperature": 0.9}),
    "bench/quality/preset_generator_l1_only.yaml": ("fast_adversarial", {
        "vqsvae.train.adversarial_weight": 0.0, "vqsvae.train.adversarial_start": MISSING,
        "sdid.sample.temperature": 0.8}),
}


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_derived_preset_is_its_base_plus_its_documented_differences(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    base, differences = DERIVED[name]
    file = Path(name) if name.endswith(".yaml") else ROOT / "configs" / f"{name}.yaml"
    assert yaml.safe_load(file.read_text())["base"] == base  # the file says what it varies
    resolved = load_preset(name)
    assert not {"base", "unset"} & resolved.keys()
    base_file = file.parent / base if base.endswith(".yaml") else base  # relative to the file naming it
    assert _diff(load_preset(str(base_file)), resolved) == differences
    assert "dilations" not in resolved["sdid"]["model"]


def test_the_adversarial_presets_share_their_fine_tune():
    """fast_grid14_adversarial is to fast_grid14 exactly what fast_adversarial is to fast."""
    fine_tune = load_preset("fast_adversarial")["vqsvae"]["train"]
    assert load_preset("fast_grid14_adversarial")["vqsvae"]["train"] == fine_tune


@pytest.mark.parametrize("name", ["fast_adversarial", "bench/prior/preset_sdid_more_epochs.yaml"])
def test_a_run_records_the_preset_name_and_its_resolved_config(name: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    from spkdiff.train.run import resolve_config

    monkeypatch.chdir(ROOT)
    args = argparse.Namespace(resume=False, dataset="mnist", preset=name, stage="sdid", epochs=None,
                              batch_size=None, limit=None, max_steps=None, init_from=None, seed=None)
    config = resolve_config(args, tmp_path)
    assert config["preset"] == name and not {"base", "unset"} & config.keys()
    preset = load_preset(name)
    assert config["sdid"]["train"] == preset["sdid"]["train"]
    assert config["sdid"]["model"] == preset["sdid"]["model"] | {"grid": 7}
    write_json_atomic(tmp_path / "config.json", config)
    assert read_run_config(tmp_path) == config  # the stored config alone rebuilds the run, base or not


# ----------------------------------------------------------------------------- resolution


def test_own_keys_override_the_base_and_unset_removes_keys(tmp_path: Path):
    child = _write(tmp_path / "child.yaml", """\
base: fast
unset: [sdid.model.neuron, vqsvae.train.codebook_init]
vqsvae:
  train: {epochs: 7}
sdid:
  model: {channels: 64}
  sample: {steps: 20}
""")
    resolved = load_preset(str(child))
    assert not {"base", "unset"} & resolved.keys()
    assert _diff(load_preset("fast"), resolved) == {
        "vqsvae.train.epochs": 7, "vqsvae.train.codebook_init": MISSING, "sdid.model.neuron": MISSING,
        "sdid.model.channels": 64, "sdid.sample.steps": 20}


def test_null_is_a_value_not_a_deletion(tmp_path: Path):
    """``limit: null`` is a valid train setting (no limit), so it is kept, not read as "delete"."""
    child = _write(tmp_path / "child.yaml", "base: tiny\nsdid:\n  train: {limit: null}\n")
    resolved = load_preset(str(child))
    assert "limit" in resolved["sdid"]["train"] and resolved["sdid"]["train"]["limit"] is None
    assert resolved["vqsvae"]["train"]["limit"] == 256


def test_unset_and_set_replaces_a_mapping_instead_of_merging(tmp_path: Path):
    child = _write(tmp_path / "child.yaml",
                   "base: fast\nunset: [sdid.model.neuron]\nsdid:\n  model: {neuron: {tau: 3.0}}\n")
    merged = _write(tmp_path / "merged.yaml", "base: fast\nsdid:\n  model: {neuron: {tau: 3.0}}\n")
    assert load_preset(str(child))["sdid"]["model"]["neuron"] == {"tau": 3.0}
    assert load_preset(str(merged))["sdid"]["model"]["neuron"] == {"tau": 3.0, "v_threshold": 1.0, "v_reset": 0.0}


def test_a_relative_base_resolves_against_the_file_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _write(tmp_path / "shared" / "parent.yaml", "base: fast\nsdid:\n  train: {epochs: 9}\n")
    _write(tmp_path / "shared" / "nested" / "middle.yaml", "base: ../parent.yaml\nsdid:\n  train: {lr: 5.0e-4}\n")
    child = _write(tmp_path / "runs" / "child.yaml",
                   "base: ../shared/nested/middle.yaml\nsdid:\n  sample: {steps: 3}\n")
    want = {"sdid.train.epochs": 9, "sdid.train.lr": 5e-4, "sdid.sample.steps": 3}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the folder of any of the files
    assert _diff(load_preset("fast"), load_preset(str(child))) == want
    monkeypatch.chdir(tmp_path)
    assert _diff(load_preset("fast"), load_preset("runs/child.yaml")) == want


def test_a_package_presets_relative_base_resolves_against_the_package_configs():
    configs = resources.files("spkdiff.configs")
    assert _base_source("fast.yaml", _package_source("fast_adversarial")).file == configs.joinpath("fast.yaml")
    assert _base_source("fast", _package_source("fast_adversarial")).file == configs.joinpath("fast.yaml")


def test_every_package_preset_loads():
    for name in PRESETS:
        preset = load_preset(name)
        assert {"vqsvae", "sdid"} <= preset.keys() and not {"base", "unset"} & preset.keys()


# ----------------------------------------------------------------------------- errors: one line each


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(SpkdiffError, match=match) as err:
        load_preset(str(path))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_base_cycle_is_one_line_naming_the_chain(tmp_path: Path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: c.yaml\nsdid: {train: {epochs: 2}}\n")
    _write(tmp_path / "c.yaml", "base: a.yaml\n")
    message = _one_line_error(a, "base cycle")
    chain = message.split("base cycle ")[1].split(" -> ")
    assert [Path(p).name for p in chain] == ["a.yaml", "b.yaml", "c.yaml", "a.yaml"]
    _one_line_error(_write(tmp_path / "self.yaml", "base: self.yaml\n"), r"base cycle .*self.yaml -> .*self.yaml")


@pytest.mark.parametrize("text,match", [
    ("base: huge\n", r"unknown base 'huge': choose one of paper, fast"),
    ("base: missing.yaml\n", r"base 'missing.yaml' not found \(.*missing.yaml\)"),
    ("base: [fast]\n", "base must be a preset name or a .yaml path"),
    ("base: null\n", "base must be a preset name or a .yaml path, got None"),
    ("unset: [sdid.model.neuron]\n", "unset needs a base"),
    ("base: fast\nunset: sdid.model.neuron\n", "unset must be a list of dotted keys"),
    ("base: fast\nunset: [sdid.model.dilations]\n", r"unset 'sdid.model.dilations': its base has no such key"),
    ("base: fast\nunset: [sdid.model.channels.x]\n", "its base has no such key"),
    ("base: list.yaml\n", r"preset .*list.yaml must be a mapping, got list"),
    ("base: fast\nsdid:\n  train: {lr: -1}\n", r"sdid.train.lr = -1 is outside"),  # checked once resolved
    ("base: fast\nsdid: null\n", "sdid must be a mapping"),
])
def test_bad_bases_are_one_line(text: str, match: str, tmp_path: Path):
    _write(tmp_path / "list.yaml", "- 1\n- 2\n")
    _one_line_error(_write(tmp_path / "p.yaml", text), match)
