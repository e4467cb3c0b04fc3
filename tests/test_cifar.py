"""CIFAR-10 end to end (issue 17) on a tiny run: 3x32x32 images, an 8x8 token grid.

The tiny run (64 training images) barely spikes, so the export and backend comparisons use an *activated*
copy: every BatchNorm after a spiking conv gets its gain scaled and a positive shift, so every LIF layer fires
and spikes can only agree if the 3-channel phase layout, the crop and the 8x8 grid are right everywhere.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import activated_copy, assert_nir_stages_match_torch
from PIL import Image
from safetensors import safe_open
from test_bad_inputs import assert_one_line_error, call

from spkdiff.cli import export_main, main
from spkdiff.data import load_tensor

pytestmark = pytest.mark.timeout(300)

CIFAR = "cifar-10-batches-py"
N_TRAIN, N_TEST = 64, 4


@pytest.fixture(scope="module")
def cifar_root(shared_data_root: Path) -> Path:
    if not (shared_data_root / CIFAR).is_dir():
        pytest.skip(f"CIFAR-10 not found in {shared_data_root}")
    return shared_data_root


def _train_args(run: Path, cifar_root: Path) -> list[str]:
    return ["train", "--stage", "all", "--preset", "tiny", "--dataset", "cifar10", "--out", str(run),
            "--data-root", str(cifar_root), "--limit", str(N_TRAIN), "--seed", "0"]


@pytest.fixture(scope="module")
def cifar_run(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both stages of the tiny preset on the first 64 CIFAR-10 training images. Read-only for tests."""
    run = tmp_path_factory.mktemp("cifar") / "run"
    assert main(_train_args(run, cifar_root)) == 0
    return run


@pytest.fixture(scope="module")
def active_run(cifar_run: Path) -> Path:
    """A copy of the run whose BatchNorms are scaled so that every spiking layer fires."""
    return activated_copy(cifar_run, cifar_run.parent / "active")


@pytest.fixture(scope="module")
def bundle(active_run: Path) -> Path:
    out = active_run.parent / "bundle"
    assert export_main(["--run", str(active_run), "--target", "lava", "--out", str(out)]) == 0
    return out


def test_the_run_takes_its_shape_from_the_data(cifar_run: Path) -> None:
    config = json.loads((cifar_run / "config.json").read_text())
    model = config["vqsvae"]["model"]
    assert (model["in_channels"], model["image_size"], config["sdid"]["model"]["grid"]) == (3, 32, 8)
    tokens = np.load(cifar_run / "tokens_train.npy")
    assert tokens.shape == (N_TRAIN, 8, 8)


