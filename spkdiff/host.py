"""Host-side operations of the generative loop, shared by the torch models, the simulator and the
Lava host processes (one implementation, so every backend computes the same numbers).

* codebook lookup: spike train -> z^E (Eq 4-6) -> nearest code (Eq 7) -> embedding (Eq 8);
* the absorbing-state mask sampler (Eq 10-12): sampling schedules, SDID input spikes.

The training objective (forward masking, Eq 14 loss) is training's: :mod:`spkdiff.train.sdid`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from spkdiff.config import SAMPLER_METHODS
from spkdiff.validate import check_finite

# ----------------------------------------------------------------------------- codebook lookup


def leaky_states(x_seq: torch.Tensor, decay: float) -> Iterator[torch.Tensor]:
    """The states acc_t = decay acc_{t-1} + x_t (acc_0 = 0) of a leaky integrator over time axis 0."""
    acc = torch.zeros_like(x_seq[0])
    for x_t in x_seq.unbind(0):  # unbind: one cheap backward node (indexing x_seq[t] makes T full-size ones)
        acc = decay * acc + x_t
        yield acc


def leaky_sum(x_seq: torch.Tensor, decay: float) -> torch.Tensor:
    """sum_t x_t decay^(T-1-t): the final state only (earlier states are freed as it goes)."""
    return deque(leaky_states(x_seq, decay), maxlen=1)[0]


def psp_final(spikes: torch.Tensor, tau_syn: float) -> torch.Tensor:
    """Eq 5 at t = T_s: PSP_t = (1 - 1/tau_syn) PSP_{t-1} + (1/tau_syn) z_t, PSP_0 = 0."""
    return leaky_sum(spikes / tau_syn, 1.0 - 1.0 / tau_syn)


def psp_sequence(spikes: torch.Tensor, tau_syn: float) -> torch.Tensor:
    """Eq 5 for every t (the PSP-MMD kernel of Eq 9), stacked on time axis 0."""
    return torch.stack(list(leaky_states(spikes / tau_syn, 1.0 - 1.0 / tau_syn)))


def encoder_features(spikes: torch.Tensor, k: torch.Tensor | float, tau_syn: float, variant: str = "paper",
                     code_decay: float = 0.8) -> torch.Tensor:
    """Eq 6: z^E = k SFR + (1 - k) PSP_Ts with SFR = mean_t z_t (Eq 4).

    ``variant="code"`` is the authors' code: PSP = sum_t z_t code_decay^(Ts-1-t) (unnormalised).
    """
    rate = spikes.mean(0)
    if variant == "paper":
        psp = psp_final(spikes, tau_syn)
    elif variant == "code":
        psp = leaky_sum(spikes, code_decay)
    else:
        raise ValueError(f"unknown psp_variant {variant!r} (paper or code)")
    return k * rate + (1 - k) * psp


def codebook_lookup(z_e: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq 7-8: h_0 = argmin_k ||z^E_ij - z_k||_2 and z^Q = Z[h_0]; z_e (B, C, H, W) -> (tokens, z_q)."""
    b, c, h, w = z_e.shape
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, c)
    dist = (flat.square().sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.square().sum(1)[None])
    tokens = dist.argmin(1)
    z_q = codebook[tokens].view(b, h, w, c).permute(0, 3, 1, 2)
    return tokens.view(b, h, w), z_q


# ----------------------------------------------------------------------------- absorbing diffusion


def time_bin(t: torch.Tensor, diffusion_steps: int, time_bins: int) -> torch.Tensor:
    """Map diffusion time t in 1..T_d to a one-hot time channel index in 0..time_bins-1."""
    return (torch.ceil(t.float() * time_bins / diffusion_steps).long() - 1).clamp(0, time_bins - 1)


def sdid_input_spikes(tokens: torch.Tensor, t: torch.Tensor, num_codes: int, diffusion_steps: int,
                      time_bins: int, patch: int = 1) -> torch.Tensor:
    """The SDID's input spikes (B, p^2 (K+1) + time_bins, H/p, W/p), the same at every SNN step.

    Channels 0..p^2 (K+1) - 1: one-hot tokens incl. [MASK] = K, each p x p patch of the token grid stacked
    space-to-depth (channel c p^2 + dy p + dx holds code c at offset (dy, dx), as ``pixel_unshuffle``); then a
    one-hot time channel broadcast over the grid.  ``patch`` p = 1 is the token grid itself.
    """
    b, h, w = tokens.shape
    onehot = torch.zeros(b, num_codes + 1, h, w)
    onehot.scatter_(1, tokens.unsqueeze(1), 1.0)
    if patch > 1:
        onehot = torch.nn.functional.pixel_unshuffle(onehot, patch)
    time = torch.zeros(b, time_bins, h // patch, w // patch)
    time[torch.arange(b), time_bin(t, diffusion_steps, time_bins)] = 1.0
    return torch.cat([onehot, time], 1)


def patch_logits(logits: torch.Tensor, patch: int) -> torch.Tensor:
    """The SDID read-out (B, K p^2, H/p, W/p) -> logits on the token grid (B, K, H, W) (``pixel_shuffle``,
    the inverse of the input's space-to-depth)."""
    return logits if patch == 1 else torch.nn.functional.pixel_shuffle(logits, patch)


def unmask_schedule(steps: int, num_tokens: int, kind: str) -> list[int]:
    """Number of tokens still masked after each of ``steps`` confidence-ordered steps (cosine, MaskGIT)."""
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}")
    remaining = [int(math.floor(num_tokens * math.cos(math.pi / 2 * (i + 1) / steps))) for i in range(steps)]
    remaining[-1] = 0
    return remaining


