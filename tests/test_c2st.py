"""bench/quality/c2st.py: the classifier two-sample test separates what differs and not what does not."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_bench_script


@pytest.fixture(scope="module")
def c2st():
    return load_bench_script("quality/c2st.py")


def strokes(n: int, seed: int) -> torch.Tensor:
    """Random bright bars on a black 12x12 background: a toy image distribution with exact zeros."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 12, 12)
    rows, cols = torch.randint(1, 11, (2, n), generator=g)
    for i in range(n):
        images[i, 0, rows[i], 2:10] = 1.0
        images[i, 0, 2:10, cols[i]] = 1.0
    return images


def test_two_sample_test_sees_a_blur_and_not_a_resample(c2st):
    real, same_kind = strokes(600, 0), strokes(600, 1)
    kernel = torch.tensor([0.25, 0.5, 0.25])
    blurred = torch.nn.functional.conv2d(same_kind, (kernel[:, None] * kernel[None]).view(1, 1, 3, 3), padding=1)
    same = c2st.two_sample_test(real, same_kind, n_train=400, seed=0)
    blur = c2st.two_sample_test(real, blurred, n_train=400, seed=0)
    assert blur["accuracy"] > 0.95 and blur["log_loss"] < 0.2
    assert 0.35 < same["accuracy"] < 0.65
    repeated = c2st.repeated_test(real, blurred, n_train=400, seeds=2)
    assert repeated["accuracy"] > 0.95 and repeated["accuracy_std"] >= 0.0


def test_two_sample_test_rejects_too_few_or_mismatched_images(c2st):
    with pytest.raises(ValueError, match="n_train"):
        c2st.two_sample_test(strokes(10, 0), strokes(10, 1), n_train=10, seed=0)
    with pytest.raises(ValueError, match="shape"):
        c2st.two_sample_test(strokes(20, 0), torch.zeros(20, 3, 12, 12), n_train=10, seed=0)


def test_recorded_real_row_reuses_only_a_row_of_the_same_settings(c2st, tmp_path):
    results = tmp_path / "results_c2st.jsonl"
    assert c2st.recorded_real_row(results, "mnist", 10, 5, 2) is None
    rows = [{"dataset": "mnist", "run": "real", "n_train": 10, "n_test": 5, "seeds": 2, "accuracy": 0.4},
            {"dataset": "mnist", "run": "runs/a", "n_train": 10, "n_test": 5, "seeds": 2, "accuracy": 0.9},
            {"dataset": "fashion-mnist", "run": "real", "n_train": 10, "n_test": 5, "seeds": 2, "accuracy": 0.6},
            {"dataset": "mnist", "run": "real", "n_train": 10, "n_test": 5, "seeds": 2, "accuracy": 0.5}]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert c2st.recorded_real_row(results, "mnist", 10, 5, 2)["accuracy"] == 0.5
    assert c2st.recorded_real_row(results, "fashion-mnist", 10, 5, 2)["accuracy"] == 0.6
    assert c2st.recorded_real_row(results, "mnist", 10, 5, 3) is None
    assert c2st.recorded_real_row(results, "mnist", 20, 5, 2) is None
