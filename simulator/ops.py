"""Executable nodes ("ops"): the interface and the float backend.

Lava-style split: :class:`Op` is the interface the executor sees (``gather`` incoming edges,
``run`` a sequence); the float backend is the table ``FLOAT_OPS`` (NIR node type -> Op class) and
every other numeric mode is a converter in ``spkdiff.simulator.engine.MODES`` that swaps in its own ops
(``"fixed"``: :mod:`spkdiff.simulator.fixed`).  An op processes a whole time sequence at once:

* stateless ops (synapses, reshapes) fold time into the batch, ``(T*B, *shape)``, and run one
  tensor operation; on a :class:`Signal` that is constant in time they run once;
* stateful ops (neurons) loop over time with in-place updates.

Float-mode equations (``dt`` in NIR time units; ``tau_s = tau / dt`` is in steps; forward Euler
with SpikingJelly's ``decay_input=True`` operation order, so float results are bit-identical)::

    LIF      h = v + (r*dt_r*x - (v - v_leak)) / tau_s;  s = h >= v_th;  v = s ? v_reset : h
    IF       h = v + r*dt*x;                               s = h >= v_th;  v = s ? v_reset : h
    LI       v = v + (r*x - (v - v_leak)) / tau_s                     (output v)
    I        v = v + r*dt*x                                            (output v)
    CubaLIF  i = i + (w_in*x - i) / tau_syn_s, then LIF on i with tau_mem_s (CubaLI: no spike)
    Threshold s = x >= threshold
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import nir
import numpy as np
import torch
import torch.nn.functional as F

from spkdiff.errors import SpkdiffError
from spkdiff.neuromorphic.nir_graph import conv_padding
from spkdiff.neuron import LIFStepParameters, lif_step

from .graph import Passthrough

Shape = tuple[int, ...]


@dataclass
class Signal:
    """A node's output over time.

    ``data`` is ``(T, B, *shape)``, or ``(B, *shape)`` when ``static`` (the same value at every
    step).  ``event`` marks spike counts (non-negative integers): synapses fed by events count
    synaptic operations, others count dense MACs.
    """

    data: torch.Tensor
    static: bool
    event: bool
    peak: float = 1.0  # for events: an upper bound of the values (spike counts), known without a pass

    def full(self, steps: int) -> torch.Tensor:
        """``(T, B, *shape)``, a broadcast view when static."""
        return self.data.expand(steps, *self.data.shape) if self.static else self.data


def _scalar_or_tensor(a: np.ndarray | float, shape: Shape, name: str) -> float | torch.Tensor:
    """A uniform parameter becomes a Python float (fast, and the exact constant SpikingJelly uses)."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        raise SpkdiffError(f"empty parameter {name}")
    flat = arr.reshape(-1)
    if np.all(flat == flat[0]):
        return float(flat[0])
    try:
        return torch.as_tensor(np.broadcast_to(arr, shape).copy(), dtype=torch.float32)
    except ValueError as err:
        raise SpkdiffError(f"parameter {name} of shape {arr.shape} does not fit the population {shape}") from err


def _pair(v: object) -> tuple[int, int]:
    arr = np.asarray(v).reshape(-1)
    return (int(arr[0]), int(arr[0])) if arr.size == 1 else (int(arr[0]), int(arr[1]))


class Op:
    """One executable node.

    ``kind`` tells the executor how to count it: ``"input"``, ``"output"``, ``"shape"`` (data
    movement only), ``"synapse"`` (weights: SOPs or MACs) or ``"neuron"`` (neuron updates, spikes).
    Subclasses set ``out_shape`` in ``__init__`` and implement :meth:`run`.
    """

    kind: ClassVar[str] = "shape"
    spiking: bool = False  # output is a spike train
    last_warnings: list[str] = []  # numeric problems of the last run (e.g. fixed-point overflow)

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        self.name = name
        self.node = node
        self.in_shape = tuple(in_shape)
        self.dt = dt
        self.out_shape: Shape = self.in_shape

    def gather(self, parts: list[tuple[str, Signal]]) -> Signal:
        """Combine the signals of all incoming edges (NIR: they sum; a backend may convert first)."""
        return sum_signals([sig for _, sig in parts])

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        raise NotImplementedError

    def state_names(self) -> tuple[str, ...]:
        return ()


