"""The generative loop's host side: one implementation for every backend.

    host MaskSampler --(tokens h_t, time t)--> denoiser --(logits)--> host sampler          x S steps
    host embedding z^Q = Z[h_0] (Eq 8) --> generator (ASG + decoder) --> read-out v_T
    host decode: depth-to-space, crop, x = tanh(v_T) + 0.5 in [0, 1]

The backends differ only in the two callables they plug in: the torch models, the simulator (float or
Loihi fixed point, :mod:`spkdiff.simulator.generate`) and the Lava host processes
(:mod:`spkdiff.neuromorphic.lava_procs`, which drive the same :class:`~spkdiff.host.MaskSampler` step by
step). Batch ``i`` draws from :func:`batch_generator` ``(seed, i)`` on every backend, so the same seed and
batch size give the same tokens everywhere.

Reconstruction (:func:`reconstruct`) is the same host side around the other route of the bundle::

    image x --(pixel currents x - 0.5)--> encoder --(last layer's spikes, all T_s steps)--> host lookup:
    z^E = k SFR + (1 - k) PSP (Eq 4-6), h_0 = nearest code (Eq 7), z^Q = Z[h_0] (Eq 8) --> generator --> decode
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from spkdiff.errors import SpkdiffError
from spkdiff.host import MaskSampler, codebook_lookup, encoder_features, patch_logits, sdid_input_spikes

T = TypeVar("T")
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens h_t (B, H, W), t (B,)) -> logits


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys, e.g. (seed, batch index) or (seed, step, rank)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0]) >> 1


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded by :func:`derived_seed` of ``keys``."""
    return torch.Generator().manual_seed(derived_seed(*keys))


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The sampler's generator for batch ``batch_index`` of a run seeded ``seed`` (its only randomness)."""
    return keyed_generator(seed, batch_index)


@dataclass(frozen=True)
class HostConstants:
    """What the host side of the loop needs besides the two stages: the sampler's sizes, the codebook
    (Eq 8), the decode's layout and each stage's SNN time steps per call."""

    num_codes: int
    diffusion_steps: int
    time_bins: int
    grid: tuple[int, int]
    codebook: torch.Tensor  # (K, C)
    depth_to_space: int
    crop: tuple[int, int]
    time_steps: Mapping[str, int]  # "sdid", "generator" (and "encoder" where the bundle has it)
    sampler_defaults: Mapping[str, Any]  # the run's method / steps / temperature / remask
    patch: int = 1  # tokens per side of one SDID position (space-to-depth on the host)

    @classmethod
    def from_bundle(cls, bundle: Any) -> HostConstants:
        """From a :class:`spkdiff.neuromorphic.bundle.Bundle` (its manifest's host section and codebook)."""
        ms = bundle.sampler
        grid = ms["grid"]
        grid = (int(grid), int(grid)) if isinstance(grid, int | float) else (int(grid[0]), int(grid[-1]))
        return cls(int(ms["num_codes"]), int(ms["diffusion_steps"]), int(ms["time_bins"]), grid,
                   torch.as_tensor(bundle.codebook).float(), *_decode_layout(bundle),
                   {stage: bundle.time_steps(stage) for stage in bundle.graphs},
                   {k: ms[k] for k in ("method", "steps", "temperature", "remask") if ms.get(k) is not None},
                   int(ms.get("patch", 1)))


def _decode_layout(bundle: Any) -> tuple[int, tuple[int, int]]:
    """The host decode's (depth_to_space, crop) from a bundle's ``host.decoder_output``."""
    do = bundle.decoder_output
    return int(do["depth_to_space"]), (int(do["crop"][0]), int(do["crop"][1]))


