"""Interruptions and concurrent writers (issue 19).

* A tiny run is SIGKILLed at a random moment, then interrupted by SIGINT and SIGTERM in the middle of steps
  of both stages (a second Ctrl-C during the last checkpoint included), then resumed to the end: every
  tensor of both checkpoints equals the uninterrupted session run bit for bit, and the log CSV has no step
  twice.
* Two trainings and two exports into one folder: one refuses with one line, the other completes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from spkdiff.checkpoint import load_checkpoint
from spkdiff.cli import main

ARGS = ["train", "--stage", "all", "--preset", "tiny", "--dataset", "mnist", "--seed", "0"]  # as the tiny_run fixture


def _train(out: Path, data: Path, *extra: str) -> list[str]:
    return [*ARGS, "--out", str(out), "--data-root", str(data), *extra]


def _spawn(argv: list[str]) -> subprocess.Popen:
    # Float reductions depend on the thread count: the killed child must compute as this process does, so
    # that its steps equal the uninterrupted in-process run bit for bit.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.Popen([sys.executable, "-m", "spkdiff", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_mid_step(monkeypatch: pytest.MonkeyPatch, stage: str, call: int, signals: list[int],
                     on_save: int | None = None) -> None:
    """Send ``signals`` to this process inside ``stage``'s step number ``call`` (counted in this run), after
    its forward pass (BatchNorm statistics and generator already moved); ``on_save``: one more signal
    while the checkpoint after it is being written (a second Ctrl-C)."""
    from spkdiff.train import loop

    factory = {"vqsvae": "_vqsvae_step", "sdid": "_sdid_step"}[stage]
    make = getattr(loop, factory)
    calls = 0

    def wrapped_factory(*a: object, **k: object) -> Callable:
        step = make(*a, **k)

        def wrapped(*args: object) -> dict:
            nonlocal calls
            out = step(*args)
            calls += 1
            if calls == call:
                for sig in signals:
                    os.kill(os.getpid(), sig)
            return out

        return wrapped

    monkeypatch.setattr(loop, factory, wrapped_factory)
    if on_save is not None:
        save = loop.save_checkpoint

        def interrupted_save(*a: object, **k: object) -> None:
            if calls >= call:
                os.kill(os.getpid(), on_save)
            save(*a, **k)

        monkeypatch.setattr(loop, "save_checkpoint", interrupted_save)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _log_steps(path: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:]]


def test_resume_after_kill_and_signals_is_exact(tiny_run: Path, shared_data_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    # 1. SIGKILL at a random moment of stage 1 (stopped at step 10 of 16 at the latest, so stage 2 has not begun)
    proc = _spawn(_train(run, shared_data_root, "--stage", "vqsvae", "--max-steps", "10"))
    deadline = time.monotonic() + 120
    while not (run / "vqsvae_log.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    delay = random.Random().uniform(0.0, 0.4)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    ckpt = run / "vqsvae.safetensors"
    killed_at = load_checkpoint(ckpt).position["step"] if ckpt.exists() else 0
    print(f"SIGKILL {delay:.3f} s after the first log line; checkpoint at step {killed_at}")
    (run / ".vqsvae.safetensors.tmp999999").write_bytes(b"half a checkpoint of a dead writer")

    # 2-5. SIGINT and SIGTERM in the middle of steps of both stages, then resume each time
    for stage, sig, extra in (("vqsvae", signal.SIGINT, None), ("vqsvae", signal.SIGTERM, None),
                              ("sdid", signal.SIGINT, None), ("sdid", signal.SIGTERM, signal.SIGINT)):
        with monkeypatch.context() as m:
            _signal_mid_step(m, stage, 2, [sig], on_save=extra)
            capsys.readouterr()
            assert main(_train(run, shared_data_root, "--resume")) == 130
            err = capsys.readouterr().err
            assert "interrupted" in err.splitlines()[-1] and "Traceback" not in err
        assert not list(run.glob(".*.tmp*")), "a stale temp file survived"

    # 6. resume to the end
    assert main(_train(run, shared_data_root, "--resume")) == 0
    for stage in ("vqsvae", "sdid"):
        got, want = _tensors(run / f"{stage}.safetensors"), _tensors(tiny_run / f"{stage}.safetensors")
        assert got.keys() == want.keys()
        differ = [k for k in want if not torch.equal(got[k], want[k])]
        assert not differ, (f"{stage}: {len(differ)} of {len(want)} tensors differ, e.g. {differ[:3]} (SIGKILL "
                             f"{delay:.3f} s after the first log line, checkpoint then at step {killed_at})")
        steps = _log_steps(run / f"{stage}_log.csv")
        assert steps == sorted(set(steps)) and steps[-1] == _log_steps(tiny_run / f"{stage}_log.csv")[-1]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_second_training_into_one_run_is_refused(shared_data_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    first = _spawn(_train(run, shared_data_root, "--stage", "vqsvae", "--epochs", "4"))
    _wait_for(run / ".spkdiff.lock", first)
    capsys.readouterr()
    assert main(_train(run, shared_data_root, "--dataset", "fashion-mnist", "--stage", "vqsvae")) == 2
    err = capsys.readouterr().err.strip()
    assert "in use by another spkdiff process" in err and len(err.splitlines()) == 1
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    ckpt = load_checkpoint(run / "vqsvae.safetensors")
    assert ckpt.config["dataset"] == "mnist" and ckpt.position["step"] == 4 * 16
    assert _log_steps(run / "vqsvae_log.csv")[-1] == 4 * 16
    assert not (run / ".spkdiff.lock").exists()


def test_second_export_into_one_folder_is_refused(tiny_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    first = _spawn(["export", "--run", str(tiny_run), "--target", "lava", "--out", str(out)])
    _wait_for(tmp_path / ".bundle.lock", first)
    capsys.readouterr()
    assert main(["export", "--run", str(tiny_run), "--target", "nir", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "in use by another spkdiff process" in err and len(err.splitlines()) == 1
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    from spkdiff.neuromorphic.bundle import load_bundle

    assert load_bundle(out).stages == ["encoder", "generator", "sdid"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_lock_of_a_killed_writer_is_recovered(tmp_path: Path) -> None:
    from spkdiff.files import lock_folder

    lock = tmp_path / ".spkdiff.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print(1, flush=True); "
                               "time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "1"
    with pytest.raises(Exception, match="in use"), lock_folder(lock, "the folder"):
        pass
    holder.kill()
    holder.wait()
    with lock_folder(lock, "the folder"):
        assert lock.read_text().strip() == str(os.getpid())
