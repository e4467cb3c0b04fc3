"""Data-parallel training and sharded sampling under torchrun: 2 CPU ranks over gloo, tiny preset.

One module-scoped run (3 steps, then --resume to the end, both stages, --sync-bn) serves the training tests;
a single-process run of the same global batches is the reference.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spkdiff.checkpoint import load_checkpoint, load_model_weights
from spkdiff.cli import main
from spkdiff.generation import derived_seed
from spkdiff.train.distributed import (
    SINGLE,
    DistContext,
    SyncBatchNorm2d,
    convert_sync_batchnorm,
    param_digest,
)
from spkdiff.train.loop import build_model

TRAIN = ["--preset", "tiny", "--dataset", "mnist", "--limit", "64", "--epochs", "2", "--seed", "0"]
STEPS = 2 * 64 // 16  # two epochs of 4 global batches of 16
LAUNCH_TIMEOUT = 240


def _env() -> dict[str, str]:
    # One thread per rank, and for the in-process reference too, so that float reductions agree.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # "--" stops torchrun's parser from reading spkdiff's --run / --n as abbreviations of its own options.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "--", "spkdiff", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _log(path: Path) -> dict[int, dict[str, float]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)), f"{path.name}: repeated or unordered steps {steps} (two writers?)"
    return {int(r["step"]): {k: float(v) for k, v in r.items()} for r in rows}


@pytest.fixture(scope="module")
def dist_run(shared_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Both stages on 2 ranks: stop after 3 steps, resume to the end. Returns (run dir, both launches' stderr)."""
    run = tmp_path_factory.mktemp("dist") / "run"
    common = ["train", "--stage", "all", *TRAIN, "--data-root", str(shared_data_root), "--out", str(run),
              "--sync-bn"]
    first = torchrun([*common, "--max-steps", "3"], run.parent)
    assert load_checkpoint(run / "vqsvae.safetensors").position["step"] == 3
    second = torchrun([*common, "--resume"], run.parent)
    return run, first.stderr + second.stderr


def test_ranks_stay_identical_and_only_rank0_writes(dist_run: tuple[Path, str]):
    run, stderr = dist_run
    for stage in ("vqsvae", "sdid"):
        ckpt = load_checkpoint(run / f"{stage}.safetensors", stage=stage)
        assert ckpt.position["step"] == ckpt.position["total"] == STEPS
        digests = ckpt.position["param_sha256"]  # each rank's own parameters at the last checkpoint
        assert ckpt.position["world_size"] == len(digests) == 2 and digests[0] == digests[1]
        model = build_model(stage, ckpt.config[stage]["model"])
        load_model_weights(model, ckpt.model, ckpt.path)
        assert param_digest(model) == digests[0]
        log = _log(run / f"{stage}_log.csv")
        assert sorted(log) == list(range(2, STEPS + 1, 2))
        # One TensorBoard file per launch (2), not per rank; one summary line per stage and launch.
        assert len(list((run / "tb" / stage).iterdir())) == 2
        assert stderr.count(f"{stage}: 2 ranks (gloo): global batch 16 = 2 x 8 per rank") == 2
    names = {p.name for p in run.iterdir()}
    assert names == {"config.json", "vqsvae.safetensors", "sdid.safetensors", "tokens_train.npy", "vqsvae_log.csv",
                     "sdid_log.csv", "tb"}, names
    assert stderr.count("resuming vqsvae at epoch 0, step 3") == 1


