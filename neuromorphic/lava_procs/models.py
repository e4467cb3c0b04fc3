"""PyLoihiProcessModels of the host processes and of the on-chip ``DiagonalSynapse`` (fixed_pt: integer ports,
floating_pt: float ports).

The numeric work is :mod:`spkdiff.host` (mask sampler, SDID input spikes), :mod:`spkdiff.generation` (keyed
generator, embedding, decode) and the stage's first synapse (:func:`~spkdiff.neuromorphic.chip_plan.host_current`),
so Lava and the simulator compute the same numbers.

Timing (LoihiProtocol).  In the spiking phase of Lava step ``t`` (1-based) a host process sends what the
stage call running at ``t`` needs; a LIF fed directly integrates it at ``t``, one behind a ``Conv``/``Dense``
at ``t + 1``.  In the management phase after step ``t`` (``post_guard``/``run_post_mgmt``, where RefPorts
may read and write other processes' Vars) it zeroes ``u`` and ``v`` of population ``k`` when ``t`` is the
call's step ``d_k - 1`` (step 0: the previous call's last step), reads the read-out after the call's last
step and prepares what the next step sends.  Synapse buffers (``Conv``/``Dense`` ``a_buff``) are not
written: what they hold from before a call reaches population ``k`` at or before the call's step
``d_k - 1`` and is dropped by that zeroing.

Reconstruction (:class:`EncoderLookupProcess`): the encoder's last LIF sends its spikes of Lava step ``t`` in
that step, and an InPort receives them in the same step (no synapse between them, so no delay): the read-out
population's simulator step ``j`` arrives at call step ``d_R + j``.

The RefPorts ``u{j}``/``v{j}`` depend on the stage, so :func:`host_models` derives, per process instance,
a model class that declares them; pass it as ``Loihi2SimCfg(exception_proc_model_map=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from spkdiff.generation import batch_generator, decode_readout, embed_tokens
from spkdiff.host import patch_logits, sdid_input_spikes
from spkdiff.neuromorphic.chip_plan import chw_to_whc, readout_value, reset_offset, whc_to_chw
from spkdiff.neuromorphic.lava_procs.processes import (
    CodebookLookupProcess,
    DiagonalSynapse,
    EncoderLookupProcess,
    ImageSinkProcess,
    ImageSourceProcess,
    MaskSamplerProcess,
)
from spkdiff.neuromorphic.loihi import lava_dense_weights


class _Resetting(PyLoihiProcessModel):
    """Zeroes the stage's populations (RefPorts ``u{j}``, ``v{j}``) when a call's wave reaches them."""

    stage = ""  # the Timeline stage whose calls this process serves

    def _resets_due(self, t: int) -> list[int]:
        tl, plan = self.proc_params["timeline"], self.proc_params["plan"]
        due = []
        for j, pop in enumerate(plan.populations.values()):
            call = tl.at(t + 1 - reset_offset(pop))
            if call is not None and call.stage == self.stage and call.step == 1:
                due.append(j)
        return due

    def _zero(self, due: list[int]) -> None:
        for j in due:
            for var in "uv":
                port = getattr(self, f"{var}{j}")
                port.write(np.zeros(port._shape, port._d_type))
        for j in due:  # wait for the acknowledgements once all writes are out
            getattr(self, f"v{j}").wait()
            getattr(self, f"u{j}").wait()


class _MaskSamplerBase(_Resetting):
    stage = "sdid"
    tokens: np.ndarray = LavaPyType(np.ndarray, np.int32)
    steps_done: np.ndarray = LavaPyType(np.ndarray, np.int32)
    readouts: np.ndarray = LavaPyType(np.ndarray, float)
    states: np.ndarray = LavaPyType(np.ndarray, float)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        p = proc_params
        self.timeline, self.plan, self.sampler = p["timeline"], p["plan"], p["sampler"]
        self.readout_j = list(self.plan.populations).index(self.plan.readout)
        self.state: Any = None  # the batch's spkdiff.host.SamplerState
        self.generator: torch.Generator | None = None
        self.spikes: np.ndarray | None = None  # (B, *Lava input shape) for the current diffusion step
        self.final: np.ndarray | None = None  # the batch's tokens once sampled
        self.values: list[torch.Tensor] = []  # read-outs of the current diffusion step, per image
        self.call_index = 0

    def _prepare(self) -> None:
        p = self.proc_params
        x = sdid_input_spikes(self.state.tokens, self.sampler.time_of(self.state), p["num_codes"],
                              p["diffusion_steps"], p["time_bins"], p["patch"])
        self.spikes = np.stack([chw_to_whc(x[b].numpy()) for b in range(x.shape[0])]).astype(self.spike_dtype)

    def run_spk(self) -> None:
        self.steps_done[0] = self.time_step
        call = self.timeline.at(self.time_step)
        if call is not None and call.stage == "sdid" and call.diffusion_step == 0 and call.image == 0 \
                and call.step == 1:  # a new batch
            self.state = self.sampler.start(self.timeline.batches[call.batch], tuple(self.proc_params["grid"]))
            self.generator = batch_generator(self.proc_params["seed"], call.batch)
            self.final = None
            self._prepare()
        if call is not None and call.stage == "sdid":
            self.spikes_out.send(self.spikes[call.image])
        else:
            self.spikes_out.send(np.zeros(self.spikes_out._shape, self.spike_dtype))
        tok = np.full(self.tokens_out._shape, -1, np.int32)
        if self.final is not None:
            tok[: len(self.final)] = self.final
        self.tokens_out.send(tok)

    def post_guard(self) -> bool:
        call = self.timeline.at(self.time_step)
        read = call is not None and call.stage == "sdid" and call.step == self.timeline.sdid_len
        return read or bool(self._resets_due(self.time_step))

    def run_post_mgmt(self) -> None:
        t = self.time_step
        call = self.timeline.at(t)
        if call is not None and call.stage == "sdid" and call.step == self.timeline.sdid_len:
            raw = whc_to_chw(np.asarray(getattr(self, f"v{self.readout_j}").read()))
            self.values.append(readout_value(self.plan, raw))
            if self.proc_params["record"]:
                self.readouts[self.call_index] = raw
                self.states[self.call_index] = np.concatenate(
                    [whc_to_chw(np.asarray(getattr(self, f"{var}{j}").read(), float)).ravel()
                     for j in range(len(self.plan.populations)) for var in "uv"])
            self.call_index += 1
            if call.image == self.timeline.batches[call.batch] - 1:  # the batch's logits: one sampler step
                logits = patch_logits(torch.stack(self.values) / self.plan.steps, self.proc_params["patch"])
                self.values = []
                self.sampler.update(self.state, logits, self.generator)
                if self.state.i == self.sampler.steps:
                    if self.state.masked.any():
                        raise RuntimeError("sampler left masked tokens")
                    self.final = self.state.tokens.numpy().astype(np.int32)
                    start = self.timeline.first_image(call.batch)
                    self.tokens[start: start + len(self.final)] = self.final
                else:
                    self._prepare()
        self._zero(self._resets_due(t))


class _CurrentSource(_Resetting):
    """Sends a stage's input current: at the stage's first step of a batch, ``_batch_current`` (B, *Lava input
    shape) of the batch; during call ``b`` image ``b``'s current on ``a_out`` (zeros outside the stage's calls).
    ``_receive`` takes the step's input first (none by default)."""

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self.timeline, self.plan = proc_params["timeline"], proc_params["plan"]
        self.current: np.ndarray | None = None  # (B, *Lava input shape) of the batch

    def _receive(self, call: Any) -> None:
        pass

    def _batch_current(self, call: Any) -> torch.Tensor:
        """The first synapse's current of the batch's images, torch layout (B, C, H, W)."""
        raise NotImplementedError

    def run_spk(self) -> None:
        call = self.timeline.at(self.time_step)
        self._receive(call)
        ours = call is not None and call.stage == self.stage
        if ours and call.image == 0 and call.step == 1:
            self.current = np.stack([chw_to_whc(c) for c in self._batch_current(call)]).astype(self.current_dtype)
        self.a_out.send(self.current[call.image] if ours else np.zeros(self.a_out._shape, self.current_dtype))

    def post_guard(self) -> bool:
        return bool(self._resets_due(self.time_step))

    def run_post_mgmt(self) -> None:
        self._zero(self._resets_due(self.time_step))


