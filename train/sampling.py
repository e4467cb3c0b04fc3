"""Generation with the torch models: mask sampler (host) <-> SDID, then ASG + decoder."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from spkdiff.host import MaskSampler
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


@torch.no_grad()
def generate(vq: VQSVAE, sdid: SDID, n: int, *, steps: int | None = None, method: str = "confidence",
             temperature: float = 1.0, seed: int = 0, batch_size: int = 256
             ) -> tuple[torch.Tensor, torch.Tensor, SampleStats]:
    """Sample ``n`` images; returns (images (n, C, H, W) in [0, 1], tokens (n, 7, 7), stats).

    Deterministic for a given seed and batch size.
    """
    vq.eval()
    sdid.eval()
    cfg = sdid.cfg
    sampler = MaskSampler(cfg.num_codes, cfg.diffusion_steps, steps, method, temperature)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images, tokens = [], []
    for lo in range(0, n, batch_size):
        b = min(batch_size, n - lo)
        tok = sampler.sample(sdid, b, (cfg.grid, cfg.grid), gen)
        tokens.append(tok)
        images.append(vq.decode_tokens(tok) + 0.5)
    seconds = time.perf_counter() - start
    stats = SampleStats(n, seconds, sampler.steps, sampler.steps * cfg.time_steps + vq.steps)
    return torch.cat(images).clamp(0, 1), torch.cat(tokens), stats


@torch.no_grad()
def reconstruct(vq: VQSVAE, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] -> (reconstructions in [0, 1], tokens): encoder, codebook lookup, ASG, decoder."""
    vq.eval()
    recons, tokens = [], []
    for lo in range(0, images.shape[0], batch_size):
        tok = vq.encode_tokens(images[lo:lo + batch_size] - 0.5)
        tokens.append(tok)
        recons.append(vq.decode_tokens(tok) + 0.5)
    return torch.cat(recons).clamp(0, 1), torch.cat(tokens)


def codebook_usage(tokens: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity of the code histogram and the number of codes never used."""
    counts = torch.bincount(tokens.flatten(), minlength=codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": float(torch.exp(-(p * p.log()).sum())), "dead_codes": int((counts == 0).sum())}