@dataclass(frozen=True)
class CodebookLookup:
    """The host's codebook lookup between the encoder and the generator (Eq 4-8), with a bundle's constants.

    ``features``: z^E = k SFR + (1 - k) PSP_Ts over the encoder's last-layer spike train (Eq 4-6, ``psp_variant``
    "paper" with ``tau_syn`` or the authors' "code" with ``code_decay``); ``__call__``: the nearest code
    h_0 (Eq 7), whose embedding Z[h_0] (Eq 8, :func:`embed_tokens`) feeds the generator.
    """

    codebook: torch.Tensor  # (K, C) float32
    k: float
    tau_syn: float
    psp_variant: str
    code_decay: float

    @classmethod
    def from_bundle(cls, bundle: Any) -> CodebookLookup:
        """From ``host.codebook_lookup`` of a bundle manifest; a bundle without k / tau_syn / psp_variant (an
        older export) is a one-line error."""
        section = bundle.host.get("codebook_lookup", {})
        missing = [key for key in ("k", "tau_syn", "psp_variant") if section.get(key) is None]
        if missing:
            raise SpkdiffError(f"bundle {bundle.path}: host.codebook_lookup lacks {', '.join(missing)}: re-export "
                               "it with `spkdiff-export --target lava`")
        try:
            return cls(torch.as_tensor(bundle.codebook).float(), float(section["k"]), float(section["tau_syn"]),
                       str(section["psp_variant"]), float(section.get("code_decay", 0.8)))
        except (TypeError, ValueError) as err:
            raise SpkdiffError(f"bundle {bundle.path}: host.codebook_lookup: {err}") from None

    def features(self, spikes: torch.Tensor) -> torch.Tensor:
        """Eq 4-6 on spikes (T_s, B, C, h, w) -> z^E (B, C, h, w); k as a float32 scalar tensor, as the model's
        parameter, so float spikes give torch's numbers."""
        k = torch.tensor(self.k, dtype=torch.float32)
        return encoder_features(spikes.float(), k, self.tau_syn, self.psp_variant, self.code_decay)

    def __call__(self, spikes: torch.Tensor) -> torch.Tensor:
        """Eq 7: tokens h_0 (B, h, w) of the encoder's spike train (T_s, B, C, h, w)."""
        return codebook_lookup(self.features(spikes), self.codebook)[0]

    def operations(self, spikes_shape: Sequence[int]) -> dict[str, int]:
        """Host arithmetic per image for spikes (T_s, C, h, w): SFR sums and PSP updates (Eq 4-5: T_s C h w
        adds and MACs), z^E (Eq 6: 2 C h w MACs), distances to the K codes (Eq 7: K C h w MACs) and the argmin
        (K h w compares, counted as adds)."""
        t, c, h, w = (int(v) for v in spikes_shape)
        num_codes = int(self.codebook.shape[0])
        return {"macs": t * c * h * w + 2 * c * h * w + num_codes * c * h * w,
                "adds": t * c * h * w + num_codes * h * w}


@dataclass(frozen=True)
class ReconstructionConstants:
    """What the host side of reconstruction needs besides the two stages (encoder, generator): the lookup,
    the decode's layout, the encoder's image shape and each stage's SNN time steps per call (same names as
    :class:`HostConstants` where they mean the same)."""

    lookup: CodebookLookup
    depth_to_space: int
    crop: tuple[int, int]
    image_shape: tuple[int, ...]  # (C, H, W) the encoder takes
    time_steps: Mapping[str, int]  # "encoder", "generator"

    @property
    def codebook(self) -> torch.Tensor:
        return self.lookup.codebook

    @classmethod
    def from_bundle(cls, bundle: Any) -> ReconstructionConstants:
        """From a :class:`spkdiff.neuromorphic.bundle.Bundle`; one-line error if it has no encoder."""
        if "encoder" not in bundle.graphs:
            raise SpkdiffError(f"bundle {bundle.path} has no encoder stage: it cannot reconstruct images")
        shape = tuple(int(v) for v in bundle.stage("encoder")["input"]["shape"])
        return cls(CodebookLookup.from_bundle(bundle), *_decode_layout(bundle), shape,
                   {stage: bundle.time_steps(stage) for stage in ("encoder", "generator")})


