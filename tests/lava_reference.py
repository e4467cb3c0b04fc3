"""Reference runs of small Lava graphs under ``Loihi2SimCfg(select_tag="fixed_pt")``, recording every step.

These functions import Lava and start its multiprocessing runtime: call them through
:func:`spkdiff.neuromorphic.lava_runner.run_isolated` (timeout, no orphans).  They are what the bit-exact
tests of :mod:`spkdiff.neuromorphic.loihi` compare against.

Graph: ``RingBuffer(spikes) -> Dense|Conv -> LIF``, with one ``Monitor`` per recorded quantity (Lava 0.10's
``Monitor`` supports a single probe).  Lava's timing: at step ``t`` (1-based) the ring buffer emits column
``t-1``, the connection sends what it accumulated at step ``t-1`` (zeros at step 1), so the LIF at step ``t``
integrates ``connection(spikes[..., t-2])``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LifSpec:
    """Integer LIF parameters as Lava's ``LIF`` process takes them (``bias_*`` scalars or per-neuron arrays)."""

    du: int
    dv: int
    vth: int
    bias_mant: Any = 0
    bias_exp: Any = 0


@dataclass
class DenseCase:
    spikes: np.ndarray  # (n_in, T) 0/1
    weights: np.ndarray  # (n_out, n_in) int, passed to Dense as is
    lif: LifSpec
    weight_exp: int = 0
    num_weight_bits: int = 8
    sign_mode: int | None = None  # lava.utils.weightutils.SignMode value; None: Lava decides


@dataclass
class ConvCase:
    spikes: np.ndarray  # (W, H, C_in, T) 0/1, Lava's WHC layout
    weight: np.ndarray  # (C_out, kW, kH, C_in/groups) int, Lava layout (convolution, not correlation)
    lif: LifSpec
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    extra: dict = field(default_factory=dict)


def _lif(shape: tuple[int, ...], spec: LifSpec):
    from lava.proc.lif.process import LIF

    def arr(x: Any) -> Any:
        return np.broadcast_to(np.asarray(x), shape).copy() if np.ndim(x) else int(x)

    return LIF(shape=shape, du=int(spec.du), dv=int(spec.dv), vth=int(spec.vth),
               bias_mant=arr(spec.bias_mant), bias_exp=arr(spec.bias_exp))


