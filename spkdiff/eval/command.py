"""``spkdiff eval``: reconstruction (MSE, 1 - SSIM) and generation (FID, KID, CFD, P/R) metrics of a run."""

from __future__ import annotations

import argparse

GENERATIVE = ("fid", "kid", "pr", "cfd", "ckid", "cpr")
RECONSTRUCTION = ("mse", "ssim", "rfid")  # rfid: FID of the reconstructions (the stage-1 ceiling)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory or pretrained:NAME")
    parser.add_argument("--metrics", default="mse,ssim",
                        help="comma list: fid,kid,pr,cfd,ckid,cpr of generated images; mse,ssim,rfid of "
                             "reconstructed test images (rfid: their FID against the test split)")
    parser.add_argument("--n", type=int, default=5000, help="generated images (and reconstructed test images)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--method", choices=("paper", "confidence"), default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("torch", "sim", "sim-fixed"), default="torch")
    parser.add_argument("--bundle", default=None,
                        help="bundle for the sim backends (default: export one to a temp dir)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dist-timeout", type=float, default=600,
                        help="under torchrun (torch backend): seconds a rank may wait for another before failing")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from spkdiff.config import read_json, resolve_run
    from spkdiff.data import load_tensor
    from spkdiff.errors import SpkdiffError
    from spkdiff.eval.evaluate import append_results_row, evaluate_images
    from spkdiff.imageio import save_grid
    from spkdiff.train import distributed
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sample_command import _sampler_settings
    from spkdiff.train.sampling import codebook_usage, generate, reconstruct

    metrics = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(GENERATIVE) - set(RECONSTRUCTION))
    if unknown:
        raise SpkdiffError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(GENERATIVE + RECONSTRUCTION)}")
    if args.n < 2:
        raise SpkdiffError("--n must be at least 2")
    wanted_rec = [m for m in metrics if m in RECONSTRUCTION]
    wanted_gen = [m for m in metrics if m in GENERATIVE]
    # Under torchrun (torch backend): rank 0 loads the models, the reconstruction and sampling batches are
    # shared out over the ranks and gathered; then rank 0 alone computes the metrics.
    with distributed.session(args.dist_timeout) as dist:
        if dist.enabled and args.backend != "torch":
            raise SpkdiffError(f"under torchrun only the torch backend is shared out; run --backend {args.backend} "
                               "as one process")
        run_dir = dist.run_on_main(lambda: resolve_run(args.run))
        config = dist.run_on_main(lambda: read_json(run_dir / "config.json", "run config"))
        if wanted_rec:
            vq = dist.run_on_main(lambda: load_stage(run_dir, "vqsvae"))
            with dist.main_first():
                test, _ = load_tensor(config["dataset"], args.data_root, "test", limit=args.n)
            recon, tokens = reconstruct(vq, test, args.batch_size, dist=dist)
        if wanted_gen and args.backend == "torch":
            method, steps, temperature = _sampler_settings(args, config)
            vq, sdid = dist.run_on_main(lambda: (load_stage(run_dir, "vqsvae"), load_stage(run_dir, "sdid")))
            images, _, stats = generate(vq, sdid, args.n, steps=steps, method=method, temperature=temperature,
                                        seed=args.seed, batch_size=args.batch_size, dist=dist)
    if not dist.is_main:
        return 0
    out_dir = run_dir if not args.run.startswith("pretrained:") else Path("eval-" + args.run.split(":", 1)[1])
    dataset = config["dataset"]
    row: dict = {"run": args.run, "backend": args.backend, "seed": args.seed}

    if wanted_rec:
        paired = [m for m in wanted_rec if m != "rfid"]
        if paired:
            row.update(evaluate_images(recon, dataset, args.data_root, paired, reference=test, progress=False))
        if "rfid" in wanted_rec:  # the reconstructions' distribution against the whole test split
            fid_row = evaluate_images(recon, dataset, args.data_root, ["fid"], progress=False)
            row.update(recon_fid=fid_row.pop("fid"), **fid_row)
        row.update({f"codebook_{k}": v for k, v in codebook_usage(tokens, vq.cfg.codebook_size).items()})
        k = min(16, test.shape[0])
        save_grid(torch.cat([test[:k], recon[:k]]), out_dir / "reconstructions.png", nrow=k)
        row["n_reconstructed"] = int(test.shape[0])

    if wanted_gen:
        method, steps, temperature = _sampler_settings(args, config)
        if args.backend == "torch":
            steps_used = stats.denoiser_calls
        else:
            from spkdiff.simulator.generate import generate_from_run

            images, info = generate_from_run(run_dir, args.bundle, args.n, fixed=args.backend == "sim-fixed",
                                             steps=steps, method=method, temperature=temperature, seed=args.seed)
            steps_used = info["denoiser_calls"]
        save_grid(images[:64], out_dir / f"samples_{args.backend}.png")
        row.update(sampler=method, sampler_steps=steps_used, temperature=temperature)
        row.update(evaluate_images(images, dataset, args.data_root, wanted_gen, seed=args.seed))
    append_results_row(out_dir, row)
    print(json.dumps(row, indent=2))
    return 0
