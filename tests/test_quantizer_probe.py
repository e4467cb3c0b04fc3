"""bench/quality/quantizer_probe.py: the codebook's share of the reconstruction error, measured, not assumed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import activated_copy, load_bench_script

from spkdiff.data import load_tensor
from spkdiff.train.loop import load_stage
from spkdiff.train.vqsvae import VQSVAE


@pytest.fixture(scope="module")
def quantizer_probe():
    return load_bench_script("quality/quantizer_probe.py")


@pytest.fixture()
def firing_stage1(tiny_run: Path, tmp_path: Path) -> VQSVAE:
    """The tiny run's stage 1 with every LIF layer firing, so z^E varies across the grid."""
    return load_stage(activated_copy(tiny_run, tmp_path / "active"), "vqsvae")


@pytest.fixture(scope="module")
def images(shared_data_root: Path) -> torch.Tensor:
    return load_tensor("mnist", shared_data_root, "test", limit=12)[0]


def with_codebook(vq: VQSVAE, codes: torch.Tensor) -> VQSVAE:
    vq.codebook = torch.nn.Parameter(codes.clone())
    vq.cfg = dataclasses.replace(vq.cfg, codebook_size=codes.shape[0])
    return vq


def test_a_codebook_holding_every_feature_decodes_as_the_features(quantizer_probe, firing_stage1, images):
    with torch.no_grad():
        z_e = firing_stage1.features(firing_stage1.encode_spikes(images - 0.5))
    assert z_e.var() > 0
    vq = with_codebook(firing_stage1, z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]))
    row = quantizer_probe.probe(vq, images, batch_size=5)
    assert row["relative_quantization_error"] < 1e-6
    assert row["mse_codebook"] == pytest.approx(row["mse_features"], rel=1e-5)
    assert 0 < row["mse_features"] < 1


def test_one_code_keeps_none_of_the_features(quantizer_probe, firing_stage1, images):
    with torch.no_grad():
        z_e = firing_stage1.features(firing_stage1.encode_spikes(images - 0.5))
    mean = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]).mean(0, keepdim=True)
    row = quantizer_probe.probe(with_codebook(firing_stage1, mean), images, batch_size=5)
    # One code at the mean vector: its error is the whole spread, and every image decodes to the same picture.
    assert row["relative_quantization_error"] == pytest.approx(1.0, rel=1e-4)
    assert row["perplexity"] == pytest.approx(1.0) and row["dead_codes"] == 0
    assert row["mse_codebook"] > row["mse_features"]
