"""The generative loop's host side: one implementation for every backend.

    host MaskSampler --(tokens h_t, time t)--> denoiser --(logits)--> host sampler          x S steps
    host embedding z^Q = Z[h_0] (Eq 8) --> generator (ASG + decoder) --> read-out v_T
    host decode: depth-to-space, crop, x = tanh(v_T) + 0.5 in [0, 1]

The backends differ only in the two callables they plug in: the torch models, the simulator (float or
Loihi fixed point, :mod:`spkdiff.simulator.generate`) and the Lava host processes
(:mod:`spkdiff.neuromorphic.lava_procs`, which drive the same :class:`~spkdiff.host.MaskSampler` step by
step). Batch ``i`` draws from :func:`batch_generator` ``(seed, i)`` on every backend, so the same seed and
batch size give the same tokens everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from spkdiff.host import MaskSampler, sdid_input_spikes

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
    sampler_defaults: Mapping[str, Any]  # the run's method / steps / temperature

    @classmethod
    def from_bundle(cls, bundle: Any) -> HostConstants:
        """From a :class:`spkdiff.neuromorphic.bundle.Bundle` (its manifest's host section and codebook)."""
        ms, do = bundle.sampler, bundle.decoder_output
        grid = ms["grid"]
        grid = (int(grid), int(grid)) if isinstance(grid, int | float) else (int(grid[0]), int(grid[-1]))
        return cls(int(ms["num_codes"]), int(ms["diffusion_steps"]), int(ms["time_bins"]), grid,
                   torch.as_tensor(bundle.codebook).float(), int(do["depth_to_space"]),
                   (int(do["crop"][0]), int(do["crop"][1])),
                   {stage: bundle.time_steps(stage) for stage in bundle.graphs},
                   {k: ms[k] for k in ("method", "steps", "temperature") if ms.get(k) is not None})


@dataclass(frozen=True)
class SamplerSettings:
    method: str  # "paper" (1/t unmasking) or "confidence"
    steps: int | None  # None: the method's default (T_d for the paper schedule)
    temperature: float

    def sampler(self, num_codes: int, diffusion_steps: int) -> MaskSampler:
        return MaskSampler(num_codes, diffusion_steps, self.steps, self.method, self.temperature)


def resolve_sampler_settings(defaults: Mapping[str, Any] | None, method: str | None = None, steps: int | None = None,
                             temperature: float | None = None) -> SamplerSettings:
    """Given values win, else the run's or bundle's ``defaults`` (``method``, ``steps``, ``temperature``).

    The default step count belongs to the default method: another method falls back to its own default.
    """
    d = defaults or {}
    m = method or d.get("method") or "confidence"
    s = steps or (d.get("steps") if m == (d.get("method") or "confidence") else None)
    t = temperature if temperature is not None else float(d["temperature"]) if d.get("temperature") is not None \
        else 1.0
    return SamplerSettings(m, s, t)


def embed_tokens(codebook: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Eq 8 for token grids: z^Q = Z[h] as (B, C, H, W)."""
    return codebook[tokens].permute(0, 3, 1, 2)


def decode_readout(v: torch.Tensor, depth_to_space: int = 1, crop: Sequence[int] | None = None) -> torch.Tensor:
    """Generator read-out ``v_T`` -> image in [0, 1]: depth-to-space (the phase layout of the lowered
    transposed convs), crop, ``tanh(v) + 0.5`` (pixels live in [-0.5, 0.5]), clamp."""
    if depth_to_space > 1:
        lead = v.shape[:-3]
        v = torch.nn.functional.pixel_shuffle(v.reshape(-1, *v.shape[-3:]), depth_to_space)
        v = v.reshape(*lead, *v.shape[-3:])
    if crop is not None:
        v = v[..., : crop[0], : crop[1]]
    return (torch.tanh(v) + 0.5).clamp(0, 1)


def spike_denoiser(run_sdid: Callable[[torch.Tensor], torch.Tensor], num_codes: int, diffusion_steps: int,
                   time_bins: int, time_steps: int) -> Denoiser:
    """An SDID given as a spiking graph: one-hot token/time spikes in, ``logits = v_T / T`` out."""

    def denoise(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return run_sdid(sdid_input_spikes(tokens, t, num_codes, diffusion_steps, time_bins)) / time_steps

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
