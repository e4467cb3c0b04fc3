"""docs/make_grids.py --compare: test images above each run's reconstructions, upscaled for the reader."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import load_script
from PIL import Image

from spkdiff.data import load_tensor
from spkdiff.imageio import to_uint8


@pytest.fixture(scope="module")
def make_grids():
    return load_script("docs/make_grids.py")


def tile(grid: np.ndarray, row: int, col: int, upscale: int, size: int = 28, pad: int = 2) -> np.ndarray:
    """One image of a saved grid, scaled back down (the upscale is nearest-neighbour, so this is exact)."""
    top, left = (pad + row * (size + pad)) * upscale, (pad + col * (size + pad)) * upscale
    return grid[top:top + size * upscale:upscale, left:left + size * upscale:upscale]


def test_compare_rows_are_the_test_images_then_each_runs_reconstructions(make_grids, tiny_run, shared_data_root,
                                                                         tmp_path, monkeypatch):
    out = tmp_path / "compare.png"
    monkeypatch.setattr(sys, "argv", ["make_grids.py", "--compare", str(out), "mnist", str(shared_data_root),
                                      str(tiny_run), str(tiny_run)])
    make_grids.main()
    grid = np.asarray(Image.open(out))
    n, up = 12, make_grids.UPSCALE
    assert grid.shape == ((3 * 30 + 2) * up, (n * 30 + 2) * up)
    test, _ = load_tensor("mnist", shared_data_root, "test", limit=n)
    expected = to_uint8(test)[..., 0]
    for col in range(n):
        np.testing.assert_array_equal(tile(grid, 0, col, up), expected[col])
        # one run given twice: two identical rows, and a reconstruction is not a copy of its input
        np.testing.assert_array_equal(tile(grid, 1, col, up), tile(grid, 2, col, up))
    assert any(not np.array_equal(tile(grid, 1, col, up), expected[col]) for col in range(n))


@pytest.mark.parametrize("argv, message", [
    (["mnist", "DATA", "RUN"], "runs are given only with --compare"),
    (["--compare", "out.png", "mnist", "DATA"], "--compare needs at least one run"),
])
def test_bad_arguments_exit_with_one_line(make_grids, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["make_grids.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        make_grids.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
