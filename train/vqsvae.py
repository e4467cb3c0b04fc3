"""VQ-SVAE: the spiking VQ-VAE of Spiking-Diffusion (stage 1).

    image x (C, H, W) --(direct encoding, T_s steps)--> encoder SNN --> z^E_{1:Ts} spikes (T, B, C_lat, H/4, W/4)
    z^E = k SFR + (1 - k) PSP_Ts                                   (Eq 4-6, host side)
    h_0 = argmin_k ||z^E_ij - z_k||,  z^Q = Z[h_0]                  (Eq 7-8, host side)
    ASG SNN: z^Q repeated over time --> z^Q_{1:Ts} spikes            (on chip)
    decoder SNN --> o_{1:Ts};  x^ = tanh(sum_t o_t 0.8^(Ts-1-t))     (read-out on chip, tanh on host)

Every on-chip layer is Conv2d / ConvTranspose2d + BatchNorm + LIF, or the final non-spiking
read-out, so each lowers exactly to NIR (see spkdiff.export).

Energy lever (``sop_weight`` in the stage-1 train settings): :meth:`VQSVAE.generator_sop_fraction` is the
generator's synaptic operations per image (the ASG's, the decoder's spikes, each weighted by its fan-out)
relative to the dense MACs of the generator as an ANN, R of :func:`spkdiff.train.snn.sop_fraction`.  With
``train_parts: generator`` it makes the on-chip generator sparser while every image keeps its tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.generation import embed_tokens
from spkdiff.host import codebook_lookup, encoder_features, leaky_sum, psp_sequence
from spkdiff.train.snn import LIFParams, SpikingConv, dense_macs, fan_out, grow_channels, sop_fraction
from spkdiff.validate import MAX_CONTEXT_LAYERS

LATENT_STRIDES = (4, 2)  # image side / token-grid side: the paper's two halvings, or one (a 4x finer grid)


@dataclass
class VQSVAEConfig:
    in_channels: int = 1
    image_size: int = 28
    hidden: tuple[int, int] = (32, 64)
    latent_channels: int = 16
    codebook_size: int = 128
    time_steps: int = 16
    beta: float = 0.25
    tau_syn: float = 5.0  # Eq 5; (1 - 1/tau_syn) = 0.8 as the authors' read-out decay
    psp_variant: str = "paper"  # "paper": Eq 5-6 as written; "code": sum_t s_t 0.8^(T-1-t), k unconstrained
    readout_decay: float = 0.8
    k_init: float = 0.5
    recon_loss: str = "mse"  # "mse" (Eq 9 as written) or "saturated_l1" (see reconstruction_loss)
    neuron: dict = field(default_factory=dict)  # LIF constants (LIFParams.from_dict): tau, v_threshold, ...
    latent_stride: int = 4  # image side / token-grid side (LATENT_STRIDES): 4 gives 7x7 tokens on 28x28, 2 gives 14x14
    # Channels of the two decoder layers, None for the encoder's in reverse (hidden[1], hidden[0]). A wider
    # generator costs few synaptic operations (the SDID dominates) and can start from a trained narrower one
    # (grow_generator), keeping its tokens, so every prior trained on them still serves it.
    decoder_hidden: tuple[int, int] | None = None
    # Spiking 3x3 Conv2d layers at half the image side between the two upsampling layers, decoder_channels[0]
    # wide. Two 3x3 transposed convs let each pixel see about 2x2 tokens; every context layer adds a token of
    # context on each side. A trained generator grows them as exact relays of its spikes (grow_generator).
    decoder_context: int = 0

    def __post_init__(self) -> None:
        if self.latent_stride not in LATENT_STRIDES:
            raise SpkdiffError(f"latent_stride {self.latent_stride} is not supported: choose 4 (the paper's) or 2")
        # Stride-2 convs down, x2 transposed convs up: only a multiple of the stride comes back at its own size.
        if self.image_size % self.latent_stride:
            raise SpkdiffError(f"image_size {self.image_size} is not a multiple of the latent_stride "
                               f"{self.latent_stride} (the VQ-SVAE halves the image that often)")
        if self.decoder_hidden is not None and (
                len(self.decoder_hidden) != 2
                or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in self.decoder_hidden)):
            raise SpkdiffError(f"decoder_hidden must be two positive channel counts, got {list(self.decoder_hidden)}")
        if (not isinstance(self.decoder_context, int) or isinstance(self.decoder_context, bool)
                or not 0 <= self.decoder_context <= MAX_CONTEXT_LAYERS):
            raise SpkdiffError(f"decoder_context must be a layer count from 0 to {MAX_CONTEXT_LAYERS}, "
                               f"got {self.decoder_context!r}")

    @classmethod
    def from_dict(cls, d: dict) -> VQSVAEConfig:
        d = dict(d)
        for key in ("hidden", "decoder_hidden"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model takes and makes."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def decoder_channels(self) -> tuple[int, int]:
        """Output channels of decoder layers 0 and 1."""
        return self.decoder_hidden or (self.hidden[1], self.hidden[0])

    @property
    def latent_grid(self) -> int:
        """Side of the token grid (7 for 28x28 images at latent_stride 4, 14 at 2; 8 for 32x32 at 4)."""
        return self.image_size // self.latent_stride

    def to_dict(self) -> dict:
        return asdict(self)


RECON_LOSSES = ("mse", "saturated_l1")
PIXEL_MIN, PIXEL_MAX = -0.5, 0.5  # the paper's pixel range; shown images are clamped to it


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str, data_variance: float) -> torch.Tensor:
    """The reconstruction term of Eq 9.

    ``mse``: ||x - x^||^2 / Var(x), as in the paper.
    ``saturated_l1``: |r| / Std(x) with r = x^ - x, except that a pixel at the range's end is not
    penalised for overshooting it: r = max(r, 0) where x = PIXEL_MIN and r = min(r, 0) where
    x = PIXEL_MAX.  It is the L1 error of the image the user sees (clamped to the range), with a
    gradient on both sides. The median (L1) keeps edges sharper than the mean (MSE), and an
    overshoot into the clamp gives exact black background and saturated strokes, where MSE
    leaves faint noise on both sides of the target.
    """
    if kind == "mse":
        return F.mse_loss(x_hat, x) / data_variance
    if kind == "saturated_l1":
        r = x_hat - x
        r = torch.where(x <= PIXEL_MIN, r.clamp(min=0), r)
        r = torch.where(x >= PIXEL_MAX, r.clamp(max=0), r)
        return r.abs().mean() / data_variance**0.5
    raise SpkdiffError(f"unknown recon_loss {kind!r}: choose one of {', '.join(RECON_LOSSES)}")


class VQSVAE(nn.Module):
    def __init__(self, cfg: VQSVAEConfig):
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.hidden
        if cfg.recon_loss not in RECON_LOSSES:
            raise SpkdiffError(f"unknown recon_loss {cfg.recon_loss!r}: choose one of {', '.join(RECON_LOSSES)}")
        lif = LIFParams.from_dict(cfg.neuron)
        halve_twice = cfg.latent_stride == 4  # else the second conv down and the first one up keep the size
        self.encoder = nn.ModuleList([
            SpikingConv(nn.Conv2d(cfg.in_channels, c1, 3, 2, 1), lif),
            SpikingConv(nn.Conv2d(c1, c2, 3, 2 if halve_twice else 1, 1), lif),
            SpikingConv(nn.Conv2d(c2, cfg.latent_channels, 1), lif),
        ])
        self.k = nn.Parameter(torch.tensor(cfg.k_init))
        self.codebook = nn.Parameter(torch.empty(cfg.codebook_size, cfg.latent_channels).uniform_(
            -1 / cfg.codebook_size, 1 / cfg.codebook_size))
        self.asg = SpikingConv(nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1), lif)
        d0, d1 = cfg.decoder_channels
        self.decoder = nn.ModuleList([
            SpikingConv(nn.ConvTranspose2d(cfg.latent_channels, d0, 3, 2, 1, output_padding=1) if halve_twice
                        else nn.ConvTranspose2d(cfg.latent_channels, d0, 3, 1, 1), lif),
            *(SpikingConv(nn.Conv2d(d0, d0, 3, 1, 1), lif) for _ in range(cfg.decoder_context)),
            SpikingConv(nn.ConvTranspose2d(d0, d1, 3, 2, 1, output_padding=1), lif),
        ])
        self.readout = nn.ConvTranspose2d(d1, cfg.in_channels, 3, 1, 1)
        self.tokenizer_frozen = False

    def freeze_tokenizer_(self) -> None:
        """Hold the encoder, k and the codebook fixed (BatchNorm on its running statistics), so every image keeps
        its tokens and a prior trained on them stays valid while the generator (ASG, decoder) trains on."""
        self.tokenizer_frozen = True
        for p in [*self.encoder.parameters(), self.k, self.codebook]:
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> VQSVAE:
        super().train(mode)
        if self.tokenizer_frozen:
            self.encoder.eval()
        return self

    @property
    def steps(self) -> int:
        return self.cfg.time_steps

    # --- the three parts (encoder / host lookup / generator) -------------------------------------
    def encode_spikes(self, x: torch.Tensor) -> torch.Tensor:
        """Direct encoding: the analog image is the input current at every step -> z^E_{1:Ts}."""
        s = self.encoder[0](x, self.steps, constant_input=True)
        for layer in self.encoder[1:]:
            s = layer(s, self.steps)
        return s

    def features(self, spikes: torch.Tensor) -> torch.Tensor:
        """Eq 4-6: z^E (B, C, H, W) from the encoder's spike train."""
        return encoder_features(spikes, self.k, self.cfg.tau_syn, self.cfg.psp_variant, self.cfg.readout_decay)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq 7-8: returns (tokens h_0 (B, H, W), z^Q (B, C, H, W))."""
        return codebook_lookup(z_e, self.codebook)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Eq 8 for given token grids: z^Q = Z[h] as (B, C, H, W)."""
        return embed_tokens(self.codebook, tokens)

    def asg_spikes(self, z_q: torch.Tensor) -> torch.Tensor:
        """Adaptive spike generator: z^Q (constant over time) -> z^Q_{1:Ts}."""
        return self.asg(z_q, self.steps, constant_input=True)

    def decode_spikes(self, spikes: torch.Tensor, collect: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Decoder SNN + leaky read-out + tanh: spike train -> image in [-1, 1] (pixels live in [-0.5, 0.5])."""
        return torch.tanh(self.readout_potential(spikes, collect))

    def readout_potential(self, spikes: torch.Tensor, collect: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Decoder SNN + leaky read-out: spike train -> the read-out's v_T (before the host's tanh).
        ``collect`` (a list) receives each decoder layer's spikes (T, B, C, H, W)."""
        s = spikes
        for layer in self.decoder:
            s = layer(s, self.steps)
            if collect is not None:
                collect.append(s)
        # Leaky read-out of the output conv: sum_t d^(T-1-t) (W s_t + b) = W (sum_t d^(T-1-t) s_t) + b sum_t d^(T-1-t).
        # The conv is linear, so it runs once on the integrated spikes instead of T times (same math).
        decay, r = self.cfg.readout_decay, self.readout
        integrated = leaky_sum(s, decay)
        gain = sum(decay**k for k in range(self.steps))
        return F.conv_transpose2d(integrated, r.weight, r.bias * gain, r.stride, r.padding, r.output_padding)

    def generator_potential(self, z_q: torch.Tensor) -> torch.Tensor:
        """The generator stage (ASG + decoder) on embeddings z^Q: the read-out's v_T."""
        return self.readout_potential(self.asg_spikes(z_q))

    def _generator_synapses(self) -> list[tuple[nn.Module, tuple[int, int]]]:
        """Each generator synapse layer (ASG, decoder, read-out) with the (H, W) of the spikes it reads."""
        grid, half, full = self.cfg.latent_grid, self.cfg.image_size // 2, self.cfg.image_size
        # decoder[0] reads the token grid; the context layers and the last decoder layer read half the image side.
        sides = [grid, grid] + [half] * (len(self.decoder) - 1) + [full]
        layers = [self.asg.synapse[0], *(layer.synapse[0] for layer in self.decoder), self.readout]
        return [(layer, (side, side)) for layer, side in zip(layers, sides, strict=True)]

    def generator_fan_outs(self) -> list[torch.Tensor]:
        """Synapses per spike (H, W) of the ASG's and each decoder layer's spikes, in :meth:`forward`'s order."""
        return [fan_out(layer, hw) for layer, hw in self._generator_synapses()[1:]]

    def generator_dense_macs(self) -> float:
        """MACs of one pass of the generator (ASG, decoder, read-out) as an ANN."""
        return sum(dense_macs(layer, hw) for layer, hw in self._generator_synapses())

    def generator_sop_fraction(self, spikes: list[torch.Tensor]) -> torch.Tensor:
        """R of the generator per image, batch mean, from the spikes :meth:`forward` collects."""
        return sop_fraction(spikes, self.generator_fan_outs(), self.generator_dense_macs())

    @torch.no_grad()
    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.features(self.encode_spikes(x)))[0]

    @torch.no_grad()
    def relay_context_(self, layers: list[int], images: torch.Tensor) -> None:
        """Make the decoder's context layers ``layers`` pass their input spike trains on unchanged, measured on
        ``images`` (in [-0.5, 0.5]), so a grown generator starts as its source's exact function.

        Each gets the identity kernel (centre tap 1, bias 0), and its BatchNorm the per-channel mean p and
        variance v of its input spikes on ``images`` with the generator on batch statistics (as in training):
        running mean p, running variance v, gamma = g sqrt(v + eps), beta = g p. BN(conv(s)) is then g s at
        inference for any input, and in training on batches that fire like ``images``. With
        g = 1.5 tau (V_th - V_reset), a LIF crosses its threshold in the step a spike arrives even from rest,
        and without input it only leaks towards V_reset (Eq 1-3): its spikes are its input's."""
        was_training = self.training
        saved = {name: buffer.clone() for name, buffer in self.named_buffers()}
        self.eval()
        z_q = self.embed(self.encode_tokens(images))
        self.train()  # the generator on batch statistics; the running ones are put back below
        s = self.asg_spikes(z_q)
        measured = {}
        for i, layer in enumerate(self.decoder):
            if i in layers:
                conv, bn = layer.synapse
                if conv.in_channels != conv.out_channels or conv.kernel_size != (3, 3):
                    raise SpkdiffError(f"decoder layer {i} is not a context layer (3x3, as many channels out as in)")
                lif = layer.neuron.params
                gain = 1.5 * lif.tau * (lif.v_threshold - lif.v_reset)
                p = s.mean((0, 1, 3, 4))
                v = s.var((0, 1, 3, 4), unbiased=False)  # what BatchNorm normalises by in training
                conv.weight.zero_()
                conv.weight[:, :, 1, 1] = torch.eye(conv.out_channels)
                conv.bias.zero_()
                bn.weight.copy_(gain * (v + bn.eps).sqrt())
                bn.bias.copy_(gain * p)
                measured[i] = (p, v)
            s = layer(s, self.steps)
        for name, buffer in self.named_buffers():
            buffer.copy_(saved[name])
        for i, (p, v) in measured.items():
            self.decoder[i].synapse[1].running_mean.copy_(p)
            self.decoder[i].synapse[1].running_var.copy_(v)
        self.train(was_training)

    # --- training -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, data_variance: float = 1.0, spikes: list[torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        """Eq 9 loss terms for a batch of images in [-0.5, 0.5].  ``spikes`` (a list) receives the generator's
        spikes in the order of :meth:`generator_fan_outs`: the ASG's, then each decoder layer's."""
        beta = self.cfg.beta
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.tokenizer_frozen):
            z_spikes = self.encode_spikes(x)
            z_e = self.features(z_spikes)
        tokens, z_q = self.quantize(z_e)
        q_spikes = self.asg_spikes(z_q.detach())
        # Straight-through through the spike sequence: the decoder sees the ASG's spikes, the
        # gradient goes to the encoder's spikes.
        dec_in = z_spikes + (q_spikes - z_spikes).detach()
        if spikes is not None:
            spikes.append(q_spikes)  # what the decoder's synapses see, with the gradient to the ASG
        x_hat = self.decode_spikes(dec_in, spikes)
        recon = reconstruction_loss(x_hat, x, self.cfg.recon_loss, data_variance)
        vq = F.mse_loss(z_q, z_e.detach()) + beta * F.mse_loss(z_e, z_q.detach())
        # MMD with PSP as kernel, summed over t (mean over elements at each t).
        psp_e = psp_sequence(z_spikes, self.cfg.tau_syn)
        psp_q = psp_sequence(q_spikes, self.cfg.tau_syn)
        mmd = (F.mse_loss(psp_q, psp_e.detach(), reduction="none").flatten(1).mean(1).sum()
               + beta * F.mse_loss(psp_e, psp_q.detach(), reduction="none").flatten(1).mean(1).sum())
        loss = recon + vq + mmd
        return {"loss": loss, "recon": recon, "vq": vq, "mmd": mmd, "x_hat": x_hat, "tokens": tokens,
                "z_e": z_e.detach()}

    def init_codebook_(self, z_e: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Initialise codes from encoder features (k-means++-free: random distinct samples)."""
        with torch.no_grad():
            self.codebook.copy_(random_features(z_e, self.cfg.codebook_size, generator))


