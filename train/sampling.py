"""Generation and reconstruction with the torch models (the torch backend of :mod:`spkdiff.generation`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spkdiff.generation import SamplerSettings, decode_readout, generate
from spkdiff.generation import reconstruct as reconstruct_loop
from spkdiff.train.distributed import SINGLE, DistContext
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


def decode_tokens(vq: VQSVAE, tokens: torch.Tensor) -> torch.Tensor:
    """Token grids -> images in [0, 1]: embedding (Eq 8), ASG + decoder, the host decode."""
    return decode_readout(vq.generator_potential(vq.embed(tokens)))


@torch.no_grad()
def generate_images(vq: VQSVAE, sdid: SDID, n: int, settings: SamplerSettings, *, seed: int = 0,
                    batch_size: int = 256, dist: DistContext = SINGLE
                    ) -> tuple[torch.Tensor, torch.Tensor, SampleStats]:
    """Sample ``n`` images; returns (images (n, C, H, W) in [0, 1], tokens (n, h, w), stats).

    Under torchrun batch i runs on rank i mod W and every rank gets all n images.
    """
    vq.eval()
    sdid.eval()
    cfg = sdid.cfg
    out = generate(sdid, lambda tokens: decode_tokens(vq, tokens), n, num_codes=cfg.num_codes,
                   diffusion_steps=cfg.diffusion_steps, grid=(cfg.grid, cfg.grid), settings=settings, seed=seed,
                   batch_size=batch_size, map_batches=dist.map_batches)
    stats = SampleStats(n, out.seconds, out.denoiser_calls, out.denoiser_calls * cfg.time_steps + vq.steps)
    return out.images, out.tokens, stats


@torch.no_grad()
def reconstruct(vq: VQSVAE, images: torch.Tensor, batch_size: int = 500, dist: DistContext = SINGLE
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] -> (reconstructions in [0, 1], tokens): the torch backend of
    :func:`spkdiff.generation.reconstruct` (encoder, codebook lookup, ASG, decoder)."""
    vq.eval()
    out = reconstruct_loop(vq.encode_spikes, lambda spikes: vq.quantize(vq.features(spikes))[0],
                           lambda tokens: decode_tokens(vq, tokens), images, batch_size=batch_size,
                           map_batches=dist.map_batches)
    return out.images, out.tokens


def codebook_usage(tokens: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity of the code histogram and the number of codes never used."""
    counts = torch.bincount(tokens.flatten(), minlength=codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": float(torch.exp(-(p * p.log()).sum())), "dead_codes": int((counts == 0).sum())}
