"""Generation with the torch models: mask sampler (host) <-> SDID, then ASG + decoder."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from spkdiff.host import MaskSampler
from spkdiff.train.distributed import SINGLE, DistContext, keyed_generator
from spkdiff.train.sdid import SDID
from spkdiff.train.vqsvae import VQSVAE


@dataclass
class SampleStats:
    images: int
    seconds: float
    denoiser_calls: int  # per image
    snn_steps: int  # SDID + generator SNN time steps per image

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The sampler's generator for batch ``batch_index`` of a run seeded ``seed`` (its only randomness)."""
    return keyed_generator(seed, batch_index)


@torch.no_grad()
def generate(vq: VQSVAE, sdid: SDID, n: int, *, steps: int | None = None, method: str = "confidence",
             temperature: float = 1.0, seed: int = 0, batch_size: int = 256, dist: DistContext = SINGLE
             ) -> tuple[torch.Tensor, torch.Tensor, SampleStats]:
    """Sample ``n`` images; returns (images (n, C, H, W) in [0, 1], tokens (n, 7, 7), stats).

    Batch i (images i*batch_size ...) draws from :func:`batch_generator` (seed, i), so the result depends
    on (seed, batch size) only: under torchrun batch i runs on rank i mod W and every rank gets all n.
    """
    vq.eval()
    sdid.eval()
    cfg = sdid.cfg
    sampler = MaskSampler(cfg.num_codes, cfg.diffusion_steps, steps, method, temperature)

    def one_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = min(batch_size, n - i * batch_size)
        tok = sampler.sample(sdid, b, (cfg.grid, cfg.grid), batch_generator(seed, i))
        return vq.decode_tokens(tok) + 0.5, tok

    start = time.perf_counter()
    batches = dist.map_batches(one_batch, -(-n // batch_size))
    seconds = time.perf_counter() - start
    stats = SampleStats(n, seconds, sampler.steps, sampler.steps * cfg.time_steps + vq.steps)
    return torch.cat([im for im, _ in batches]).clamp(0, 1), torch.cat([t for _, t in batches]), stats


@torch.no_grad()
def reconstruct(vq: VQSVAE, images: torch.Tensor, batch_size: int = 500, dist: DistContext = SINGLE
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] -> (reconstructions in [0, 1], tokens): encoder, codebook lookup, ASG, decoder."""
    vq.eval()

    def one_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        tok = vq.encode_tokens(images[i * batch_size:(i + 1) * batch_size] - 0.5)
        return vq.decode_tokens(tok) + 0.5, tok

    batches = dist.map_batches(one_batch, -(-images.shape[0] // batch_size))
    return torch.cat([r for r, _ in batches]).clamp(0, 1), torch.cat([t for _, t in batches])


def codebook_usage(tokens: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity of the code histogram and the number of codes never used."""
    counts = torch.bincount(tokens.flatten(), minlength=codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": float(torch.exp(-(p * p.log()).sum())), "dead_codes": int((counts == 0).sum())}