def random_features(z_e: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """At most N encoder feature vectors of z_e (B, C, H, W), from distinct random positions: (N, C)."""
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    return flat[torch.randperm(flat.shape[0], generator=generator)[:n]]


@torch.no_grad()
def restart_unused_codes_(codebook: nn.Parameter, z_e: torch.Tensor, tokens: torch.Tensor,
                          optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
    """Dead-code restart: every code that no token of the batch chose moves onto one of the batch's encoder
    features (distinct positions drawn at random), and its optimizer moments start again from zero.

    A code that the nearest-neighbour lookup (Eq 7) never picks gets no gradient from the codebook term of Eq 9,
    so it stays dead; on the batch's own features it is picked at once. Returns how many codes moved.
    """
    counts = torch.bincount(tokens.flatten(), minlength=codebook.shape[0])
    unused = (counts == 0).nonzero().flatten()
    if unused.numel() == 0:
        return 0
    features = random_features(z_e, unused.numel(), generator)
    unused = unused[: features.shape[0]]  # a batch with fewer positions than unused codes restarts that many
    codebook[unused] = features
    state = optimizer.state.get(codebook, {})
    for moment in ("exp_avg", "exp_avg_sq"):
        if moment in state:
            state[moment][unused] = 0
    return int(unused.numel())


def grow_generator(model: VQSVAE, source: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Weights for ``model`` from a trained VQ-VAE ``source`` whose generator is narrower (``decoder_hidden``) or
    shallower (``decoder_context``) or equal, such that ``model`` computes exactly what the source did, and the
    indices of the decoder layers that are new context layers (:meth:`VQSVAE.relay_context_` makes them exact
    relays; until then they hold ``model``'s fresh initialisation).

    Added channels grow as :func:`spkdiff.train.snn.grow_channels` grows them (Net2Net-style: every synapse from
    an added channel into one the source had, in the decoder layers and the read-out, starts at zero). The
    source's last decoder layer stays the last one (new context layers go in before it). Every other
    tensor is the source's own, so the tokenizer (encoder, k, codebook) and the ASG are unchanged (every image
    keeps its tokens); a missing key or another dtype is left for :func:`spkdiff.checkpoint.load_model_weights`
    to refuse."""
    ours = model.state_dict()
    source_layers = 1 + max((int(k.split(".")[1]) for k in source if k.startswith("decoder.")), default=-1)
    if source_layers < 2:
        raise SpkdiffError("cannot grow the generator: the source has no decoder (it is not a VQ-SVAE checkpoint)")
    if source_layers > len(model.decoder):
        raise SpkdiffError(f"cannot grow the generator: the source has {source_layers - 2} context layers, this "
                           f"model {len(model.decoder) - 2} (layers are only ever added)")
    last_theirs, last_ours = f"decoder.{source_layers - 1}.", f"decoder.{len(model.decoder) - 1}."
    renamed = {last_ours + k.removeprefix(last_theirs) if k.startswith(last_theirs) else k: v
               for k, v in source.items()}
    new_layers = list(range(source_layers - 1, len(model.decoder) - 1))
    fresh = {k: v.detach().clone() for k, v in ours.items()
             if any(k.startswith(f"decoder.{i}.") for i in new_layers)}
    readers = {f"decoder.{i}.synapse.0.weight": layer.synapse[0] for i, layer in enumerate(model.decoder)}
    weights = grow_channels(ours, dict(renamed) | fresh, readers | {"readout.weight": model.readout}, "generator")
    return weights, new_layers