def _run_recorded(src, conn, lif, num_steps: int) -> dict[str, np.ndarray]:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.monitor.process import Monitor

    src.s_out.connect(conn.s_in)
    conn.a_out.connect(lif.a_in)
    monitors = {"u": Monitor(), "v": Monitor(), "s": Monitor()}
    monitors["u"].probe(lif.u, num_steps)
    monitors["v"].probe(lif.v, num_steps)
    monitors["s"].probe(lif.s_out, num_steps)
    try:
        lif.run(condition=RunSteps(num_steps=num_steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        out = {}
        for key, mon in monitors.items():
            data = mon.get_data()[lif.name]
            out[key] = np.asarray(data["s_out" if key == "s" else key]).astype(np.int64)
    finally:
        lif.stop()
    return out


def _fixed_pt_kwargs(weight_exp: int, num_weight_bits: int, sign_mode: int | None) -> dict[str, Any]:
    """The fixed_pt keyword arguments of Lava's ``Dense``/``DelayDense`` (and of ``DiagonalSynapse``)."""
    from lava.utils.weightutils import SignMode

    kwargs: dict[str, Any] = {"weight_exp": int(weight_exp), "num_weight_bits": int(num_weight_bits)}
    if sign_mode is not None:
        kwargs["sign_mode"] = SignMode(sign_mode)
    return kwargs


def run_dense_lif(case: DenseCase) -> dict[str, np.ndarray]:
    """Run ``RingBuffer -> Dense -> LIF``; return ``u``, ``v``, ``s`` of shape ``(T, n_out)`` (int64)."""
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer

    kwargs = _fixed_pt_kwargs(case.weight_exp, case.num_weight_bits, case.sign_mode)
    src = RingBuffer(data=np.asarray(case.spikes, dtype=np.int32))
    dense = Dense(weights=np.asarray(case.weights, dtype=np.int32), **kwargs)
    lif = _lif((case.weights.shape[0],), case.lif)
    return _run_recorded(src, dense, lif, case.spikes.shape[-1])


def run_conv_lif(case: ConvCase) -> dict[str, np.ndarray]:
    """Run ``RingBuffer -> Conv -> LIF``; return ``u``, ``v``, ``s`` of shape ``(T, W_out, H_out, C_out)``."""
    from lava.proc.conv.process import Conv
    from lava.proc.io.source import RingBuffer

    src = RingBuffer(data=np.asarray(case.spikes, dtype=np.int32))
    conv = Conv(weight=np.asarray(case.weight, dtype=np.int32), input_shape=tuple(case.spikes.shape[:3]),
                stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups)
    lif = _lif(tuple(int(d) for d in conv.output_shape), case.lif)
    return _run_recorded(src, conv, lif, case.spikes.shape[-1])


def run_cases(cases: list[DenseCase | ConvCase]) -> list[dict[str, np.ndarray]]:
    """Run several cases one after the other in this process (one child start for all of them)."""
    return [run_dense_lif(c) if isinstance(c, DenseCase) else run_conv_lif(c) for c in cases]


def count_process_runs(job: Callable[..., Any], *args: Any) -> tuple[Any, list[str]]:
    """(in the Lava child) ``job(*args)`` and the names of the processes whose ``run`` it called, in order:
    one entry means one Lava graph run once."""
    from lava.magma.core.process.process import AbstractProcess

    calls: list[str] = []
    run = AbstractProcess.run

    def counting(self: Any, *a: Any, **k: Any) -> Any:
        calls.append(self.name)
        return run(self, *a, **k)

    AbstractProcess.run = counting
    try:
        return job(*args), calls
    finally:
        AbstractProcess.run = run


@dataclass
class DiagonalCase:
    spikes: np.ndarray  # (n, T) 0/1
    weights: np.ndarray  # (n,): int for fixed_pt, float for floating_pt
    delay: int
    weight_exp: int = 0
    sign_mode: int | None = None  # lava.utils.weightutils.SignMode value; None: the models decide


def run_diagonal_and_delay_dense(case: DiagonalCase, select_tag: str) -> tuple[np.ndarray, np.ndarray]:
    """``a_out`` per step, shape ``(T, n)``, of spkdiff's ``DiagonalSynapse`` and of Lava's ``DelayDense`` with
    the diagonal weight matrix, both fed by one ``RingBuffer`` in one run."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import DelayDense
    from lava.proc.io.source import RingBuffer
    from lava.proc.monitor.process import Monitor

    from spkdiff.neuromorphic.lava_procs.processes import DiagonalSynapse

    fixed = select_tag == "fixed_pt"
    kwargs = _fixed_pt_kwargs(case.weight_exp, 8, case.sign_mode) if fixed else {}
    dtype = np.int32 if fixed else float
    src = RingBuffer(data=np.asarray(case.spikes, dtype=np.int32))
    ours = DiagonalSynapse(weights=np.asarray(case.weights, dtype=dtype), delay=case.delay, **kwargs)
    lavas = DelayDense(weights=np.diag(np.asarray(case.weights, dtype=dtype)),
                       delays=np.full((len(case.weights),) * 2, case.delay), **kwargs)
    steps = case.spikes.shape[-1]
    monitors = []
    for conn in (ours, lavas):
        src.s_out.connect(conn.s_in)
        monitors.append(Monitor())
        monitors[-1].probe(conn.a_out, steps)
    try:
        src.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag=select_tag))
        a, b = (np.asarray(m.get_data()[c.name]["a_out"]) for m, c in zip(monitors, (ours, lavas), strict=True))
    finally:
        src.stop()
    return a, b


def run_diagonal_cases(cases: list[tuple[DiagonalCase, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`run_diagonal_and_delay_dense` for each ``(case, select_tag)``, in this process."""
    return [run_diagonal_and_delay_dense(case, tag) for case, tag in cases]