def sum_signals(parts: list[Signal]) -> Signal:
    """Sum in edge order; constant ``(B, ...)`` parts broadcast against ``(T, B, ...)`` ones."""
    if len(parts) == 1:
        return parts[0]
    total = parts[0].data + parts[1].data
    for p in parts[2:]:
        total = total + p.data
    return Signal(total, all(p.static for p in parts), all(p.event for p in parts), sum(p.peak for p in parts))


class StatelessOp(Op):
    """``y = fn(x)`` per time step; time is folded into the batch."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _infer_out_shape(self) -> Shape:
        with torch.no_grad():
            return tuple(self.fn(torch.zeros(1, *self.in_shape)).shape[1:])

    def output_event(self, x: Signal) -> bool:
        return x.event

    def output_peak(self, x: Signal) -> float:
        return x.peak

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        d = x.data
        lead = d.shape[: d.dim() - len(self.in_shape)]
        y = self.fn(d.reshape(-1, *self.in_shape))
        return Signal(y.reshape(*lead, *y.shape[1:]), x.static, self.output_event(x), self.output_peak(x))


class InputOp(Op):
    kind = "input"

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        return x


class OutputOp(InputOp):
    kind = "output"


class PassOp(InputOp):
    kind = "shape"


class SynapseOp(StatelessOp):
    """A linear map with weights: counts SOPs on event input, dense MACs otherwise.

    ``apply(x, mask=True)`` evaluates the same map with weights replaced by ``weight != 0`` and no
    bias (``mask=False``: all weights 1).  The map is linear, so its gradient w.r.t. a ones input
    is the exact per-input fan-out (padding, stride, dilation and groups included) and its value
    on a ones input is the per-output fan-in.
    """

    kind = "synapse"
    ann_op: ClassVar[str] = "mac"  # priced as a MAC (weights) or an add (pooling) in the ANN equivalent

    def apply(self, x: torch.Tensor, mask: bool) -> torch.Tensor:
        raise NotImplementedError

    def output_event(self, x: Signal) -> bool:
        return False

    def fan_out(self, mask: bool = True) -> torch.Tensor:
        """Per input element: number of (non-zero, if ``mask``) weights that reach a valid output."""
        x = torch.ones(1, *self.in_shape, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(self.apply(x, mask).sum(), x)
        return grad[0].detach().round_()

    def fan_in(self, mask: bool = True) -> torch.Tensor:
        """Per output element: number of (non-zero) weights that read a real (non-padding) input."""
        with torch.no_grad():
            return self.apply(torch.ones(1, *self.in_shape, dtype=torch.float64), mask)[0].round_()


class AffineOp(SynapseOp):
    """``y = x W^T + b`` on the last axis (NIR Affine/Linear)."""

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        w = np.asarray(node.weight)
        if w.ndim != 2:
            raise SpkdiffError(f"{name}: only 2-D Affine/Linear weights are supported, got {w.shape}")
        self.weight = torch.as_tensor(w, dtype=torch.float32).contiguous()
        b = getattr(node, "bias", None)
        self.bias = None if b is None else torch.as_tensor(np.asarray(b), dtype=torch.float32).reshape(-1)
        # exporters that count Flatten dims with the batch axis leave e.g. (C, H*W) for an Affine that
        # reads C*H*W features: flatten the whole sample then
        self.flatten_all = self.in_shape[-1] != w.shape[1] and int(np.prod(self.in_shape)) == w.shape[1]
        if self.in_shape[-1] != w.shape[1] and not self.flatten_all:
            raise SpkdiffError(f"{name}: input shape {self.in_shape} does not end in the weight's "
                               f"{w.shape[1]} input features")
        self.out_shape = (w.shape[0],) if self.flatten_all else (*self.in_shape[:-1], w.shape[0])

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) if self.flatten_all else x

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._in(x), self.weight, self.bias)

    def current(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The output without the bias (``weight``: another weight of the same shape, e.g. in float64)."""
        return F.linear(self._in(x), self.weight if weight is None else weight)

    def apply(self, x: torch.Tensor, mask: bool) -> torch.Tensor:
        w = (self.weight != 0) if mask else torch.ones_like(self.weight)
        return F.linear(self._in(x), w.to(x.dtype))


