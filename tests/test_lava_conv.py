"""The exact vectorised convolution that Lava's fixed_pt Conv model uses (spkdiff.neuromorphic.lava_conv)."""

from __future__ import annotations

import numpy as np
import pytest

from spkdiff.neuromorphic.lava_compat import ensure_lava
from spkdiff.neuromorphic.lava_conv import conv_exact

ensure_lava()
utils = pytest.importorskip("lava.proc.conv.utils")


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"),
                         [(1, 1, 1, 1), (2, 1, 1, 1), (1, 0, 2, 1), (1, 2, 1, 3), (2, 2, 2, 6), (1, 1, 1, 6)])
def test_integer_convolution_equals_lavas_bit_for_bit(stride: int, padding: int, dilation: int, groups: int):
    rng = np.random.default_rng(stride * 100 + padding * 10 + dilation + groups)
    x = rng.integers(-(2**12), 2**12, size=(9, 7, 6)).astype(np.int32)  # graded spikes, XYC
    w = rng.integers(-128, 128, size=(12, 3, 3, 6 // groups)).astype(np.int32)
    args = ((3, 3), (stride, stride), (padding, padding), (dilation, dilation), groups)
    expected = utils.conv_scipy(x, w, *args)
    got = conv_exact(utils.conv_scipy, x, w, *args)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert np.array_equal(utils.conv(x, w, *args), expected.astype(w.dtype))  # the patched entry point


def test_binary_spikes_and_the_patched_module_use_it(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(0)
    x = rng.random((7, 7, 128)) < 0.1  # bool spikes, as the Conv model receives them
    w = rng.integers(-255, 256, size=(64, 3, 3, 128)).astype(np.int32)
    args = ((3, 3), (1, 1), (1, 1), (1, 1), 1)
    expected = utils.conv_scipy(x, w, *args).astype(np.int32)
    monkeypatch.setattr(utils, "conv_scipy", lambda *a: pytest.fail("Lava's per-channel loop was used"))
    assert np.array_equal(utils.conv(x, w, *args), expected)


def test_float_weights_and_overflowing_sums_go_to_lavas_code():
    calls = []

    def fallback(*args):
        calls.append(args)
        return utils.conv_scipy(*args)

    args = ((3, 3), (1, 1), (1, 1), (1, 1), 1)
    x = np.ones((5, 5, 2), dtype=np.int64)
    conv_exact(fallback, x, np.full((2, 3, 3, 2), 0.5), *args)  # floating_pt weights
    conv_exact(fallback, x * 2**40, np.full((2, 3, 3, 2), 2**20, dtype=np.int64), *args)  # sums past 2**53
    assert len(calls) == 2
    conv_exact(fallback, x, np.ones((2, 3, 3, 2), dtype=np.int32), *args)
    assert len(calls) == 2