def test_loss_matches_single_process_and_resume(dist_run: tuple[Path, str], shared_data_root: Path,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Steps 1-3 before the interruption and 4-8 after it equal one process on the same global batches."""
    run, _ = dist_run
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--stage", "vqsvae", *TRAIN, "--data-root", str(shared_data_root),
                     "--out", str(single)]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = _log(single / "vqsvae_log.csv"), _log(run / "vqsvae_log.csv")
    assert sorted(a) == sorted(b)
    for step in a:
        for key in ("loss", "recon", "vq", "mmd"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-3, abs=1e-5), (step, key)
    wa = load_checkpoint(single / "vqsvae.safetensors").model
    wb = load_checkpoint(run / "vqsvae.safetensors").model
    # A conv bias followed by BatchNorm has an exactly-zero true gradient (BN subtracts the batch mean); its
    # computed gradient is float-rounding noise, which Adam normalises into full-size steps that differ between
    # reduction orders. Such a bias cannot affect any output; only the BN's running mean (which averages it
    # in) follows it, so both are left out.
    model = build_model("vqsvae", load_checkpoint(single / "vqsvae.safetensors").config["vqsvae"]["model"])
    pre_bn = [name for name, m in model.named_modules()
              if isinstance(m, torch.nn.Sequential) and isinstance(m[1], torch.nn.BatchNorm2d)]
    skipped = {f"{name}.{k}" for name in pre_bn for k in ("0.bias", "1.running_mean")}
    compared = [k for k in wa if k not in skipped]
    assert pre_bn and len(compared) > len(wa) // 2
    for k in compared:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4, msg=k)


def test_sharded_sampling_equals_single_process(dist_run: tuple[Path, str], tmp_path: Path):
    run, _ = dist_run
    # 3 batches (4, 4, 2 images): rank 0 samples batches 0 and 2, rank 1 batch 1.
    args = ["sample", "--run", str(run), "--n", "10", "--batch-size", "4", "--seed", "3"]
    torchrun([*args, "--out", str(tmp_path / "two.png")], tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--out", str(tmp_path / "one.png")]) == 0
    finally:
        torch.set_num_threads(threads)
    two, one = np.load(tmp_path / "two.tokens.npy"), np.load(tmp_path / "one.tokens.npy")
    assert two.shape == (10, 7, 7)
    np.testing.assert_array_equal(two, one)
    assert (tmp_path / "two.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    assert len(np.unique(one.reshape(10, -1), axis=0)) == 10  # different batches draw different noise


def test_sharded_eval_equals_single_process(dist_run: tuple[Path, str], shared_data_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(dist_run[0], run)
    args = ["eval", "--run", str(run), "--metrics", "mse,ssim", "--n", "20", "--batch-size", "8",
            "--data-root", str(shared_data_root)]  # 3 reconstruction batches over 2 ranks
    torchrun(args, tmp_path)
    assert len(json.loads((run / "metrics.json").read_text())["rows"]) == 1  # written once, by rank 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    two, one = json.loads((run / "metrics.json").read_text())["rows"]
    for key in ("mse", "1-ssim", "codebook_perplexity", "codebook_dead_codes", "n_reconstructed"):
        assert two[key] == one[key], key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_rank_makes_the_other_exit_with_an_error(shared_data_root: Path, tmp_path: Path):
    """Two ranks without torchrun's agent (as on two hosts): SIGKILL rank 1, rank 0 must fail in seconds."""
    out = tmp_path / "run"
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    cmd = [sys.executable, "-m", "spkdiff", "train", "--stage", "vqsvae", "--preset", "tiny", "--limit", "64",
           "--epochs", "10000", "--data-root", str(shared_data_root), "--out", str(out), "--dist-timeout", "60"]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        log = out / "vqsvae_log.csv"
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline and procs[0].poll() is None, "training did not start"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)  # a hang would raise TimeoutExpired
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("spkdiff train: error: rank 0 of 2: lost contact with another rank"), last
    assert waited < 30
    ckpt = load_checkpoint(out / "vqsvae.safetensors")  # rank 0 saved its last consistent step
    assert ckpt.position["step"] >= 2


# ------------------------------------------------------------------------------------------------ in-process


def test_single_process_context_is_the_identity():
    assert not SINGLE.enabled and SINGLE.is_main
    assert SINGLE.map_batches(lambda i: i * i, 4) == [0, 1, 4, 9]
    assert SINGLE.broadcast("x") == "x" and SINGLE.all_gather(3) == [3] and SINGLE.mean({"a": 2.0}) == {"a": 2.0}
    idx = torch.arange(16)
    assert torch.equal(SINGLE.shard(idx), idx)
    assert torch.equal(DistContext(rank=1, world_size=2).shard(idx), torch.arange(8, 16))
    assert torch.equal(DistContext(rank=3, world_size=4).shard(idx), torch.arange(12, 16))
    gen = torch.Generator()
    assert SINGLE.step_generator(gen, 0, 5) is gen
    keyed = [DistContext(rank=r, world_size=2).step_generator(gen, 0, s).initial_seed() for r in (0, 1) for s in (5, 6)]
    assert len(set(keyed)) == 4
    assert derived_seed(0, 1) != derived_seed(1, 0) and derived_seed(2, 3) == derived_seed(2, 3)


def test_sync_batchnorm_conversion_and_math(monkeypatch: pytest.MonkeyPatch):
    """The cross-rank statistics path, run on one rank (all-reduce = identity), equals nn.BatchNorm2d."""
    import spkdiff.train.distributed as distributed

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4))
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4))
    ref.load_state_dict(net.state_dict())
    params = list(net.parameters())
    convert_sync_batchnorm(net)
    assert isinstance(net[1], SyncBatchNorm2d) and list(net.parameters()) == params  # same Parameter objects
    assert set(net.state_dict()) == set(ref.state_dict())
    monkeypatch.setattr(distributed, "_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, *a, **k: None)
    x = torch.randn(5, 2, 8, 8)
    y, y_ref = net(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(net[1], name), getattr(ref[1], name))
    net.eval()
    ref.eval()
    torch.testing.assert_close(net(x), ref(x))
