"""The README's sample and reconstruction grids of a shipped model, 3x upscaled (nearest) so strokes can be judged.

    python docs/make_grids.py mnist ../shared/data

writes docs/NAME_samples_fast12.png (36 samples, seed 0, the model's default sampler, 6 per row) and
docs/NAME_reconstructions.png (the first 16 test images above their reconstructions).

    python docs/make_grids.py --compare docs/OUT.png fashion-mnist ../shared/data RUN [RUN ...]

writes one comparison grid: the first 12 test images, then each run's reconstructions of them, one row per run.
"""

from __future__ import annotations

import argparse
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


def upscale(path: Path) -> None:
    image = Image.open(path)
    image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.NEAREST).save(path)
    print(path)


def compare(out: Path, dataset: str, data_root: str, runs: list[str], n: int = 12) -> None:
    """Test images above each run's reconstructions of them, one row per run, in the order given."""
    test, _ = load_tensor(dataset, data_root, "test", limit=n)
    rows = [test]
    with torch.no_grad():
        for run in runs:
            rows.append(reconstruct(load_stage(resolve_run(run), "vqsvae"), test)[0])
    save_grid(torch.cat(rows), out, nrow=n)
    upscale(out)


def shipped_grids(name: str, data_root: str) -> None:
    out, run = Path(__file__).parent, f"pretrained:{name}"
    images, _, _ = sample_images("torch", run=run, n=36, seed=0)
    samples = out / f"{name}_samples_fast12.png"
    save_grid(images, samples, nrow=6)
    upscale(samples)
    dataset = read_run_config(resolve_run(run))["dataset"]
    compare(out / f"{name}_reconstructions.png", dataset, data_root, [run], n=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, metavar="OUT", help="write a reconstruction comparison grid to OUT")
    parser.add_argument("name", help="pretrained model name, or with --compare the dataset")
    parser.add_argument("data_root")
    parser.add_argument("runs", nargs="*", help="with --compare: run directories or pretrained:NAME, one row each")
    args = parser.parse_args()
    if args.compare is None:
        if args.runs:
            parser.error("runs are given only with --compare")
        shipped_grids(args.name, args.data_root)
    elif not args.runs:
        parser.error("--compare needs at least one run")
    else:
        compare(args.compare, args.name, args.data_root, args.runs)


if __name__ == "__main__":
    main()