@dataclass(frozen=True)
class SamplerSettings:
    method: str  # "paper" (1/t unmasking), "confidence" or "coarse"
    steps: int | None  # None: the method's default (T_d for the paper schedule)
    temperature: float
    remask: float = 0.0  # ReMDM-cap remasking rate eta of the paper sampler (0: none)

    def sampler(self, num_codes: int, diffusion_steps: int) -> MaskSampler:
        return MaskSampler(num_codes, diffusion_steps, self.steps, self.method, self.temperature, remask=self.remask)


def resolve_sampler_settings(defaults: Mapping[str, Any] | None, method: str | None = None, steps: int | None = None,
                             temperature: float | None = None, remask: float | None = None) -> SamplerSettings:
    """Given values win, else the run's or bundle's ``defaults`` (``method``, ``steps``, ``temperature``,
    ``remask``).

    The default step count and remasking rate belong to the default method: another method falls back to its own
    defaults.
    """
    d = defaults or {}
    m = method or d.get("method") or "confidence"
    own = m == (d.get("method") or "confidence")
    s = steps or (d.get("steps") if own else None)
    t = temperature if temperature is not None else float(d["temperature"]) if d.get("temperature") is not None \
        else 1.0
    r = remask if remask is not None else float(d.get("remask") or 0.0) if own else 0.0
    if r and m != "paper":
        raise SpkdiffError(f"--remask applies to the paper sampler only, not {m!r}")
    return SamplerSettings(m, s, t, r)


