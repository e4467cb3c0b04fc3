"""The README's sample and reconstruction grids of a shipped model, 3x upscaled (nearest) so strokes can be judged.

    python docs/make_grids.py mnist ../shared/data

writes docs/NAME_samples_fast12.png (36 samples, seed 0, the model's default sampler, 6 per row) and
docs/NAME_reconstructions.png (the first 16 test images above their reconstructions).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image

from spkdiff.backends import sample_images
from spkdiff.config import read_run_config, resolve_run
from spkdiff.data import load_tensor
from spkdiff.imageio import save_grid
from spkdiff.train.loop import load_stage
from spkdiff.train.sampling import reconstruct

UPSCALE = 3


def main(name: str, data_root: str) -> None:
    out = Path(__file__).parent
    images, _, _ = sample_images("torch", run=f"pretrained:{name}", n=36, seed=0)
    run = resolve_run(f"pretrained:{name}")
    test, _ = load_tensor(read_run_config(run)["dataset"], data_root, "test", limit=16)
    recon, _ = reconstruct(load_stage(run, "vqsvae"), test)
    samples, reconstructions = out / f"{name}_samples_fast12.png", out / f"{name}_reconstructions.png"
    save_grid(images, samples, nrow=6)
    save_grid(torch.cat([test, recon]), reconstructions, nrow=16)
    for path in (samples, reconstructions):
        image = Image.open(path)
        image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.NEAREST).save(path)
        print(path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