class _GeneratorFeed(_CurrentSource):
    """Feeds the generator: the batch's tokens (``_batch_tokens``) -> embedding (Eq 8) -> the generator's first
    synapse (:func:`host_current`)."""

    stage = "generator"

    def _batch_tokens(self, call: Any) -> torch.Tensor:
        raise NotImplementedError

    def _codebook(self) -> torch.Tensor:
        raise NotImplementedError

    def _batch_current(self, call: Any) -> torch.Tensor:
        from spkdiff.neuromorphic.chip_plan import host_current

        return host_current(self.plan, embed_tokens(self._codebook(), self._batch_tokens(call)))  # Eq 8: z^Q = Z[h]


class _CodebookLookupBase(_GeneratorFeed):
    """Generation: the mask sampler's tokens in (``tokens_in``)."""

    def _receive(self, call: Any) -> None:
        self.received = self.tokens_in.recv()

    def _codebook(self) -> torch.Tensor:
        return self.proc_params["codebook"]

    def _batch_tokens(self, call: Any) -> torch.Tensor:
        h = torch.from_numpy(np.asarray(self.received[: self.timeline.batches[call.batch]]).astype(np.int64))
        if (h < 0).any():
            raise RuntimeError("the mask sampler sent no tokens for the batch")
        return h


