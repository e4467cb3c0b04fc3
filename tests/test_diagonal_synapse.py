"""spkdiff's one-to-one Lava synapse (neuromorphic.lava_procs.DiagonalSynapse) against Lava's own DelayDense with a
diagonal weight matrix: the same a_out at every step, bit for bit in fixed_pt (clip, truncation, weight_exp,
sign modes) and in floating_pt, for the delays the chip plan uses."""

from __future__ import annotations

import numpy as np
import pytest
from lava_reference import DiagonalCase, run_diagonal_cases

from spkdiff.neuromorphic.lava_compat import lava_available
from spkdiff.neuromorphic.lava_runner import run_isolated

pytestmark = [pytest.mark.skipif(not lava_available(), reason="lava-nc not importable"), pytest.mark.timeout(300)]

MIXED, EXCITATORY, INHIBITORY = 1, 2, 3  # lava.utils.weightutils.SignMode


def _cases() -> list[tuple[DiagonalCase, str]]:
    rng = np.random.default_rng(0)
    n, steps = 7, 14
    spikes = (rng.random((n, steps)) < 0.5).astype(np.int32)
    mixed = np.array([300, -300, 255, -256, 17, -3, 0])  # out of range both ways: clipped
    cases = [
        (DiagonalCase(spikes, mixed, delay=0), "fixed_pt"),
        (DiagonalCase(spikes, mixed, delay=1, weight_exp=-3, sign_mode=MIXED), "fixed_pt"),
        (DiagonalCase(spikes, mixed, delay=3, weight_exp=2), "fixed_pt"),
        (DiagonalCase(spikes, np.abs(mixed) + 1, delay=2, weight_exp=-1, sign_mode=EXCITATORY), "fixed_pt"),
        (DiagonalCase(spikes, -np.abs(mixed) - 5, delay=5, sign_mode=INHIBITORY), "fixed_pt"),
        (DiagonalCase(spikes, rng.normal(size=n), delay=2), "floating_pt"),
    ]
    return cases


def test_diagonal_synapse_equals_delay_dense() -> None:
    cases = _cases()
    results = run_isolated(run_diagonal_cases, cases, timeout=240)
    for (case, tag), (ours, lavas) in zip(cases, results, strict=True):
        assert ours.shape == lavas.shape == (case.spikes.shape[1], case.spikes.shape[0])
        assert np.any(lavas != 0), f"{tag} delay {case.delay}: nothing arrived, the comparison would be empty"
        np.testing.assert_array_equal(ours, lavas, err_msg=f"{tag} delay {case.delay} exp {case.weight_exp}")
        # the first spikes arrive after the connection's own step plus the delay
        first = int(np.argmax(case.spikes.any(axis=0)))
        assert not np.any(ours[: first + 1 + case.delay])


def test_diagonal_synapse_rejects_bad_shapes() -> None:
    from spkdiff.neuromorphic.lava_procs.processes import DiagonalSynapse

    with pytest.raises(ValueError, match="must be a vector"):
        DiagonalSynapse(weights=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="delay must be in 0..63"):
        DiagonalSynapse(weights=np.zeros(3), delay=64)
