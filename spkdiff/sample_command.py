"""``spkdiff sample``: generate images (torch models, the simulator, or Lava)."""

from __future__ import annotations

import argparse

BACKENDS = ("torch", "sim", "sim-fixed", "lava")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="trained run directory, or pretrained:mnist / pretrained:fashion-mnist")
    src.add_argument("--bundle", help="deployment bundle from `spkdiff-export --target lava` (sim / lava backends)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--method", choices=("paper", "confidence"), default=None,
                        help="paper: 1/t unmasking; confidence: confidence-ordered parallel unmasking")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--fixed", action="store_true", help="lava backend: fixed_pt (bit-accurate) models")
    parser.add_argument("--timeout", type=float, default=600, help="lava backend: seconds before the run is killed")
    parser.add_argument("--out", default="samples.png", help="PNG grid path; tokens go beside it as .npy")
    parser.add_argument("--dist-timeout", type=float, default=600,
                        help="under torchrun (torch backend): seconds a rank may wait for another before failing")


def _sampler_settings(args: argparse.Namespace, config: dict) -> tuple[str, int | None, float]:
    preset = config.get("sdid", {}).get("sample", {})
    method = args.method or preset.get("method", "confidence")
    # The preset's step count belongs to the preset's method; the paper schedule defaults to T_d steps.
    steps = args.steps or (preset.get("steps") if method == preset.get("method", "confidence") else None)
    temperature = args.temperature if args.temperature is not None else preset.get("temperature", 1.0)
    return method, steps, temperature


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from spkdiff.config import read_json, resolve_run
    from spkdiff.errors import SpkdiffError
    from spkdiff.imageio import save_grid

    if args.n < 1:
        raise SpkdiffError("--n must be at least 1")
    out = Path(args.out)
    if args.backend == "torch":
        if args.run is None:
            raise SpkdiffError("the torch backend samples from --run (a bundle holds no torch model)")
        from spkdiff.train import distributed
        from spkdiff.train.loop import load_stage
        from spkdiff.train.sampling import generate

        def load() -> tuple:
            run_dir = resolve_run(args.run)
            return read_json(run_dir / "config.json", "run config"), load_stage(run_dir, "vqsvae"), \
                load_stage(run_dir, "sdid")

        # Under torchrun: rank 0 loads the models, the batches are shared out, every rank gets all images.
        with distributed.session(args.dist_timeout) as dist:
            config, vq, sdid = dist.run_on_main(load)
            method, steps, temperature = _sampler_settings(args, config)
            images, tokens, stats = generate(vq, sdid, args.n, steps=steps, method=method, temperature=temperature,
                                             seed=args.seed, batch_size=args.batch_size, dist=dist)
        if not dist.is_main:
            return 0
        calls, snn_steps, seconds = stats.denoiser_calls, stats.snn_steps, stats.seconds
    else:
        from spkdiff.train.distributed import world_from_env

        if world_from_env()[1] > 1:
            raise SpkdiffError("under torchrun only the torch backend is shared out over ranks; run "
                               f"--backend {args.backend} as one process")
        from spkdiff.simulator.generate import sample_backend  # sim / sim-fixed / lava share the bundle loop

        images, tokens, info = sample_backend(args)
        calls, snn_steps, seconds = info["denoiser_calls"], info["snn_steps"], info["seconds"]
    save_grid(images, out)
    np.save(out.with_suffix(".tokens.npy"), tokens.numpy().astype(np.int16))
    print(f"wrote {out} and {out.with_suffix('.tokens.npy')}: {args.n} images, backend {args.backend}, "
          f"{calls} denoiser calls and {snn_steps} SNN time steps per image, {args.n / max(seconds, 1e-9):.3g} "
          f"images/s")
    return 0