# Phase (row % 2, column % 2) -> its place in the coarse order: the two diagonal phases first, so each
# phase after the first has every position's nearest neighbours (or both diagonal ones) already drawn.
_COARSE_PHASE_ORDER = ((0, 2), (3, 1))


def coarse_order(batch: int, grid: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
    """Each position's rank (B, H, W) in the coarse-to-fine order: phase first, then a random tie-break."""
    h, w = grid
    rows, cols = torch.arange(h)[:, None] % 2, torch.arange(w)[None, :] % 2
    phase = torch.tensor(_COARSE_PHASE_ORDER)[rows, cols].float()
    key = (phase + torch.rand(batch, h, w, generator=generator)).flatten(1)
    rank = torch.empty_like(key, dtype=torch.long)
    rank.scatter_(1, key.argsort(1), torch.arange(h * w).expand(batch, -1).contiguous())
    return rank.view(batch, h, w)


@dataclass
class SamplerState:
    """The mask sampler between steps: tokens (B, H, W) with [MASK] = K, which are masked, steps done."""

    tokens: torch.Tensor
    masked: torch.Tensor
    remaining: list[int] | None  # confidence: count still masked after each step
    i: int = 0
    rank: torch.Tensor | None = None  # coarse: each position's place in the unmasking order (B, H, W)


class MaskSampler:
    """The mask sampler (host side): starts fully masked, calls ``denoise(h_t, t) -> logits``.

    ``method="paper"``: for t = S..1 each still-masked token is unmasked with probability 1/t and drawn
    from Categorical(logits / temperature) (the authors' schedule; S = T_d = 49 by default).
    ``method="confidence"``: S steps; at each, all masked tokens are drawn, and the most confident
    draws (log-probability plus Gumbel noise scaled by ``choice_temperature`` and annealed to 0,
    as MaskGIT) are kept so that the count still masked follows a cosine schedule.
    ``method="coarse"``: the paper's pace (round(N (i+1)/S) tokens unmasked after step i, as the 1/t rule
    gives in expectation) in a coarse-to-fine order: the four phases of the stride-2 sub-lattice one after
    another, diagonal phases first, in random order within a phase. Tokens drawn in the same step are then
    never neighbours, and the first quarter fixes a coarse layout on every second row and column.
    The diffusion time given to the denoiser is the one whose mask rate t/T_d matches the step.

    ``remask`` = eta > 0 (``method="paper"`` only) adds ReMDM-cap remasking (Wang et al. 2025): with
    alpha_t = 1 - step_t/S the unmasked fraction before a step and alpha_s = 1 - (step_t - 1)/S after it, each token
    unmasked at an earlier step is masked again w.p. sigma = min(eta, (1 - alpha_s)/alpha_t) and each masked token is
    unmasked w.p. (alpha_s - (1 - sigma) alpha_t)/(1 - alpha_t), both decided by one uniform u per token. The
    expected mask fraction still follows the 1/t schedule (sigma = 0 gives the 1/t rule, the last step unmasks all),
    and a token drawn early can be redrawn once later tokens contradict it, for no extra denoiser call.
    """

    def __init__(self, num_codes: int, diffusion_steps: int, steps: int | None = None, method: str = "paper",
                 temperature: float = 1.0, choice_temperature: float = 4.5, remask: float = 0.0):
        if method not in SAMPLER_METHODS:
            raise ValueError(f"unknown sampler {method!r} ({', '.join(SAMPLER_METHODS)})")
        if not 0.0 <= remask <= 1.0:
            raise ValueError(f"remask must be in [0, 1], got {remask}")
        if remask and method != "paper":
            raise ValueError(f"remask applies to the paper sampler only, not {method!r}")
        self.num_codes = num_codes
        self.diffusion_steps = diffusion_steps
        self.steps = steps or diffusion_steps
        self.method = method
        self.temperature = temperature
        self.choice_temperature = choice_temperature
        self.remask = remask

    def remask_probabilities(self, step_t: int) -> tuple[float, float]:
        """(p_unmask, sigma) at ``step_t`` (S..1): a masked token's chance to be unmasked, an unmasked one's to be
        masked again (ReMDM-cap, see the class docstring)."""
        alpha_t, alpha_s = 1.0 - step_t / self.steps, 1.0 - (step_t - 1) / self.steps
        sigma = min(self.remask, (1.0 - alpha_s) / alpha_t) if alpha_t > 0 else 0.0
        return (alpha_s - (1.0 - sigma) * alpha_t) / (1.0 - alpha_t), sigma

    def model_time(self, step_t: int) -> int:
        return max(1, math.ceil(step_t * self.diffusion_steps / self.steps))

    def draw(self, logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample tokens from Categorical(logits / temperature); logits (B, K, H, W). Returns (tokens, prob)."""
        check_finite(logits, "the denoiser's logits (a model with NaN/Inf weights?)")
        probs = torch.softmax(logits.float() / max(self.temperature, 1e-6), dim=1)
        flat = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1])
        drawn = torch.multinomial(flat, 1, generator=generator).squeeze(1)
        chosen = flat.gather(1, drawn[:, None]).squeeze(1)
        shape = logits.shape[0], *logits.shape[2:]
        return drawn.view(shape), chosen.view(shape)

    def start(self, batch: int, grid: tuple[int, int]) -> SamplerState:
        """The fully masked state before the first of ``self.steps`` steps."""
        remaining = unmask_schedule(self.steps, grid[0] * grid[1], "cosine") if self.method == "confidence" else None
        return SamplerState(torch.full((batch, *grid), self.num_codes, dtype=torch.long),
                            torch.ones(batch, *grid, dtype=torch.bool), remaining)

    def time_of(self, state: SamplerState) -> torch.Tensor:
        """The diffusion time (B,) the denoiser gets at the state's next step."""
        return torch.full((state.tokens.shape[0],), self.model_time(self.steps - state.i), dtype=torch.long)

    def update(self, state: SamplerState, logits: torch.Tensor, generator: torch.Generator | None) -> None:
        """One step: draw from ``logits`` (B, K, H, W) and unmask the chosen tokens (in place)."""
        i, step_t, masked = state.i, self.steps - state.i, state.masked
        drawn, prob = self.draw(logits, generator)
        again = None  # tokens masked again (remasking)
        if self.method == "paper" and self.remask:
            p_unmask, sigma = self.remask_probabilities(step_t)
            u = torch.rand(masked.shape, generator=generator)
            change = (u < p_unmask) & masked
            again = (u < sigma) & ~masked
        elif self.method == "paper":
            change = (torch.rand(masked.shape, generator=generator) < 1.0 / step_t) & masked
        elif self.method == "coarse":
            if state.rank is None:
                state.rank = coarse_order(masked.shape[0], tuple(masked.shape[1:]), generator)
            unmasked_after = round(masked[0].numel() * (i + 1) / self.steps)
            change = (state.rank < unmasked_after) & masked
        else:
            # MaskGIT: log-confidence plus Gumbel noise annealed to 0, so early steps do not all pick
            # the most confident (background-like) tokens.
            batch, num_tokens = masked.shape[0], masked[0].numel()
            u = torch.rand(prob.shape, generator=generator).clamp(1e-20, 1 - 1e-7)
            noisy = prob.clamp_min(1e-30).log() - self.choice_temperature * (1 - (i + 1) / self.steps) * (
                -(-u.log()).log())
            score = torch.where(masked, noisy, torch.full_like(prob, -math.inf)).flatten(1)
            n_keep_masked = state.remaining[i]
            n_masked = masked.flatten(1).sum(1)
            order = score.argsort(1, descending=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(num_tokens).expand(batch, -1).contiguous())
            change = (rank < (n_masked - n_keep_masked).clamp(min=0)[:, None]).view_as(masked) & masked
        state.tokens = torch.where(change, drawn, state.tokens)
        state.masked = masked & ~change
        if again is not None:
            state.tokens = torch.where(again, torch.full_like(state.tokens, self.num_codes), state.tokens)
            state.masked |= again
        state.i += 1

    def sample(self, denoise, batch: int, grid: tuple[int, int], generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """``start``, then ``self.steps`` times ``update(denoise(tokens, t))``."""
        state = self.start(batch, grid)
        while state.i < self.steps:
            self.update(state, denoise(state.tokens, self.time_of(state)), generator)
        assert not state.masked.any(), "sampler left masked tokens"
        return state.tokens
