"""Training throughput, measured side by side in one run (interleaved rounds, median step times).

Stage 1: our VQ-SVAE at the paper and fast presets vs a naive SpikingJelly 2.0 implementation of the
paper preset (SeqToANNContainer(conv, BN) + LIFNode(step_mode="m") everywhere, the image repeated
T_s times, the same Eq 9 loss).  Stage 2: our SDID (fast preset) vs the reference-size analog-input
SDID of the authors' code (6-layer CNN 64-128-256-512-256 with one concatenation skip, T = 16).

    python bench/bench_train.py [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from spkdiff.config import load_preset
from spkdiff.host import psp_sequence
from spkdiff.train.sdid import SDID, SDIDConfig, diffusion_loss, training_mask
from spkdiff.train.vqsvae import VQSVAE, VQSVAEConfig


def naive_vqsvae(time_steps: int = 16):
    """The straightforward SpikingJelly 2.0 model of the paper preset."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    def block(conv):
        return nn.Sequential(layer.SeqToANNContainer(conv, nn.BatchNorm2d(conv.out_channels)),
                             neuron.LIFNode(surrogate_function=surrogate.ATan(), step_mode="m"))

    class Naive(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(block(nn.Conv2d(1, 32, 3, 2, 1)), block(nn.Conv2d(32, 64, 3, 2, 1)),
                                     block(nn.Conv2d(64, 16, 1)))
            self.k = nn.Parameter(torch.tensor(0.5))
            self.codebook = nn.Parameter(torch.rand(128, 16))
            self.asg = block(nn.Conv2d(16, 16, 1))
            self.dec = nn.Sequential(block(nn.ConvTranspose2d(16, 64, 3, 2, 1, 1)),
                                     block(nn.ConvTranspose2d(64, 32, 3, 2, 1, 1)),
                                     layer.SeqToANNContainer(nn.ConvTranspose2d(32, 1, 3, 1, 1)))

        def forward(self, x):
            from spikingjelly.activation_based import functional

            functional.reset_net(self)
            z = self.enc(x.unsqueeze(0).repeat(time_steps, 1, 1, 1, 1))
            psp_e = psp_sequence(z, 5.0)
            z_e = self.k * z.mean(0) + (1 - self.k) * psp_e[-1]
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, 16)
            idx = torch.cdist(flat, self.codebook).argmin(1)
            z_q = self.codebook[idx].view(z_e.shape[0], 7, 7, 16).permute(0, 3, 1, 2)
            q = self.asg(z_q.detach().unsqueeze(0).repeat(time_steps, 1, 1, 1, 1))
            out = self.dec(z + (q - z).detach())
            acc = torch.zeros_like(out[0])
            for t in range(time_steps):
                acc = 0.8 * acc + out[t]
            psp_q = psp_sequence(q, 5.0)
            loss = (F.mse_loss(torch.tanh(acc), x)
                    + F.mse_loss(z_q, z_e.detach()) + 0.25 * F.mse_loss(z_e, z_q.detach())
                    + F.mse_loss(psp_q, psp_e.detach()) + 0.25 * F.mse_loss(psp_e, psp_q.detach()))
            return {"loss": loss}

    return Naive()


class ReferenceSDID(nn.Module):
    """Reference-size analog-input SDID: token index and t as floats repeated over T = 16 steps."""

    def __init__(self, time_steps: int = 16, codes: int = 128):
        from spikingjelly.activation_based import layer, neuron, surrogate

        super().__init__()
        self.T = time_steps

        def block(i, o):
            return nn.Sequential(layer.SeqToANNContainer(nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o)),
                                 neuron.LIFNode(surrogate_function=surrogate.ATan(), step_mode="m"))

        self.l1, self.l2, self.l3 = block(2, 64), block(64, 128), block(128, 256)
        self.l4, self.l5 = block(256, 512), block(512, 256)
        self.l6 = layer.SeqToANNContainer(nn.Conv2d(256 + 256, codes, 3, 1, 1))

    def forward(self, tokens, t):
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        x = torch.stack([tokens.float(), t.float().view(-1, 1, 1).expand_as(tokens)], 1)
        s3 = self.l3(self.l2(self.l1(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1))))
        out = self.l6(torch.cat([self.l5(self.l4(s3)), s3], 2))
        return out.mean(0)


def interleaved_rates(configs: dict[str, tuple], rounds: int) -> dict[str, float]:
    """images/s of each ``name -> (step, batch)``, from the median step time over ``rounds`` rounds in which
    every configuration takes one step in turn (load on a shared machine then hits them all alike)."""
    for step, _ in configs.values():  # warm-up: allocator, numba compile cache load
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (step, _) in configs.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: configs[name][1] / statistics.median(t) for name, t in times.items()}


def vq_step(model, batch: int, opt):
    x = torch.rand(batch, 1, 28, 28) - 0.5

    def step():
        loss = model(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def sdid_step(model, batch: int, opt):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 128, (batch, 7, 7), generator=gen)

    def step():
        t, masked, h_t = training_mask(tokens, 128, 49, gen)
        loss = diffusion_loss(model(h_t, t), tokens, masked, t, 49)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    paper, fast = load_preset("paper"), load_preset("fast")
    stage1 = {}
    for name, model, batch, fused in [
        ("stage1 naive SpikingJelly (paper preset)", naive_vqsvae(16), 32, False),
        ("stage1 spkdiff paper preset", VQSVAE(VQSVAEConfig.from_dict(paper["vqsvae"]["model"])), 32, True),
        ("stage1 spkdiff fast preset", VQSVAE(VQSVAEConfig.from_dict(fast["vqsvae"]["model"])),
         fast["vqsvae"]["train"]["batch_size"], True),
    ]:
        opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-3, fused=fused)
        stage1[name] = (vq_step(model, batch, opt), batch)
    stage2 = {}
    for name, model, batch in [
        ("stage2 reference-size analog SDID (T=16)", ReferenceSDID(), 32),
        ("stage2 spkdiff SDID fast preset", SDID(SDIDConfig.from_dict(fast["sdid"]["model"])),
         fast["sdid"]["train"]["batch_size"]),
    ]:
        opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-3)
        stage2[name] = (sdid_step(model, batch, opt), batch)
    results = interleaved_rates(stage1, args.steps) | interleaved_rates(stage2, max(3, args.steps // 2))
    base = results["stage1 naive SpikingJelly (paper preset)"]
    ref = results["stage2 reference-size analog SDID (T=16)"]
    print(f"{'configuration':45s} {'train images/s':>15s} {'ratio':>8s}")
    for name, rate in results.items():
        denom = base if name.startswith("stage1") else ref
        print(f"{name:45s} {rate:15.1f} {rate / denom:7.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
