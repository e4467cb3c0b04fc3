"""Host-side Lava processes of the generative loop (their models: :mod:`.models`).

One Lava run samples images: ``MaskSamplerProcess --spikes_out--> SDID graph``, the SDID read-out's ``v``
``--RefPort--> MaskSamplerProcess --tokens_out--> CodebookLookupProcess --a_out--> ASG/decoder graph``,
the generator read-out's ``v`` ``--RefPort--> ImageSinkProcess``.  The sampler and the lookup also hold one
RefPort per ``u`` and ``v`` of every population of their graph to zero it between stage calls (management
phase).  Read-outs come in through RefPorts too: Lava's ``LIF`` exposes ``v`` only as a Var (its one
OutPort carries spikes, and the read-out integrators do not spike), and a RefPort read in the management
phase is Lava's way to read another process's Var during a run.
Reconstruction runs ``ImageSourceProcess --a_out--> encoder graph``, the encoder's last LIF
``s_out --> EncoderLookupProcess.spikes_in`` (spikes through an InPort), ``EncoderLookupProcess --a_out-->``
ASG/decoder graph and the same image sink.  Each host process takes the plan of its
stage (:class:`~spkdiff.neuromorphic.chip_plan.StagePlan`) and the run's
:class:`~spkdiff.neuromorphic.lava_generate.Timeline` as parameters.

On the chip side, :class:`DiagonalSynapse` carries a stage's one-to-one connections (residual skips, with their
synaptic delay).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from spkdiff.neuromorphic.chip_plan import input_shape, whc_shape


class _ResettingProcess(AbstractProcess):
    """A host process with RefPorts ``u{j}``/``v{j}`` to the populations of its stage (``plan`` order)."""

    def _population_refs(self, plan: Any) -> None:
        for j, pop in enumerate(plan.populations.values()):
            setattr(self, f"u{j}", RefPort(shape=whc_shape(pop.shape)))
            setattr(self, f"v{j}", RefPort(shape=whc_shape(pop.shape)))

    def connect_populations(self, lifs: dict[str, Any]) -> None:
        """Connect the RefPorts to the ``LIF`` processes' ``u`` and ``v`` (``lifs`` in plan order)."""
        for j, lif in enumerate(lifs.values()):
            getattr(self, f"u{j}").connect_var(lif.u)
            getattr(self, f"v{j}").connect_var(lif.v)


