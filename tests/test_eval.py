"""Evaluation library: FID/KID/PR on Inception features, feature cache, CFD classifier, MSE/SSIM, run records.

Inception-v3 runs ~5-10 images/s on this CPU, so the Inception tests use a handful of 28x28 images.
The stored reference vector (tests/data/inception_reference.json) is rewritten by running this file:
``python tests/test_eval.py`` (it records the recipe, the weights' sha256 and the torch version).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spkdiff.errors import SpkdiffError
from spkdiff.eval import classifier as clf_mod
from spkdiff.eval import evaluate as eval_mod
from spkdiff.eval import features as feat_mod
from spkdiff.eval.inception import (
    NUM_FEATURES,
    inception_features,
    inception_sha256,
    inception_weights_path,
    resize_std,
    to_uint8_nchw,
)
from spkdiff.eval.metrics import (
    frechet_distance,
    frechet_distance_torchmetrics,
    kernel_distance,
    mse,
    precision_recall,
    ssim_distance,
)

REFERENCE = Path(__file__).parent / "data" / "inception_reference.json"
REFERENCE_RECIPE = ("inception_features(reference_images(), protocol='std', batch_size=2)[:, :16] where "
                    "reference_images() (tests/test_eval.py) = uint8 (2,1,28,28): a diagonal ramp (9i + 4j) mod 256 "
                    "and a white disc of radius 8 centred at (14, 14) on black")


def reference_images() -> torch.Tensor:
    i = torch.arange(28).view(28, 1)
    j = torch.arange(28).view(1, 28)
    ramp = ((9 * i + 4 * j) % 256).to(torch.uint8)
    disc = (((i - 14) ** 2 + (j - 14) ** 2) < 64).to(torch.uint8) * 255
    return torch.stack([ramp, disc])[:, None]


# ------------------------------------------------------------------------------------------ preprocessing

def test_to_uint8_nchw_accepts_dataset_and_model_layouts():
    gray = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    assert to_uint8_nchw(gray).shape == (2, 1, 5, 5)
    rgb = np.zeros((2, 5, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 7
    out = to_uint8_nchw(rgb)
    assert out.shape == (2, 3, 5, 5) and out[:, 1].eq(7).all() and out[:, 0].eq(0).all()
    floats = torch.tensor([0.0, 0.5, 1.0, 1.7, -0.2]).view(1, 1, 1, 5)
    assert to_uint8_nchw(floats).flatten().tolist() == [0, 128, 255, 255, 0]
    with pytest.raises(SpkdiffError):
        to_uint8_nchw(torch.zeros(2, 2, 5, 5))


def test_resize_std_is_299_rgb_and_preserves_constants():
    images = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    images[1] = 0
    out = resize_std(images)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.tensor(200.0), atol=1e-3) and torch.allclose(out[1], torch.tensor(0.0))
    disc = resize_std(reference_images()[1:])
    assert disc.min() >= 0 and disc.max() <= 255  # bicubic overshoot is clipped
    assert torch.equal(disc[:, 0], disc[:, 2])


# ------------------------------------------------------------------------------------------ Inception

def test_inception_matches_stored_reference_vector():
    ref = json.loads(REFERENCE.read_text())
    assert inception_sha256() == ref["inception_sha256"], "the FID Inception weights changed"
    feats = inception_features(reference_images(), batch_size=2, progress=False)
    assert feats.shape == (2, NUM_FEATURES)
    np.testing.assert_allclose(feats[:, :16].numpy(), np.array(ref["features"]), rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def mnist_inception(shared_data_root):
    """Inception features of 8 real test digits, 8 other digits at 3 noise levels, and 4 of the first 8 again."""
    images, _ = feat_mod.load_split("mnist", shared_data_root, "test")
    real = images[:8]
    other = images[8:16].float() / 255
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(other.shape, generator=gen)
    levels = [0.0, 0.2, 0.5]
    noisy = torch.cat([(other + s * noise).clamp(0, 1) for s in levels])
    feats = inception_features(torch.cat([real, to_uint8_nchw(noisy)]), batch_size=16, progress=False)
    again = inception_features(real[:4], batch_size=3, progress=False)  # other batching: same features
    return feats[:8], [feats[8 * (k + 1):8 * (k + 2)] for k in range(len(levels))], again


def test_fid_of_a_set_with_itself_is_zero(mnist_inception):
    real, _, again = mnist_inception
    assert torch.allclose(real[:4], again, rtol=1e-3, atol=1e-4)
    assert frechet_distance(real[:4], again) < 1e-2
    assert frechet_distance(real, real) < 1e-6


def test_fid_and_kid_grow_with_noise(mnist_inception):
    real, noisy, _ = mnist_inception
    fids = [frechet_distance(real, f) for f in noisy]
    kids = [kernel_distance(real, f, subsets=20)[0] for f in noisy]
    assert fids[0] > 1.0  # different digits: clearly not zero
    assert fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids


# ------------------------------------------------------------------------------------------ feature cache

def test_real_features_are_cached_and_reused(tmp_path, monkeypatch):
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    calls = {"load": 0, "extract": 0}

    def fake_load(dataset, root, split):
        calls["load"] += 1
        return images, torch.zeros(6, dtype=torch.int64)

    def fake_extract(x, **kwargs):
        calls["extract"] += 1
        return x.float().mean(dim=(1, 2, 3))[:, None].repeat(1, 4)

    monkeypatch.setattr(feat_mod, "load_split", fake_load)
    monkeypatch.setattr(feat_mod, "inception_features", fake_extract)
    first = feat_mod.real_inception_features("mnist", None, cache=tmp_path)
    second = feat_mod.real_inception_features("MNIST", None, cache=tmp_path)  # alias of the same dataset
    assert calls["extract"] == 1
    assert torch.equal(first, second) and first.shape == (6, 4)
    subset = feat_mod.real_inception_features("mnist", None, n=3, cache=tmp_path)  # rows of the cached split
    assert calls["extract"] == 1
    assert torch.equal(subset, first[torch.from_numpy(feat_mod.subset_indices(6, 3))])
    alone = feat_mod.real_inception_features("mnist", None, n=3, cache=tmp_path / "other")  # nothing to slice
    assert calls["extract"] == 2 and torch.allclose(alone, subset)
    files = sorted((tmp_path / "features").glob("*.safetensors"))
    assert len(files) == 1 and inception_sha256()[:16] in files[0].name
    files[0].write_bytes(b"garbage")  # a corrupt cache file is recomputed, not trusted
    feat_mod.real_inception_features("mnist", None, cache=tmp_path)
    assert calls["extract"] == 3


# ------------------------------------------------------------------------------------------ feature metrics

def test_precision_recall_identical_and_shifted():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=gen)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    shifted = real + 1.5
    p, r = precision_recall(real, shifted)
    assert p < 0.5 and r < 0.5
    p_mid, r_mid = precision_recall(real, real + 0.9)
    assert p < p_mid < 1.0 and r < r_mid < 1.0


def test_frechet_distance_known_value_and_kid_zero_mean():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 4, generator=gen, dtype=torch.float64)
    # Same covariance, mean shifted by 2 in each of 4 dims: FD = ||mu||^2 = 16 (up to sampling noise).
    assert abs(frechet_distance(x, x + 2.0) - 16.0) < 0.2
    mean, std = kernel_distance(x[:1000], x[1000:], subsets=10, subset_size=500)
    assert abs(mean) < 3 * std + 1e-3


@pytest.mark.parametrize(("n_real", "n_fake"), [(8, 11), (50, 40), (300, 200)])
def test_frechet_distance_matches_torchmetrics(n_real, n_fake):
    gen = torch.Generator().manual_seed(n_real)
    real = torch.randn(n_real, 64, generator=gen).exp()  # skewed, correlated-ish features
    fake = 1.2 * torch.randn(n_fake, 64, generator=gen).exp() + 0.1
    ours, ref = frechet_distance(real, fake), frechet_distance_torchmetrics(real, fake)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(real, real) < 1e-8 * ref


def test_cached_features_resume_after_interruption(tmp_path):
    items = torch.arange(10, dtype=torch.float32)[:, None]
    seen: list[tuple[int, int]] = []

    def compute(sl: slice) -> torch.Tensor:
        seen.append((sl.start, sl.stop))
        if seen == [(0, 3), (3, 6), (6, 9)]:  # interrupted during the third chunk
            raise KeyboardInterrupt
        return items[sl] * 2

    key = {"dataset": "toy", "split": "test", "n": "all", "net": "x", "protocol": "p", "sha256": "0" * 64}
    with pytest.raises(KeyboardInterrupt):
        feat_mod.cached_features(key, 10, compute, tmp_path, chunk=3)
    assert seen == [(0, 3), (3, 6), (6, 9)]
    feats = feat_mod.cached_features(key, 10, compute, tmp_path, chunk=3)
    assert seen[3:] == [(6, 9), (9, 10)]  # resumed from the saved partial result
    assert torch.equal(feats, items * 2)
    assert not list((tmp_path / "features").glob("*partial*"))
    assert torch.equal(feat_mod.cached_features(key, 10, compute, tmp_path, chunk=3), feats) and len(seen) == 5


def test_cached_features_are_computed_once_by_concurrent_callers(tmp_path):
    """A second caller (another process, or here another open of the lock) waits for the first one's
    features instead of computing them again."""
    import threading
    import time

    items = torch.arange(6, dtype=torch.float32)[:, None]
    computed: list[tuple[int, int]] = []
    started = threading.Event()

    def compute(sl: slice) -> torch.Tensor:
        computed.append((sl.start, sl.stop))
        started.set()
        time.sleep(0.2)
        return items[sl] + 1

    key = {"dataset": "toy", "split": "test", "n": "all", "net": "y", "protocol": "p", "sha256": "1" * 64}
    results: dict[str, torch.Tensor] = {}
    first = threading.Thread(target=lambda: results.update(a=feat_mod.cached_features(key, 6, compute, tmp_path,
                                                                                       chunk=2)))
    first.start()
    assert started.wait(10)
    results["b"] = feat_mod.cached_features(key, 6, compute, tmp_path, chunk=2)  # blocks until the first is done
    first.join()
    assert computed == [(0, 2), (2, 4), (4, 6)]
    assert torch.equal(results["a"], items + 1) and torch.equal(results["b"], items + 1)


def test_metrics_reject_bad_shapes():
    with pytest.raises(SpkdiffError):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(SpkdiffError):
        precision_recall(torch.zeros(3, 2), torch.zeros(3, 2))  # k = 3 needs >= 4 samples


def test_mse_and_ssim():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4, 1, 28, 28, generator=gen)
    assert mse(a, a) == 0.0
    assert mse(torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.5)) == pytest.approx(0.25)
    u = to_uint8_nchw(a)
    assert mse(u, u.float() / 255) == pytest.approx(0.0, abs=1e-12)  # uint8 is read as x / 255
    assert ssim_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(a.shape, generator=gen)
    d1 = ssim_distance(a, (a + 0.05 * noise).clamp(0, 1))
    d2 = ssim_distance(a, (a + 0.3 * noise).clamp(0, 1))
    assert 0 < d1 < d2 <= 2
    assert ssim_distance(a, (a + 0.05 * noise).clamp(0, 1)) == pytest.approx(ssim_distance((a + 0.05 * noise)
                                                                                           .clamp(0, 1), a))
    with pytest.raises(SpkdiffError):
        mse(a, a[:2])


# ------------------------------------------------------------------------------------------ classifier

@pytest.mark.parametrize(("dataset", "minimum"), [("mnist", 0.98), ("fashion-mnist", 0.88)])
def test_shipped_classifier_accuracy(shared_data_root, dataset, minimum):
    clf = clf_mod.load_classifier(dataset)
    assert clf.path is not None and clf.path.parent == clf_mod.WEIGHTS_DIR
    assert clf.path.stat().st_size < 1_000_000
    images, labels = feat_mod.load_split(dataset, shared_data_root, "test")
    acc = clf_mod.accuracy(clf.model, images, labels)
    assert acc >= minimum
    assert acc == pytest.approx(clf.test_accuracy, abs=2e-3)  # the recorded accuracy is the real one


def test_train_classifier_roundtrip(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[labels == 1, :, :14] = 255  # class 1: bright top half
    images = (images.float() + 30 * torch.rand(images.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    monkeypatch.setattr(clf_mod, "load_split", lambda name, root, split: (images, labels))
    out = tmp_path / "clf.safetensors"
    trained = clf_mod.train_classifier("mnist", None, recipe=clf_mod.TrainRecipe(epochs=3, batch_size=16),
                                       out=out, progress=False)
    assert trained.test_accuracy == 1.0 and trained.meta["config"]["num_classes"] == 2
    loaded = clf_mod.load_classifier("mnist", out)
    assert loaded.sha256 == trained.sha256 and loaded.test_accuracy == 1.0
    feats = clf_mod.classifier_features(loaded.model, images)
    assert feats.shape == (64, clf_mod.FEATURE_DIM)
    assert torch.allclose(feats, clf_mod.classifier_features(trained.model, images))
    with pytest.raises(SpkdiffError):
        clf_mod.load_classifier("fashion-mnist", out)  # trained for another dataset
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(SpkdiffError):
        clf_mod.load_classifier("mnist", bad)


# ------------------------------------------------------------------------------------------ evaluate_images

def test_evaluate_images_classifier_and_paired_metrics(shared_data_root, tmp_path):
    images, _ = feat_mod.load_split("mnist", shared_data_root, "test")
    clean = images[:500]
    gen = torch.Generator().manual_seed(0)
    noisy = (clean.float() / 255 + 0.4 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    good = eval_mod.evaluate_images(clean, "mnist", shared_data_root, ["cfd", "ckid", "cpr"], cache=tmp_path,
                                    progress=False)
    bad = eval_mod.evaluate_images(noisy, "mnist", shared_data_root, ["cfd", "ckid", "cpr", "mse", "ssim"],
                                   reference=clean, cache=tmp_path, progress=False)
    assert good["n_generated"] == 500 and good["n_real"] == 10000 and good["dataset"] == "mnist"
    assert good["classifier_test_accuracy"] >= 0.98 and len(good["classifier_sha256"]) == 64
    assert good["cfd"] < bad["cfd"] and good["ckid"] < bad["ckid"]
    assert good["cprecision"] > bad["cprecision"]
    assert bad["mse"] > 0.01 and 0 < bad["1-ssim"] <= 2
    assert all(isinstance(v, (int, float, str)) for v in bad.values())
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 1  # real classifier features cached


def test_evaluate_images_inception_wiring(mnist_inception, monkeypatch, shared_data_root, tmp_path):
    real, noisy, _ = mnist_inception
    monkeypatch.setattr(eval_mod, "real_inception_features", lambda *a, **k: real)
    monkeypatch.setattr(eval_mod, "inception_features", lambda *a, **k: noisy[2])
    row = eval_mod.evaluate_images(torch.zeros(8, 1, 28, 28), "mnist", shared_data_root, ["fid", "kid", "pr"],
                                   progress=False)
    assert row["fid"] == pytest.approx(frechet_distance(real, noisy[2]))
    assert row["protocol"] == "std" and row["inception_sha256"] == inception_sha256()
    assert row["n_real"] == 8 and {"kid", "kid_std", "precision", "recall"} <= row.keys()


def test_evaluate_images_rejects_bad_requests():
    with pytest.raises(SpkdiffError, match="unknown metric"):
        eval_mod.evaluate_images(torch.zeros(4, 1, 28, 28), "mnist", None, ["fid", "is"])
    with pytest.raises(SpkdiffError, match="reference"):
        eval_mod.evaluate_images(torch.zeros(4, 1, 28, 28), "mnist", None, ["mse"])
    with pytest.raises(SpkdiffError, match="unknown dataset"):
        eval_mod.evaluate_images(torch.zeros(4, 1, 28, 28), "imagenet", None, ["mse"])
    with pytest.raises(SpkdiffError, match="evaluated images holds NaN or Inf"):
        eval_mod.evaluate_images(torch.full((4, 1, 28, 28), float("nan")), "mnist", None, ["cfd", "pr"])
    with pytest.raises(SpkdiffError, match="reference images holds NaN or Inf"):
        eval_mod.evaluate_images(torch.zeros(4, 1, 28, 28), "mnist", None, ["mse"],
                                 reference=torch.full((4, 1, 28, 28), float("inf")))


def test_append_results_row_writes_json_and_markdown(tmp_path):
    sha = "ab" * 32
    eval_mod.append_results_row(tmp_path / "run", {"dataset": "mnist", "fid": 12.3456789, "inception_sha256": sha})
    rows = eval_mod.append_results_row(tmp_path / "run", {"dataset": "mnist", "cfd": 1.5, "note": "a|b"})
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["rows"]
    assert stored == rows and len(rows) == 2 and rows[0]["inception_sha256"] == sha and "time" in rows[1]
    lines = (tmp_path / "run" / "results.md").read_text().splitlines()
    assert len(lines) == 4
    assert lines[0] == "| time | dataset | fid | inception_sha256 | cfd | note |"
    assert "| 12.35 |" in lines[2] and f"| {sha[:12]} |" in lines[2] and lines[2].endswith("|  |  |")
    assert lines[3].endswith("| 1.5 | a\\|b |")
    (tmp_path / "run" / "metrics.json").write_text("not json")
    with pytest.raises(SpkdiffError):
        eval_mod.append_results_row(tmp_path / "run", {"fid": 1.0})


def test_weights_file_is_the_fid_inception():
    path = inception_weights_path()
    assert path.name == "default_1.pt" and path.stat().st_size > 80_000_000


def _write_reference() -> None:
    feats = inception_features(reference_images(), batch_size=2, progress=False)[:, :16]
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps({"recipe": REFERENCE_RECIPE, "inception_sha256": inception_sha256(),
                                     "torch": torch.__version__, "features": feats.tolist()}, indent=1) + "\n")
    print(f"wrote {REFERENCE}", file=sys.stderr)


if __name__ == "__main__":
    _write_reference()


def test_eval_command_reconstruction_fid(tiny_run, shared_data_root, tmp_path, monkeypatch):
    """``--metrics rfid``: the reconstructions' FID against the test split, beside MSE (Inception stubbed
    by a fixed pixel projection so the test needs no 10 000-image feature pass)."""
    import shutil

    from spkdiff.cli import main

    proj = torch.randn(784, 12, generator=torch.Generator().manual_seed(0))

    def features(images, protocol="std", **_):  # the protocols see differently resized images: a different view
        return to_uint8_nchw(images).float().flatten(1) @ (proj if protocol == "std" else proj.flip(0))

    test_images, _ = feat_mod.load_split("mnist", shared_data_root, "test")
    monkeypatch.setattr(eval_mod, "inception_features", features)
    monkeypatch.setattr(eval_mod, "real_inception_features",
                        lambda *a, protocol="std", **k: features(test_images[:500], protocol))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["eval", "--run", str(run), "--metrics", "mse,rfid", "--n", "40", "--fid-protocols",
                 "std,pytorch-fid", "--data-root", str(shared_data_root)]) == 0
    row = json.loads((run / "metrics.json").read_text())["rows"][-1]
    assert row["n_reconstructed"] == 40 and row["protocol"] == "std" and row["mse"] > 0
    assert np.isfinite(row["recon_fid"]) and row["recon_fid"] > 0
    assert np.isfinite(row["recon_fid_pytorch_fid"]) and row["recon_fid_pytorch_fid"] != row["recon_fid"]
    assert "fid" not in row  # the generated-image FID is a different number
    assert main(["eval", "--run", str(run), "--metrics", "rfid", "--n", "4", "--fid-protocols", "clean"]) == 2


def test_eval_command_prior_nll(tiny_run, shared_data_root, tmp_path):
    """``--metrics nll``: the prior's held-out bound in bits per token of the first N test images' tokens,
    reproducible for a seed and recorded beside the number of grids it saw."""
    import shutil

    from spkdiff.cli import main
    from spkdiff.data import load_tensor
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import reconstruct
    from spkdiff.train.sdid import elbo_bits_per_token

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = ["eval", "--run", str(run), "--metrics", "nll", "--n", "64", "--data-root", str(shared_data_root)]
    assert main(args) == 0 and main(args) == 0
    first, second = json.loads((run / "metrics.json").read_text())["rows"][-2:]
    assert first["n_token_grids"] == 64 and "fid" not in first and "mse" not in first
    assert first["prior_nll_bits_per_token"] == second["prior_nll_bits_per_token"]
    test, _ = load_tensor("mnist", shared_data_root, "test", limit=64)
    _, tokens = reconstruct(load_stage(run, "vqsvae"), test)
    expected = elbo_bits_per_token(load_stage(run, "sdid"), tokens, seed=0)
    assert first["prior_nll_bits_per_token"] == pytest.approx(expected, rel=1e-6) and expected > 0
    by_time = first["prior_ce_bits_by_time"]  # bits per masked token at t = 1..T_d, None where none was masked
    assert len(by_time) == load_stage(run, "sdid").cfg.diffusion_steps
    assert all(b is None or b > 0 for b in by_time) and sum(b is not None for b in by_time) > len(by_time) // 2


def test_pytorch_fid_protocol_is_bilinear_on_2x_minus_1():
    """pytorch-fid feeds the network 2 (x / 255) - 1 of a bilinear (align_corners=False) resize; the network
    here computes (x - 128) / 128, so the resize must hand it x * 256 / 255 of the same bilinear resize."""
    from spkdiff.eval.inception import resize_pytorch_fid, resize_std

    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ours = (resize_pytorch_fid(images) - 128) / 128
    theirs = 2 * torch.nn.functional.interpolate(images.float() / 255, size=(299, 299), mode="bilinear",
                                                 align_corners=False) - 1
    assert ours.shape == (2, 3, 299, 299)
    assert torch.allclose(ours, theirs.expand(-1, 3, -1, -1), atol=1e-5)
    assert (resize_std(images) - resize_pytorch_fid(images)).abs().max() > 10  # bicubic vs bilinear differ


def test_eval_help_builds_without_torch() -> None:
    """The command parsers name the sampler methods from spkdiff.config, so `spkdiff eval --help` stays fast."""
    code = ("import sys\nfrom spkdiff.cli import main\n"
            "try:\n    main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "coarse" in done.stdout
