"""Lava on Python 3.11 through spkdiff.neuromorphic.lava_compat, and the isolated Lava runner.

Every Lava run goes through run_isolated (own process group, timeout, clean-up).
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from spkdiff.neuromorphic.lava_compat import PATCHES, ensure_lava, hook_installed, lava_available
from spkdiff.neuromorphic.lava_runner import LavaRunError, LavaTimeoutError, group_members, run_isolated_info

pytestmark = [pytest.mark.lava, pytest.mark.skipif(not lava_available(), reason="lava-nc not installed")]


def _fresh_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def _lava_file(module: str) -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("lava").submodule_search_locations[0]).parent.joinpath(
        *module.split(".")).with_suffix(".py")


def test_lava_breaks_without_hook_on_311():
    """Guards the premise: unpatched Lava fails on 3.11 in the two known ways."""
    r = _fresh_python("import lava.magma.compiler.var_model")
    assert r.returncode != 0 and "mutable default" in r.stderr
    r = _fresh_python("""
        import multiprocessing as mp
        mp.get_context(); q = mp.Queue()
        import lava.magma.runtime.message_infrastructure.multiprocessing
    """)
    assert r.returncode != 0 and "context has already been set" in r.stderr


def test_hook_fixes_imports_without_touching_site_packages():
    files = [_lava_file(m) for m in PATCHES]
    before = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    r = _fresh_python("""
        import multiprocessing as mp
        mp.set_start_method("spawn"); q = mp.Queue()    # multiprocessing used first, non-fork default
        from spkdiff.neuromorphic.lava_compat import ensure_lava, hook_installed
        import sys
        ensure_lava(); ensure_lava(check=True)
        assert sum(type(f).__name__ == "_LavaCompatFinder" for f in sys.meta_path) == 1
        import lava.proc.lif.process, lava.proc.dense.process, lava.proc.lif.models, lava.proc.dense.models
        from lava.magma.compiler.var_model import ByteEncoder, CoreEncoder
        from lava.magma.runtime.message_infrastructure import multiprocessing as lmp
        assert hash(ByteEncoder()) == hash(ByteEncoder())
        assert CoreEncoder().x is CoreEncoder().x          # shared default instance, as on Python 3.10
        assert mp.get_start_method() == "spawn"            # the user's choice is kept...
        assert lmp.SystemProcess._start_method == "fork"   # ...and Lava's actors are still forked
        print("OK")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK"
    assert before == {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_ensure_lava_is_idempotent_in_process():
    ensure_lava()
    ensure_lava()
    assert hook_installed()
    assert sum(type(f).__name__ == "_LavaCompatFinder" for f in sys.meta_path) == 1


# ---------------------------------------------------------------- functions run in the isolated child


def dense_lif_20_steps() -> dict[str, np.ndarray]:
    """RingBuffer (1 neuron, spiking every step) -> Dense [[10], [-6]] -> LIF, 20 steps, fixed_pt."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF

    src = RingBuffer(data=np.ones((1, 20), dtype=np.int32))
    dense = Dense(weights=np.array([[10], [-6]], dtype=np.int32))
    lif = LIF(shape=(2,), du=4095, dv=2048, vth=18, bias_mant=np.array([0, 3]), bias_exp=np.array([0, 2]))
    src.s_out.connect(dense.s_in)
    dense.a_out.connect(lif.a_in)
    v = []
    try:
        for _ in range(20):
            lif.run(condition=RunSteps(num_steps=1), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
            v.append(lif.v.get().copy())
    finally:
        lif.stop()
    return {"v": np.array(v)}


def lava_float_du() -> None:
    """A fixed-point LIF given a float du: its worker raises (TypeError in np.right_shift)."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.lif.process import LIF

    lif = LIF(shape=(2,), du=0.5, dv=0.25, vth=10, bias_mant=5)
    lif.run(condition=RunSteps(num_steps=3), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    lif.stop()


def lava_forever(marker: str) -> None:
    """Start Lava running without end, then block: only the timeout can end this."""
    from lava.magma.core.run_conditions import RunContinuous
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.lif.process import LIF

    lif = LIF(shape=(3,), du=4095, dv=0, vth=100, bias_mant=1)
    lif.run(condition=RunContinuous(), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    Path(marker).write_text(str(os.getpid()))
    time.sleep(3600)


# ---------------------------------------------------------------- tests


def test_dense_lif_20_steps_fixed_pt_hand_computed():
    out, info = run_isolated_info(dense_lif_20_steps, timeout=300)  # ~1 s on an idle machine
    assert not group_members(info.pgid)
    v = out["v"]
    assert v.shape == (20, 2)
    # hand computation: Dense delays one step, so a = 0 at step 1 and the weight from step 2 on;
    # u = a << 6 (du = 4095); v = trunc(v * 2048 / 4096) + u + bias_mant << bias_exp; spike if v > 18 << 6.
    bias = [0, 3 << 2]
    exp = np.zeros((20, 2), dtype=np.int64)
    for j, w in enumerate((10, -6)):
        vj = 0
        for t in range(20):
            u = (w if t >= 1 else 0) * 64
            vj = math.trunc(vj / 2) + u + bias[j]
            if vj > 18 * 64:
                vj = 0
            exp[t, j] = vj
    np.testing.assert_array_equal(v, exp)
    # a few values by hand: 640, 320+640, 480+640, 560+640 = 1200 > 1152 -> reset
    assert list(v[:6, 0]) == [0, 640, 960, 1120, 0, 640]
    assert list(v[:3, 1]) == [12, 6 - 384 + 12, -183 - 384 + 12]


def test_worker_error_is_reported_and_cleaned_up():
    with pytest.raises(LavaRunError) as err:
        run_isolated_info(lava_float_du, timeout=300)
    assert not isinstance(err.value, LavaTimeoutError)
    assert "right_shift" in str(err.value)  # the worker's own error is in the one-line message
    info = err.value.info
    assert not group_members(info.pgid)
    assert all(not Path("/dev/shm", n).exists() for n in info.unlinked_shm)


def test_timeout_kills_group_and_frees_shared_memory(tmp_path):
    marker = tmp_path / "running"
    timeout = 6.0
    while True:  # a loaded machine may need longer than `timeout` just to start Lava: then retry longer
        t0 = time.time()
        with pytest.raises(LavaTimeoutError) as err:
            run_isolated_info(lava_forever, str(marker), timeout=timeout)
        assert time.time() - t0 < timeout + 20
        if marker.exists() or timeout > 100:
            break
        timeout *= 2
    info = err.value.info
    assert marker.exists(), "Lava did not start in time: " + err.value.output[-500:]
    assert info.timed_out and info.killed_pids  # the child and Lava's workers were alive...
    assert not group_members(info.pgid)  # ...and are gone
    for pid in info.killed_pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert info.unlinked_shm  # Lava's channels lived in /dev/shm...
    assert all(not Path("/dev/shm", n).exists() for n in info.unlinked_shm)  # ...and were removed


def test_sigterm_to_the_caller_still_kills_the_group(tmp_path):
    """``timeout(1)``, ``kill`` or a closed terminal end the caller with SIGTERM / SIGHUP, which never reach the
    child (its own session): the caller unwinds as on Ctrl-C, kills the group and frees its shared memory."""
    import signal

    from spkdiff.neuromorphic.lava_runner import _shm_used_by

    marker = tmp_path / "running"
    code = f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_lava_compat import lava_forever
        from spkdiff.neuromorphic.lava_runner import run_isolated
        try:
            run_isolated(lava_forever, {str(marker)!r}, timeout=600)
        except KeyboardInterrupt:
            sys.exit(130)
    """
    caller = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    pgid, shm = None, set()
    try:
        deadline = time.time() + 300  # starting Lava on a loaded machine
        while pgid is None:
            assert caller.poll() is None, caller.stdout.read().decode(errors="replace")[-500:]
            assert time.time() < deadline, "Lava did not start in time"
            text = marker.read_text().strip() if marker.exists() else ""
            pgid = int(text) if text else None
            time.sleep(0.2)
        members = group_members(pgid)
        shm = {n for n in _shm_used_by(members) if n.startswith("psm_")}
        assert members and shm  # the child and Lava's workers are alive and hold Lava's channels...
        caller.send_signal(signal.SIGTERM)
        assert caller.wait(timeout=60) == 130
        assert not group_members(pgid)  # ...and are gone
        assert all(not Path("/dev/shm", n).exists() for n in shm)
    finally:
        if caller.poll() is None:
            caller.kill()
        if pgid is not None and group_members(pgid):  # the fix failed: clean up after the orphaned group
            os.killpg(pgid, 9)
            for name in shm:
                Path("/dev/shm", name).unlink(missing_ok=True)