class _EncoderLookupBase(_GeneratorFeed):
    """Reconstruction: the encoder's last-layer spikes in (``spikes_in``); Eq 4-7 once the batch's last encoder
    step has arrived (:class:`spkdiff.generation.CodebookLookup`, the simulator backend's function)."""

    tokens: np.ndarray = LavaPyType(np.ndarray, np.int32)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        enc = proc_params["encoder_plan"]
        self.first_step = enc.populations[enc.readout].depth  # the read-out's simulator step 0 (call step d_R)
        self.steps: list[np.ndarray] = []  # this call's spikes, simulator step by step (C, h, w)
        self.images: list[np.ndarray] = []  # the batch's spike trains so far (T_s, C, h, w)
        self.batch: torch.Tensor | None = None  # the batch's tokens once looked up

    def _codebook(self) -> torch.Tensor:
        return self.proc_params["lookup"].codebook

    def _receive(self, call: Any) -> None:
        spikes = self.spikes_in.recv()
        if call is None or call.stage != "encoder" or call.step < self.first_step:
            return  # before d_R the read-out population is not yet reset: its spikes are not the call's
        self.steps.append(whc_to_chw(np.asarray(spikes)))
        if call.step < self.timeline.sdid_len:
            return
        self.images.append(np.stack(self.steps))
        self.steps = []
        if call.image == self.timeline.batches[call.batch] - 1:  # the batch's last encoder step: Eq 4-7
            train = torch.from_numpy(np.stack(self.images, axis=1).astype(np.float32))  # (T_s, B, C, h, w)
            self.images = []
            self.batch = self.proc_params["lookup"](train)
            start = self.timeline.first_image(call.batch)
            self.tokens[start: start + len(self.batch)] = self.batch.numpy().astype(np.int32)

    def _batch_tokens(self, call: Any) -> torch.Tensor:
        if self.batch is None:
            raise RuntimeError("the encoder sent no spikes for the batch")
        batch, self.batch = self.batch, None
        return batch


class _ImageSourceBase(_CurrentSource):
    """Sends the encoder's input current: the first synapse of every image's pixel currents ``x - 0.5``
    (:func:`host_current`)."""

    stage = "encoder"

    def _batch_current(self, call: Any) -> torch.Tensor:
        from spkdiff.neuromorphic.chip_plan import host_current

        start = self.timeline.first_image(call.batch)
        images = self.proc_params["images"][start: start + self.timeline.batches[call.batch]]
        return host_current(self.plan, torch.from_numpy(np.asarray(images)) - 0.5)


class _ImageSinkBase(PyLoihiProcessModel):
    images: np.ndarray = LavaPyType(np.ndarray, float)
    readouts: np.ndarray = LavaPyType(np.ndarray, float)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self.timeline, self.plan = proc_params["timeline"], proc_params["plan"]
        self.values: list[torch.Tensor] = []

    def post_guard(self) -> bool:
        call = self.timeline.at(self.time_step)
        return call is not None and call.stage == "generator" and call.step == self.timeline.gen_len

    def run_post_mgmt(self) -> None:
        p = self.proc_params
        call = self.timeline.at(self.time_step)
        raw = whc_to_chw(np.asarray(self.v.read()))
        index = self.timeline.first_image(call.batch) + call.image
        if p["record"]:
            self.readouts[index] = raw
        self.values.append(readout_value(self.plan, raw))
        if call.image == self.timeline.batches[call.batch] - 1:
            images = decode_readout(torch.stack(self.values), p["depth_to_space"], p["crop"])
            self.values = []
            start = self.timeline.first_image(call.batch)
            self.images[start: start + len(images)] = images.double().numpy()


_TAG_DTYPES = {"fixed_pt": np.int32, "floating_pt": float}


def _value_port(kind: Any, dtype: Any) -> LavaPyType:
    """A port type carrying ``dtype`` values (int32 ports declare their 32-bit precision)."""
    return LavaPyType(kind, np.int32, precision=32) if dtype is np.int32 else LavaPyType(kind, dtype)