class ConvOp(SynapseOp):
    """NIR Conv1d/Conv2d (zero padding, ``"same"``/``"valid"``/int/tuple, stride, dilation, groups)."""

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        w = np.asarray(node.weight)
        self.nd = w.ndim - 2
        self.weight = torch.as_tensor(w, dtype=torch.float32).contiguous()
        b = getattr(node, "bias", None)
        self.bias = None if b is None else torch.as_tensor(np.asarray(b), dtype=torch.float32).reshape(-1)

        def tup(v: object) -> tuple[int, ...]:
            arr = np.asarray(v).reshape(-1)
            return tuple(int(a) for a in (np.repeat(arr, self.nd) if arr.size == 1 else arr))

        self.stride = tup(node.stride)
        self.dilation = tup(node.dilation)
        self.groups = int(node.groups)
        if isinstance(node.padding, str) and node.padding == "same" and any(s != 1 for s in self.stride):
            raise SpkdiffError(f"{name}: padding 'same' needs stride 1")
        self.padding = conv_padding(node)  # "same" stays a string only when asymmetric
        self._conv = F.conv1d if self.nd == 1 else F.conv2d
        if len(self.in_shape) != self.nd + 1 or self.in_shape[0] != w.shape[1] * self.groups:
            raise SpkdiffError(f"{name}: input shape {self.in_shape} does not fit weight {tuple(w.shape)} "
                               f"with groups={self.groups}")
        try:
            self.out_shape = self._infer_out_shape()
        except RuntimeError as err:
            raise SpkdiffError(f"{name}: convolution does not fit input {self.in_shape}: {err}") from err

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def current(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The output without the bias (``weight``: another weight of the same shape, e.g. in float64)."""
        w = self.weight if weight is None else weight
        return self._conv(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def apply(self, x: torch.Tensor, mask: bool) -> torch.Tensor:
        w = (self.weight != 0) if mask else torch.ones_like(self.weight)
        return self._conv(x, w.to(x.dtype), None, self.stride, self.padding, self.dilation, self.groups)


class PoolOp(SynapseOp):
    """NIR SumPool2d/AvgPool2d (zero padding counted in the average, as SpikingJelly exports)."""

    ann_op = "add"

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        self.kernel = _pair(node.kernel_size)
        self.stride = _pair(node.stride)
        self.padding = _pair(node.padding)
        self.average = isinstance(node, nir.AvgPool2d)
        if len(self.in_shape) != 3:
            raise SpkdiffError(f"{name}: pooling needs a (C, H, W) input, got {self.in_shape}")
        self.out_shape = self._infer_out_shape()

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True,
                            divisor_override=None if self.average else 1)

    def output_event(self, x: Signal) -> bool:
        return x.event and not self.average  # a sum of spikes is a spike count

    def output_peak(self, x: Signal) -> float:
        return x.peak * self.kernel[0] * self.kernel[1]

    def apply(self, x: torch.Tensor, mask: bool) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True, divisor_override=1)


class ScaleOp(SynapseOp):
    """``y = x * scale`` elementwise (one synapse per element)."""

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        self.scale = torch.as_tensor(np.asarray(node.scale), dtype=torch.float32)
        self.out_shape = self._infer_out_shape()

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def apply(self, x: torch.Tensor, mask: bool) -> torch.Tensor:
        w = (self.scale != 0) if mask else torch.ones_like(self.scale)
        return x * w.to(x.dtype)


class FlattenOp(StatelessOp):
    """NIR Flatten: ``start_dim``/``end_dim`` index the per-sample shape (no batch axis), as in NIR."""

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        nd = len(self.in_shape)
        self.start = int(node.start_dim) % nd + 1
        self.end = int(node.end_dim) % nd + 1
        self.out_shape = self._infer_out_shape()

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start, self.end)


class DelayOp(Op):
    """NIR Delay: ``y[t] = x[t - d]`` with ``d = round(delay / dt)`` steps (zero before)."""

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        d = np.rint(np.asarray(node.delay, dtype=np.float64) / dt).astype(np.int64)
        if np.any(d < 0):
            raise SpkdiffError(f"{name}: negative delay")
        self.delay = np.broadcast_to(d, self.in_shape).copy()

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        xs = x.full(steps)
        uniform = np.all(self.delay == self.delay.flat[0])
        if uniform:
            k = int(self.delay.flat[0])
            y = torch.zeros_like(xs)
            if k < steps:
                y[k:] = xs[: steps - k]
            return Signal(y, False, x.event, x.peak)
        nd = len(self.in_shape)
        t = torch.arange(steps).view(steps, 1, *([1] * nd))
        src = (t - torch.as_tensor(self.delay).view(1, 1, *self.in_shape)).expand(steps, xs.shape[1], *self.in_shape)
        y = torch.gather(xs, 0, src.clamp(min=0))
        return Signal(y.masked_fill(src < 0, 0.0), False, x.event, x.peak)


class ThresholdOp(StatelessOp):
    """NIR Threshold: ``s = x >= threshold`` (Heaviside with H(0) = 1, as SpikingJelly)."""

    kind = "neuron"
    spiking = True

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        self.threshold = _scalar_or_tensor(node.threshold, self.in_shape, f"{name}.threshold")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return (x >= self.threshold).to(x.dtype)

    def output_event(self, x: Signal) -> bool:
        return True

    def output_peak(self, x: Signal) -> float:
        return 1.0


class NeuronOp(Op):
    """Base for stateful neurons: loops over time; ``record`` gets ``(T, B, *shape)`` state traces.

    The LIF family (LIF, LI, IF, I) is one loop (:func:`_lif_loop`) with different constants: input
    ``gain`` (r for LIF/LI, r*dt for IF/I), ``tau`` (None: no leak), ``v_leak``, ``v_th``, ``v_reset``.
    """

    kind = "neuron"
    gain: float | torch.Tensor = 1.0
    tau: float | torch.Tensor | None = None
    v_leak: float | torch.Tensor = 0.0
    v_th: float | torch.Tensor = 0.0
    v_reset: float | torch.Tensor = 0.0

    def _prepare(self, x: Signal, steps: int, gain: float | torch.Tensor) -> tuple[torch.Tensor, bool, int]:
        """Scale the input once for the whole sequence (``gain * x``; skipped when gain is exactly 1)."""
        d = x.data
        if not (isinstance(gain, float) and gain == 1.0):
            d = d * gain
        batch = d.shape[0] if x.static else d.shape[1]
        return d, x.static, batch

    def _threshold_and_reset(self, node: nir.NIRNode, name: str) -> None:
        self.v_th = _scalar_or_tensor(node.v_threshold, self.in_shape, f"{name}.v_threshold")
        self.v_reset = _scalar_or_tensor(node.v_reset, self.in_shape, f"{name}.v_reset")

    def state_names(self) -> tuple[str, ...]:
        return ("v",)

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        d, static, batch = self._prepare(x, steps, self.gain)
        return Signal(_lif_loop(d, static, steps, batch, self.in_shape, self.tau, self.v_leak, self.v_th,
                                self.v_reset, spiking=self.spiking, record=record), False, self.spiking)


class LIOp(NeuronOp):
    """NIR LI: tau dv/dt = (v_leak - v) + r I (no threshold)."""

    spiking = False

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        shp = self.in_shape
        self.tau = _scalar_or_tensor(np.asarray(node.tau, dtype=np.float64) / dt, shp, f"{name}.tau")
        self.gain = _scalar_or_tensor(node.r, shp, f"{name}.r")
        self.v_leak = _scalar_or_tensor(node.v_leak, shp, f"{name}.v_leak")


class LIFOp(LIOp):
    """NIR LIF: LI plus threshold and reset."""

    spiking = True

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        self._threshold_and_reset(node, name)


class IOp(NeuronOp):
    """NIR I: dv/dt = r I (no leak, no threshold)."""

    spiking = False

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        self.gain = _scalar_or_tensor(np.asarray(node.r, dtype=np.float64) * dt, self.in_shape, f"{name}.r")


class IFOp(IOp):
    """NIR IF: I plus threshold and reset."""

    spiking = True

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        self._threshold_and_reset(node, name)


class CubaLIFOp(NeuronOp):
    spiking = True

    def __init__(self, name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> None:
        super().__init__(name, node, in_shape, dt)
        shp = self.in_shape
        self.spiking = isinstance(node, nir.CubaLIF)
        self.tau_syn = _scalar_or_tensor(np.asarray(node.tau_syn, dtype=np.float64) / dt, shp, f"{name}.tau_syn")
        self.tau_mem = _scalar_or_tensor(np.asarray(node.tau_mem, dtype=np.float64) / dt, shp, f"{name}.tau_mem")
        self.r = _scalar_or_tensor(node.r, shp, f"{name}.r")
        self.v_leak = _scalar_or_tensor(node.v_leak, shp, f"{name}.v_leak")
        self.w_in = _scalar_or_tensor(node.w_in, shp, f"{name}.w_in")
        if self.spiking:
            self._threshold_and_reset(node, name)
        else:
            self.v_th = self.v_reset = 0.0

    def state_names(self) -> tuple[str, ...]:
        return ("i", "v")

    def run(self, x: Signal, steps: int, record: dict[str, torch.Tensor] | None) -> Signal:
        d, static, batch = self._prepare(x, steps, self.w_in)
        cur_rec = None if record is None else {}
        cur = _lif_loop(d, static, steps, batch, self.in_shape, self.tau_syn, 0.0, 0.0, 0.0, spiking=False,
                        record=cur_rec)
        if record is not None:
            record["i"] = cur
        if not (isinstance(self.r, float) and self.r == 1.0):
            cur = cur * self.r
        y = _lif_loop(cur, False, steps, batch, self.in_shape, self.tau_mem, self.v_leak, self.v_th, self.v_reset,
                      spiking=self.spiking, record=record)
        return Signal(y, False, self.spiking)


def _lif_loop(x: torch.Tensor, static: bool, steps: int, batch: int, shape: Shape,
              tau: float | torch.Tensor | None, v_leak: float | torch.Tensor, v_th: float | torch.Tensor,
              v_reset: float | torch.Tensor, *, spiking: bool,
              record: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """The shared neuron time loop (see the module docstring); returns spikes or, if not spiking, v.

    Each step is :func:`spkdiff.neuron.lif_step` (Eq 1-3; leaky if ``tau`` is given, else an integrator).
    Initial state: ``v = v_leak`` (leaky) or ``v_reset`` (integrate-and-fire), 0 for I.
    """
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    out = torch.empty((steps, batch, *shape), dtype=dtype)
    trace = torch.empty_like(out) if (record is not None and spiking) else None
    v0 = v_leak if tau is not None else (v_reset if spiking else 0.0)
    v = torch.empty((batch, *shape), dtype=dtype)
    v.copy_(torch.as_tensor(v0, dtype=dtype).expand_as(v))
    params = LIFStepParameters(tau, v_leak, v_th, v_reset, spiking)
    for t in range(steps):
        step = lif_step(x if static else x[t], v, params)
        v = step.v
        out[t].copy_(step.spike if spiking else v)
        if trace is not None:
            trace[t].copy_(v)
    if record is not None:
        record["v"] = trace if spiking else out
    return out


OpFactory = Callable[[str, nir.NIRNode, Shape, float], Op]

#: NIR node type -> op class of the float backend.
FLOAT_OPS: dict[type, OpFactory] = {
    nir.Input: InputOp,
    nir.Output: OutputOp,
    Passthrough: PassOp,
    nir.Affine: AffineOp,
    nir.Linear: AffineOp,
    nir.Conv1d: ConvOp,
    nir.Conv2d: ConvOp,
    nir.SumPool2d: PoolOp,
    nir.AvgPool2d: PoolOp,
    nir.Scale: ScaleOp,
    nir.Flatten: FlattenOp,
    nir.Delay: DelayOp,
    nir.Threshold: ThresholdOp,
    nir.LIF: LIFOp,
    nir.LI: LIOp,
    nir.IF: IFOp,
    nir.I: IOp,
    nir.CubaLIF: CubaLIFOp,
    nir.CubaLI: CubaLIFOp,
}


def build_op(name: str, node: nir.NIRNode, in_shape: Shape, dt: float) -> Op:
    """Instantiate the float op for ``node``."""
    factory = FLOAT_OPS.get(type(node))
    if factory is None:
        raise SpkdiffError(f"node {name!r}: NIR {type(node).__name__} is not supported by the simulator")
    return factory(name, node, in_shape, dt)
