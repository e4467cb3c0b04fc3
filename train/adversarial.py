"""Training-only adversarial term for stage 1 (VQGAN-style, Esser et al. 2021), never exported.

A small patch discriminator D, trained from scratch beside the VQ-SVAE, scores every 4x4-pixel
patch as real or reconstructed. Its hinge losses and the generator term are

    L_D   = E[relu(1 - D(x))] + E[relu(1 + D(x^))]
    L_adv = -E[D(x^)]
    L     = L_Eq9 + lambda * L_adv,   lambda = w * ||grad_{W_L} L_rec|| / (||grad_{W_L} L_adv|| + 1e-4)

with W_L the weights of the decoder's last layer (the read-out): the adaptive weight lambda keeps
the adversarial gradient at the scale of the reconstruction gradient where both meet. D sees the
shown image (clamped to the pixel range), so it judges what a user sees. D lives only in the
training loop: its weights go to the checkpoint's ``train/`` section, which export never reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Conv(4, s2) - LeakyReLU - Conv(4, s2) - LeakyReLU - Conv(3): one logit per 4x4 patch (7x7 on 28x28)."""

    def __init__(self, in_channels: int, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * channels, 1, 3, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def discriminator_hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """L_D = E[relu(1 - D(x))] + E[relu(1 + D(x^))]."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def generator_adversarial_loss(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """L_adv = -E[D(x^)], with D's parameters held constant (this term trains only the generator)."""
    params = list(discriminator.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        return -discriminator(fake).mean()
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def adaptive_weight(recon: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """lambda / w = ||grad L_rec|| / (||grad L_adv|| + 1e-4) at the last layer's weights, capped at 1e4."""
    g_rec = torch.autograd.grad(recon, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(max=1e4).detach()