def test_resume_finishes_a_stopped_run_exactly(cifar_run: Path, cifar_root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 stopped after 2 steps (a checkpoint, as after Ctrl-C), then ``--resume``: it runs only the
    remaining steps, and both stages end with the uninterrupted run's weights, bit for bit (signals and SIGKILL
    are covered on MNIST in test_interrupt.py)."""
    from spkdiff.train import loop

    run = tmp_path / "run"
    assert main([*_train_args(run, cifar_root), "--stage", "vqsvae", "--max-steps", "2"]) == 0
    steps_run = 0
    make_step = loop._vqsvae_step

    def counting_factory(*a: object, **k: object) -> object:
        step = make_step(*a, **k)

        def counted(*args: object) -> object:
            nonlocal steps_run
            steps_run += 1
            return step(*args)

        return counted

    monkeypatch.setattr(loop, "_vqsvae_step", counting_factory)
    assert main([*_train_args(run, cifar_root), "--resume"]) == 0
    assert steps_run == N_TRAIN // 16 - 2  # the tiny preset: batch 16, one epoch
    for stage in ("vqsvae", "sdid"):
        with safe_open(str(run / f"{stage}.safetensors"), framework="pt") as got, \
                safe_open(str(cifar_run / f"{stage}.safetensors"), framework="pt") as want:
            assert set(got.keys()) == set(want.keys())
            differ = [k for k in want.keys() if not torch.equal(got.get_tensor(k), want.get_tensor(k))]  # noqa: SIM118
        assert not differ, f"{stage}: {len(differ)} tensors differ after --resume, e.g. {differ[:3]}"


def test_nir_stages_match_torch_spike_for_spike(active_run: Path, cifar_root: Path, tmp_path: Path) -> None:
    """The written NIR files of all three stages on real test images: every LIF layer spikes as in torch (and
    fires), the read-out (3 channels x 4x4 phases on the 8x8 grid, depth-to-space, crop) within 1e-5."""
    x = load_tensor("cifar10", cifar_root, "test", limit=N_TEST)[0] - 0.5
    m, vq = assert_nir_stages_match_torch(active_run, x, tmp_path / "nir")
    assert m["stages"]["encoder"]["input"]["shape"] == [3, 32, 32]
    assert m["stages"]["generator"]["input"]["shape"] == [vq.latent_channels, 8, 8]
    readout = next(layer for layer in m["stages"]["generator"]["layers"] if layer["name"] == "readout_conv")
    assert readout["shape"] == [3 * 4 * 4, 8, 8] and readout["phase_factor"] == 4  # phase channels
    assert (m["host"]["decoder_output"]["crop"], m["host"]["mask_sampler"]["grid"]) == ([32, 32], [8, 8])


def test_lava_matches_the_fixed_point_simulator_bit_for_bit(bundle: Path) -> None:
    from spkdiff.backends import sample_images
    from spkdiff.simulator.generate import generate

    images, tokens, _ = sample_images("lava", bundle=bundle, n=1, steps=2, seed=0, fixed=True, timeout=240)
    ref = generate(bundle, 1, fixed=True, steps=2, seed=0)
    assert tokens.shape == (1, 8, 8) and images.shape == (1, 3, 32, 32)
    assert torch.equal(torch.as_tensor(tokens), ref.tokens)
    assert torch.equal(torch.as_tensor(images), ref.images)
    assert len(torch.unique(ref.images)) > 10  # a picture, not a constant


def test_sample_grid_png_is_in_colour(active_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "grid.png"
    assert main(["sample", "--run", str(active_run), "--n", "4", "--steps", "2", "--out", str(png)]) == 0
    image = Image.open(png)
    assert image.mode == "RGB" and image.size == (2 + 2 * 34, 2 + 2 * 34)
    rgb = np.asarray(image)[2:34, 2:34].astype(int)  # the first image, inside the padding
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 0 and np.abs(rgb[..., 1] - rgb[..., 2]).max() > 0


# ----------------------------------------------------------------------------- evaluation on RGB


def test_fid_input_keeps_the_three_colours() -> None:
    """Protocol std resizes R, G and B each (no grey-to-RGB repeat of the first channel)."""
    from spkdiff.eval.inception import resize_std, to_uint8_nchw

    rgb = np.zeros((1, 32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 0  # as spkdiff.data.load_arrays gives CIFAR-10: NHWC
    x = resize_std(to_uint8_nchw(rgb))
    assert x.shape == (1, 3, 299, 299)
    assert [round(float(c.mean())) for c in x[0]] == [200, 100, 0]


def test_shipped_cifar10_classifier(cifar_root: Path) -> None:
    from spkdiff.eval import classifier as clf_mod
    from spkdiff.eval.features import load_split

    clf = clf_mod.load_classifier("cifar10")
    assert clf.path is not None and clf.path.parent == clf_mod.WEIGHTS_DIR and clf.meta["recipe"]["hflip"]
    images, labels = load_split("cifar10", cifar_root, "test")
    acc = clf_mod.accuracy(clf.model, images, labels)
    assert acc >= 0.6 and acc == pytest.approx(clf.test_accuracy, abs=2e-3)  # the recorded accuracy is the real one


# ----------------------------------------------------------------------------- one-line errors


def _short_row_batches(cifar_root: Path, tmp: Path) -> Path:
    """A data root whose first training batch has rows of 3071 bytes (the rest link to the real files)."""
    folder = tmp / "data" / CIFAR
    folder.mkdir(parents=True)
    for f in (cifar_root / CIFAR).iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "data_batch_1").unlink()
    batch = {b"data": np.zeros((4, 3071), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    return folder.parent


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("tb"))
    return dest


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _wrong_grid(cifar_run: Path, bundle: Path, cifar_root: Path, tmp: Path) -> list[str]:
    b = _copy(bundle, tmp / "bundle")
    _edit_json(b / "manifest.json", lambda m: m["host"]["mask_sampler"].update(grid=[7, 7]))
    return ["sim", "--bundle", str(b), "--n", "1"]


def _wrong_codes(cifar_run: Path, bundle: Path, cifar_root: Path, tmp: Path) -> list[str]:
    b = _copy(bundle, tmp / "bundle")
    _edit_json(b / "manifest.json", lambda m: m["host"]["codebook_lookup"].update(
        codebook=m["host"]["codebook_lookup"]["codebook"][:-1]))
    return ["sample", "--backend", "lava", "--bundle", str(b), "--n", "1", "--out", str(tmp / "g.png")]


def _sdid_on_mnist(cifar_run: Path, bundle: Path, cifar_root: Path, tmp: Path) -> list[str]:
    run = _copy(cifar_run, tmp / "run")
    return ["train", "--stage", "sdid", "--dataset", "mnist", "--preset", "tiny", "--out", str(run),
            "--data-root", str(cifar_root)]


def _eval_on_mnist(cifar_run: Path, bundle: Path, cifar_root: Path, tmp: Path) -> list[str]:
    run = _copy(cifar_run, tmp / "run")
    _edit_json(run / "config.json", lambda c: c.update(dataset="mnist"))
    return ["eval", "--run", str(run), "--metrics", "mse", "--n", "2", "--data-root", str(cifar_root)]


def _short_rows(cifar_run: Path, bundle: Path, cifar_root: Path, tmp: Path) -> list[str]:
    return ["train", "--stage", "vqsvae", "--dataset", "cifar10", "--preset", "tiny", "--out", str(tmp / "o"),
            "--data-root", str(_short_row_batches(cifar_root, tmp))]


ERRORS = {
    "cifar-batch-row-length": (_short_rows, "3071"),
    "sdid-of-a-cifar-run-on-mnist": (_sdid_on_mnist, "3x32x32"),
    "eval-of-a-cifar-run-on-mnist": (_eval_on_mnist, "3x32x32"),
    "bundle-grid-not-its-codebook": (_wrong_grid, "grid [7, 7]"),
    "bundle-codes-not-its-sampler": (_wrong_codes, "num_codes"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_one_line_error(case: str, cifar_run: Path, bundle: Path, cifar_root: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    make, needle = ERRORS[case]
    rc, err = call(make(cifar_run, bundle, cifar_root, tmp_path), capsys)
    assert_one_line_error(rc, err)
    assert needle in err, err
