"""Plain-torch, time-unrolled versions of the stages and host steps, for ``torch.onnx.export``.

The training models run the LIF through a fused numba kernel (not traceable); these modules reuse
the trained conv/BN layers and unroll Eq 1-3 with :func:`spkdiff.neuron.lif_sequence` (the same
operation order, so spikes are bit-identical in torch).  Layers with a constant input run once, as
in the training models; other layers run once over all steps (time folded into the batch).

Host steps (small graphs): the codebook lookup (Eq 4-8) and one step of the mask sampler.  The
sampler draws tokens by inverse CDF from uniform noise given as an input (``u``), so the ONNX graph
is deterministic: ``drawn = #{k : cdf_k < u}`` with ``cdf = cumsum(softmax(logits / temperature))``.
"""

from __future__ import annotations

import torch
from torch import nn

from spkdiff.host import codebook_lookup, encoder_features
from spkdiff.neuron import lif_sequence
from spkdiff.train.snn import LIFParams


def _lif_unrolled(x: torch.Tensor, steps: int, p: LIFParams, constant: bool) -> torch.Tensor:
    """Eq 1-3 over ``steps`` steps from V = V_reset; ``x`` (T, B, ...) or, if ``constant``, (B, ...)."""
    return lif_sequence(x, p.step, steps if constant else None)


def _spiking(layer: nn.Module, x: torch.Tensor, steps: int, constant: bool) -> torch.Tensor:
    """A SpikingConv (ConvBN -> LIF) without the fused kernel."""
    if constant:
        return _lif_unrolled(layer.synapse(x), steps, layer.neuron.params, True)
    cur = layer.synapse(x.flatten(0, 1)).unflatten(0, (steps, -1))
    return _lif_unrolled(cur, steps, layer.neuron.params, False)