class MaskSamplerProcess(_ResettingProcess):
    """The absorbing-state mask sampler (:class:`spkdiff.host.MaskSampler`) as a Lava process.

    Every step it sends the current SDID call's token/time spikes on ``spikes_out`` (zeros outside SDID
    calls) and the finished batch's tokens on ``tokens_out`` (``-1`` while none).  In the management phase
    it zeroes the SDID's populations when the delayed wave of a call reaches them, and after the last step
    of a call reads the read-out ``v``; after the last image of a diffusion step it draws the next tokens.
    ``tokens``: all tokens at the end of the run, ``steps_done``: Lava steps run; with ``record``:
    ``readouts`` (raw read-out per call and image) and ``states`` (``u`` and ``v`` of every population at
    the end of each call, torch layout, flattened).
    """

    def __init__(self, *, plan: Any, timeline: Any, sampler: Any, seed: int, num_codes: int, diffusion_steps: int,
                 time_bins: int, grid: tuple[int, int], patch: int = 1, record: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(plan=plan, timeline=timeline, sampler=sampler, seed=seed, num_codes=num_codes,
                         diffusion_steps=diffusion_steps, time_bins=time_bins, grid=tuple(grid), patch=patch,
                         record=record, **kwargs)
        n, calls = timeline.num_images, timeline.num_sdid_calls
        self.spikes_out = OutPort(shape=input_shape(plan))
        self.tokens_out = OutPort(shape=(max(timeline.batches), *grid))
        self.tokens = Var(shape=(n, *grid), init=np.full((n, *grid), -1))
        self.steps_done = Var(shape=(1,), init=0)  # the Lava step counter, as the sampler saw it
        ro = plan.populations[plan.readout].shape
        state = sum(2 * int(np.prod(p.shape)) for p in plan.populations.values())
        self.readouts = Var(shape=(calls, *ro) if record else (1,), init=0)
        self.states = Var(shape=(calls, state) if record else (1,), init=0)
        self._population_refs(plan)


class CodebookLookupProcess(_ResettingProcess):
    """Tokens in -> code embedding ``z^Q = Z[h]`` (Eq 8) -> the ASG input population's current out.

    At the first step of a batch's generator calls it takes the batch's tokens from ``tokens_in`` and
    computes the input current of every image (the first synapse of the generator, as the simulator does);
    during generator call ``b`` it sends image ``b``'s current on ``a_out`` (zeros otherwise) and zeroes the
    generator's populations when the call's wave reaches them.
    """

    def __init__(self, *, plan: Any, timeline: Any, codebook: Any, grid: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(plan=plan, timeline=timeline, codebook=codebook, grid=tuple(grid), **kwargs)
        self.tokens_in = InPort(shape=(max(timeline.batches), *grid))
        self.a_out = OutPort(shape=input_shape(plan))
        self._population_refs(plan)


class ImageSourceProcess(_ResettingProcess):
    """Images in -> the encoder's input population current out (reconstruction).

    At the first step of a batch's encoder calls it computes every image's current from the pixel currents
    ``x - 0.5`` (the encoder's first synapse, as the simulator does); during encoder call ``b`` it sends image
    ``b``'s current on ``a_out`` (zeros otherwise) and zeroes the encoder's populations when the call's wave
    reaches them.  ``images``: (n, C, H, W) in [0, 1].
    """

    def __init__(self, *, plan: Any, timeline: Any, images: np.ndarray, **kwargs: Any) -> None:
        super().__init__(plan=plan, timeline=timeline, images=images, **kwargs)
        self.a_out = OutPort(shape=input_shape(plan))
        self._population_refs(plan)


class EncoderLookupProcess(_ResettingProcess):
    """The codebook lookup of reconstruction: the encoder's last-layer spikes in (InPort ``spikes_in``), Eq 4-8,
    the generator's input current out (``a_out``), as :class:`CodebookLookupProcess` does from tokens.

    It keeps the spikes of the read-out population's simulator steps ``0..T_s-1`` (call steps ``d_R..d_R+T_s-1``,
    see :mod:`~spkdiff.neuromorphic.chip_plan`); when the last encoder step of a batch's last image arrives it
    computes the batch's tokens with :class:`spkdiff.generation.CodebookLookup` (SFR, PSP, nearest code) into
    ``tokens``, and at the batch's generator calls sends each image's embedding current, zeroing the
    generator's populations between calls.  ``encoder_plan``: the encoder's plan; ``plan``: the generator's.
    """

    def __init__(self, *, plan: Any, encoder_plan: Any, timeline: Any, lookup: Any, grid: tuple[int, int],
                 **kwargs: Any) -> None:
        super().__init__(plan=plan, encoder_plan=encoder_plan, timeline=timeline, lookup=lookup, grid=tuple(grid),
                         **kwargs)
        n = timeline.num_images
        self.spikes_in = InPort(shape=whc_shape(encoder_plan.populations[encoder_plan.readout].shape))
        self.a_out = OutPort(shape=input_shape(plan))
        self.tokens = Var(shape=(n, *grid), init=np.full((n, *grid), -1))
        self._population_refs(plan)


class ImageSinkProcess(AbstractProcess):
    """Collects the images: reads the generator read-out ``v`` (RefPort ``v``) after each generator call and
    decodes each finished batch (depth-to-space, crop, tanh + 0.5) into ``images``; with ``record`` also the
    raw read-outs (``readouts``)."""

    def __init__(self, *, plan: Any, timeline: Any, image_shape: tuple[int, ...], depth_to_space: int,
                 crop: tuple[int, int], record: bool = False, **kwargs: Any) -> None:
        super().__init__(plan=plan, timeline=timeline, image_shape=tuple(image_shape), depth_to_space=depth_to_space,
                         crop=tuple(crop), record=record, **kwargs)
        n = timeline.num_images
        ro = plan.populations[plan.readout].shape
        self.v = RefPort(shape=whc_shape(ro))
        self.images = Var(shape=(n, *image_shape), init=0)
        self.readouts = Var(shape=(n, *ro) if record else (1,), init=0)


class DiagonalSynapse(AbstractProcess):
    """One-to-one synapses with a synaptic delay: Lava's ``DelayDense`` with a diagonal weight matrix and a
    single delay, without its dense ``N x N x (delay + 1)`` weight stack.

        a_out[i](t + 1 + delay) = w[i] * s_in[i](t)

    The one step is every Lava synapse's (a_out at t carries the buffer of t - 1).  fixed_pt, as Loihi's
    ``Dense``: w is clipped to 8 bits and truncated to ``num_weight_bits`` under ``sign_mode``
    (:func:`~spkdiff.neuromorphic.loihi.lava_dense_weights`), and a_out is scaled by 2**weight_exp (arithmetic
    shift).  ``weights``: shape (N,).
    """

    def __init__(self, *, weights: np.ndarray, delay: int = 0, weight_exp: int = 0, num_weight_bits: int = 8,
                 sign_mode: Any = None, **kwargs: Any) -> None:
        super().__init__(weights=weights, delay=delay, weight_exp=weight_exp, num_weight_bits=num_weight_bits,
                         sign_mode=sign_mode, **kwargs)
        if weights.ndim != 1:
            raise ValueError(f"DiagonalSynapse weights must be a vector (one per neuron), got shape {weights.shape}")
        if not 0 <= delay <= 63:
            raise ValueError(f"DiagonalSynapse delay must be in 0..63 (Loihi's 6 delay bits), got {delay}")
        n = weights.shape[0]
        self.s_in = InPort(shape=(n,))
        self.a_out = OutPort(shape=(n,))
        self.weights = Var(shape=(n,), init=weights)
        self.a_buff = Var(shape=(n, delay + 1), init=0)  # column k reaches a_out k + 1 steps from now