def _tagged_models(proc: type, base: type, ports: Callable[[Any], dict[str, Any]]) -> dict[tuple[type, str], type]:
    """One model class per tag (Lava selects models by tag): ``base`` plus ``ports(dtype)`` of that tag."""
    out = {}
    for select_tag, dtype in _TAG_DTYPES.items():
        cls = type(f"Py{proc.__name__.removesuffix('Process')}_{select_tag}", (base,),
                   {"__module__": __name__, **ports(dtype)})
        out[(proc, select_tag)] = implements(proc=proc, protocol=LoihiProtocol)(requires(CPU)(tag(select_tag)(cls)))
    return out


MODELS = {
    **_tagged_models(MaskSamplerProcess, _MaskSamplerBase, lambda dtype: {
        "spike_dtype": dtype, "spikes_out": _value_port(PyOutPort.VEC_DENSE, dtype),
        "tokens_out": _value_port(PyOutPort.VEC_DENSE, np.int32)}),
    **_tagged_models(CodebookLookupProcess, _CodebookLookupBase, lambda dtype: {
        "current_dtype": dtype, "tokens_in": _value_port(PyInPort.VEC_DENSE, np.int32),
        "a_out": _value_port(PyOutPort.VEC_DENSE, dtype)}),
    **_tagged_models(EncoderLookupProcess, _EncoderLookupBase, lambda dtype: {
        "current_dtype": dtype, "spikes_in": _value_port(PyInPort.VEC_DENSE, dtype),
        "a_out": _value_port(PyOutPort.VEC_DENSE, dtype)}),
    **_tagged_models(ImageSourceProcess, _ImageSourceBase, lambda dtype: {
        "current_dtype": dtype, "a_out": _value_port(PyOutPort.VEC_DENSE, dtype)}),
    **_tagged_models(ImageSinkProcess, _ImageSinkBase, lambda dtype: {"v": LavaPyType(PyRefPort.VEC_DENSE, dtype)}),
}


def host_models(procs: list[Any], select_tag: str) -> dict[Any, type]:
    """``process -> model class`` for ``Loihi2SimCfg(exception_proc_model_map=...)``: the tag's model,
    subclassed to declare the instance's population RefPorts (int32 ``u``/``v`` in fixed_pt, float else)."""
    dtype = np.int32 if select_tag == "fixed_pt" else float
    out = {}
    for proc in procs:
        base = MODELS[(type(proc), select_tag)]
        refs = {port.name: LavaPyType(PyRefPort.VEC_DENSE, dtype) for port in proc.ref_ports
                if not hasattr(base, port.name)}
        out[proc] = type(f"{base.__name__}_{proc.name}", (base,), refs) if refs else base
    return out


# ----------------------------------------------------------------------------- on-chip: one-to-one synapses


class _DiagonalSynapseBase(PyLoihiProcessModel):
    """:class:`DiagonalSynapse`: a ring of ``delay + 1`` columns, O(N) per step.  The buffer moves as in Lava's
    ``DelayDense`` models: send column 0, clear it, shift left, add this step's input at column ``delay``."""

    def _accumulate(self, s_in: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_spk(self) -> None:
        self.a_out.send(self.a_buff[:, 0])
        s_in = self.s_in.recv().astype(bool)
        self.a_buff[:, 0] = 0
        self.a_buff = np.roll(self.a_buff, -1, axis=1)
        self.a_buff[:, -1] += self._accumulate(s_in)


@implements(proc=DiagonalSynapse, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDiagonalSynapseFloat(_DiagonalSynapseBase):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    weights: np.ndarray = LavaPyType(np.ndarray, float)
    a_buff: np.ndarray = LavaPyType(np.ndarray, float)

    def _accumulate(self, s_in: np.ndarray) -> np.ndarray:
        return np.where(s_in, self.weights, 0.0)


@implements(proc=DiagonalSynapse, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyDiagonalSynapseBitAcc(_DiagonalSynapseBase):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=16)
    weights: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self._weights_set = False  # clipped and truncated once, on the first step (as Lava's Dense)

    def _accumulate(self, s_in: np.ndarray) -> np.ndarray:
        if not self._weights_set:
            self.weights = lava_dense_weights(self.weights, self.proc_params.get("sign_mode"),
                                              self.proc_params.get("num_weight_bits", 8)).numpy().astype(np.int32)
            self._weights_set = True
        accum = np.where(s_in, self.weights, 0).astype(np.int32)
        exp = int(self.proc_params.get("weight_exp", 0))
        return np.left_shift(accum, exp) if exp > 0 else np.right_shift(accum, -exp)