class EncoderUnrolled(nn.Module):
    """image (B, C, H, W) in [-0.5, 0.5] -> spikes (T, B, C_lat, h, w)."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.layers = vq.encoder
        self.steps = vq.steps

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s = _spiking(self.layers[0], image, self.steps, True)
        for layer in self.layers[1:]:
            s = _spiking(layer, s, self.steps, False)
        return s


class GeneratorUnrolled(nn.Module):
    """z_q (B, C_lat, h, w) -> (pre-tanh read-out v_T, image tanh(v_T)), both (B, C, H, W)."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.asg = vq.asg
        self.decoder = vq.decoder
        self.readout = vq.readout
        self.steps = vq.steps
        self.decay = vq.cfg.readout_decay

    def forward(self, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = _spiking(self.asg, z_q, self.steps, True)
        for layer in self.decoder:
            s = _spiking(layer, s, self.steps, False)
        o = self.readout(s.flatten(0, 1)).unflatten(0, (self.steps, -1))
        acc = torch.zeros_like(o[0])
        for t in range(self.steps):
            acc = self.decay * acc + o[t]
        return acc, torch.tanh(acc)


class SDIDUnrolled(nn.Module):
    """SDID input spikes (B, K+1+bins, h, w) -> logits (B, K, h, w) = integrator state / T."""

    def __init__(self, sdid: nn.Module):
        super().__init__()
        self.stem = sdid.stem
        self.blocks = sdid.blocks
        self.readout = sdid.readout
        self.steps = sdid.cfg.time_steps

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        steps = self.steps
        s = _spiking(self.stem, spikes, steps, True)
        for block in self.blocks:
            h = _spiking(block.first, s, steps, False)
            cur = block.second(h.flatten(0, 1)).unflatten(0, (steps, -1)) + s
            s = _lif_unrolled(cur, steps, block.neuron.params, False)
        return self.readout(s.mean(0))


class CodebookLookup(nn.Module):
    """Encoder spikes (T, B, C, h, w) -> (tokens (B, h, w) int64, z_q (B, C, h, w)); Eq 4-8."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.register_buffer("codebook", vq.codebook.detach().clone())
        self.register_buffer("k", vq.k.detach().clone())
        self.tau_syn = vq.cfg.tau_syn
        self.variant = vq.cfg.psp_variant
        self.code_decay = vq.cfg.readout_decay

    def forward(self, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_e = encoder_features(spikes, self.k, self.tau_syn, self.variant, self.code_decay)
        return codebook_lookup(z_e, self.codebook)


def categorical_inverse_cdf(logits: torch.Tensor, u: torch.Tensor, temperature: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw from softmax(logits / T) over dim 1 with uniform ``u`` (B, h, w): returns (tokens, prob)."""
    probs = torch.softmax(logits / max(temperature, 1e-6), dim=1)
    cdf = torch.cumsum(probs, dim=1)
    drawn = (cdf < u.unsqueeze(1)).sum(1).clamp(max=logits.shape[1] - 1)
    chosen = torch.gather(probs, 1, drawn.unsqueeze(1)).squeeze(1)
    return drawn, chosen


class _SamplerStep(nn.Module):
    """A host sampler step at a fixed softmax temperature; each subclass decides which masked positions change."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    @staticmethod
    def _unmask(drawn: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, change: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens with the ``change`` positions (masked ones only) set to their draws, and the new mask."""
        change = change & masked
        return torch.where(change, drawn, tokens), masked & ~change


class SamplerStepConfidence(_SamplerStep):
    """One confidence-ordered step: draw every masked token, keep the ``n_masked - n_keep_masked`` most
    confident draws (ties: lower flat index first); ``n_keep_masked`` (B,) follows the cosine schedule."""

    def forward(self, logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, u: torch.Tensor,
                n_keep_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drawn, prob = categorical_inverse_cdf(logits, u, self.temperature)
        b = tokens.shape[0]
        score = torch.where(masked, prob, torch.full_like(prob, -1.0)).reshape(b, -1)
        n = score.shape[1]
        idx = torch.arange(n, device=score.device)
        si, sj = score.unsqueeze(2), score.unsqueeze(1)  # (B, i, 1), (B, 1, j)
        before = (sj > si) | ((sj == si) & (idx.view(1, 1, n) < idx.view(1, n, 1)))
        rank = before.sum(2)
        n_masked = masked.reshape(b, -1).sum(1)
        quota = (n_masked - n_keep_masked).clamp(min=0)
        return self._unmask(drawn, tokens, masked, (rank < quota.unsqueeze(1)).view_as(masked))


class SamplerStepPaper(_SamplerStep):
    """One step of the authors' schedule at time ``step_t``: each masked token is unmasked w.p. 1/t
    (``u_unmask < 1 / step_t``) with a token drawn from softmax(logits / temperature)."""

    def forward(self, logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, u: torch.Tensor,
                u_unmask: torch.Tensor, step_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drawn, _ = categorical_inverse_cdf(logits, u, self.temperature)
        return self._unmask(drawn, tokens, masked, u_unmask < 1.0 / step_t.to(u_unmask.dtype).view(-1, 1, 1))


class SamplerStepRemask(_SamplerStep):
    """One step of the authors' schedule with ReMDM-cap remasking (:class:`spkdiff.host.MaskSampler`,
    ``remask`` > 0): each masked token is unmasked where ``u_unmask < p_unmask`` with a token drawn from
    softmax(logits / temperature), and each token unmasked before the step is masked again ([MASK] = K) where
    ``u_unmask < sigma``; ``p_unmask`` and ``sigma`` (B,) are the host's ``MaskSampler.remask_probabilities``."""

    def forward(self, logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, u: torch.Tensor,
                u_unmask: torch.Tensor, p_unmask: torch.Tensor, sigma: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        drawn, _ = categorical_inverse_cdf(logits, u, self.temperature)
        tokens_out, masked_out = self._unmask(drawn, tokens, masked, u_unmask < p_unmask.view(-1, 1, 1))
        again = (u_unmask < sigma.view(-1, 1, 1)) & ~masked
        return torch.where(again, torch.full_like(tokens, logits.shape[1]), tokens_out), masked_out | again


class SamplerStepCoarse(_SamplerStep):
    """One step of the coarse-to-fine order: unmask the masked positions whose ``rank`` (B, h, w) is below
    ``n_unmasked`` (B,) = round(N (i+1) / S), with tokens drawn from softmax(logits / temperature). The ranks
    (:func:`spkdiff.host.coarse_order`) are drawn once on the host before the first step."""

    def forward(self, logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, u: torch.Tensor,
                rank: torch.Tensor, n_unmasked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drawn, _ = categorical_inverse_cdf(logits, u, self.temperature)
        return self._unmask(drawn, tokens, masked, rank < n_unmasked.view(-1, 1, 1))