def embed_tokens(codebook: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Eq 8 for token grids: z^Q = Z[h] as (B, C, H, W)."""
    return codebook[tokens].permute(0, 3, 1, 2)


def depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Phase layout ``(..., C f^2, h, w)`` -> fine ``(..., C, h f, w f)`` (``pixel_shuffle``): the layout of the
    lowered transposed convs (:mod:`spkdiff.export.lowering`) back to the image's."""
    if factor == 1:
        return x
    lead = x.shape[:-3]
    y = torch.nn.functional.pixel_shuffle(x.reshape(-1, *x.shape[-3:]), factor)
    return y.reshape(*lead, *y.shape[-3:])


def decode_readout(v: torch.Tensor, factor: int = 1, crop: Sequence[int] | None = None) -> torch.Tensor:
    """Generator read-out ``v_T`` -> image in [0, 1]: depth-to-space (the phase layout of the lowered
    transposed convs), crop, ``tanh(v) + 0.5`` (pixels live in [-0.5, 0.5]), clamp."""
    v = depth_to_space(v, factor)
    if crop is not None:
        v = v[..., : crop[0], : crop[1]]
    return (torch.tanh(v) + 0.5).clamp(0, 1)


def spike_denoiser(run_sdid: Callable[[torch.Tensor], torch.Tensor], num_codes: int, diffusion_steps: int,
                   time_bins: int, time_steps: int, patch: int = 1) -> Denoiser:
    """An SDID given as a spiking graph: one-hot token/time spikes in, ``logits = v_T / T`` out (depth-to-space
    onto the token grid for ``patch`` > 1)."""

    def denoise(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = sdid_input_spikes(tokens, t, num_codes, diffusion_steps, time_bins, patch)
        return patch_logits(run_sdid(x) / time_steps, patch)

    return denoise


def serial_map(fn: Callable[[int], T], count: int) -> list[T]:
    return [fn(i) for i in range(count)]


@dataclass
class Generated:
    images: torch.Tensor  # (n, C, H, W) in [0, 1]
    tokens: torch.Tensor  # (n, H', W')
    seconds: float
    denoiser_calls: int  # per image


def generate(denoise: Denoiser, decode: Callable[[torch.Tensor], torch.Tensor], n: int, *, num_codes: int,
             diffusion_steps: int, grid: tuple[int, int], settings: SamplerSettings, seed: int = 0,
             batch_size: int = 256, map_batches: Callable[[Callable[[int], Any], int], list[Any]] = serial_map
             ) -> Generated:
    """Sample ``n`` images: per batch, the mask sampler's ``S`` denoiser calls, then ``decode(tokens)``.

    ``map_batches(fn, count)`` runs ``fn`` for every batch index (in order here; shared out over the ranks
    under torchrun), so the result depends on (seed, batch size) only.
    """
    sampler = settings.sampler(num_codes, diffusion_steps)

    def one_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = min(batch_size, n - i * batch_size)
        tokens = sampler.sample(denoise, size, grid, batch_generator(seed, i))
        return decode(tokens), tokens

    start = time.perf_counter()
    batches = map_batches(one_batch, -(-n // batch_size))
    seconds = time.perf_counter() - start
    return Generated(torch.cat([im for im, _ in batches]), torch.cat([t for _, t in batches]), seconds, sampler.steps)


def check_images(images: Any, shape: Sequence[int], where: str = "images") -> torch.Tensor:
    """Images for the encoder: (N, C, H, W) with (C, H, W) = ``shape`` (or (N, H, W) for one channel), uint8
    (divided by 255) or floats in [0, 1], finite; anything else is a one-line error."""
    x = torch.as_tensor(np.asarray(images))
    want = tuple(int(v) for v in shape)
    if x.dim() == 3 and want[0] == 1:
        x = x[:, None]
    if x.dim() != 4 or x.shape[0] < 1:
        raise SpkdiffError(f"{where}: expected an array (N, {', '.join(map(str, want))}), got shape {tuple(x.shape)}")
    if tuple(x.shape[1:]) != want:
        raise SpkdiffError(f"{where}: images of shape {tuple(x.shape[1:])} (C, H, W), the encoder takes {want}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not (x.dtype.is_floating_point or x.dtype in (torch.int16, torch.int32, torch.int64)):
        raise SpkdiffError(f"{where}: dtype {x.dtype} is not a pixel type (uint8 or floats in [0, 1])")
    x = x.float()
    if not torch.isfinite(x).all():
        raise SpkdiffError(f"{where}: {int((~torch.isfinite(x)).sum())} pixels are NaN or Inf")
    if x.min() < 0 or x.max() > 1:
        raise SpkdiffError(f"{where}: pixels span [{float(x.min()):g}, {float(x.max()):g}], expected [0, 1] "
                           "(or uint8)")
    return x


@dataclass
class Reconstructed:
    images: torch.Tensor  # (n, C, H, W) in [0, 1]
    tokens: torch.Tensor  # (n, h, w)
    seconds: float


def reconstruct(encode: Callable[[torch.Tensor], torch.Tensor], lookup: Callable[[torch.Tensor], torch.Tensor],
                decode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, batch_size: int = 256,
                map_batches: Callable[[Callable[[int], Any], int], list[Any]] = serial_map) -> Reconstructed:
    """Reconstruct images in [0, 1] (n, C, H, W), batch by batch: ``encode(x - 0.5)`` -> the encoder's last-layer
    spikes (T_s, B, C', h, w) (pixels enter as currents in [-0.5, 0.5]); ``lookup(spikes)`` -> tokens h_0
    (Eq 4-7, :class:`CodebookLookup` or the model's own); ``decode(tokens)`` -> images (Eq 8, generator,
    host decode).  The backends plug in the three callables; ``map_batches`` as in :func:`generate`."""
    n = images.shape[0]

    def one_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = lookup(encode(images[i * batch_size:(i + 1) * batch_size] - 0.5))
        return decode(tokens), tokens

    start = time.perf_counter()
    batches = map_batches(one_batch, -(-n // batch_size))
    seconds = time.perf_counter() - start
    return Reconstructed(torch.cat([im for im, _ in batches]), torch.cat([t for _, t in batches]), seconds)
