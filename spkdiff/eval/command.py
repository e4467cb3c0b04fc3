"""``spkdiff eval``: reconstruction (MSE, 1 - SSIM) and generation (FID, KID, CFD, P/R) metrics of a run."""

from __future__ import annotations

import argparse

from spkdiff import validate
from spkdiff.config import REMASK_HELP, SAMPLER_METHODS

GENERATIVE = ("fid", "kid", "pr", "cfd", "ckid", "cpr")
RECONSTRUCTION = ("mse", "ssim", "rfid")  # rfid: FID of the reconstructions (the stage-1 ceiling)
PRIOR = ("nll",)  # the prior's held-out bound on -log2 p(tokens) per token (Eq 14), on the test images' tokens
KNOWN = GENERATIVE + RECONSTRUCTION + PRIOR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory or pretrained:NAME")
    parser.add_argument("--metrics", type=validate.comma_separated(str), default=["mse", "ssim"],
                        help="comma list: fid,kid,pr,cfd,ckid,cpr of generated images; mse,ssim,rfid of "
                             "reconstructed test images (rfid: their FID against the test split); nll: the "
                             "prior's bound on -log2 p per token of the test images' tokens")
    parser.add_argument("--fid-protocols", type=validate.comma_separated(str), default=["std"],
                        help="comma list of FID preprocessing protocols (std, pytorch-fid): the first is the primary "
                             "(fid, kid, pr); the others add fid_<protocol> (and recon_fid_<protocol>)")
    parser.add_argument("--n", type=validate.images, default=5000,
                        help="generated images (and reconstructed test images)")
    parser.add_argument("--steps", type=validate.steps, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--method", choices=SAMPLER_METHODS, default=None)
    parser.add_argument("--temperature", type=validate.temperature, default=None)
    parser.add_argument("--remask", type=validate.probability, default=None,
                        help=REMASK_HELP)
    parser.add_argument("--seed", type=validate.seed, default=0)
    parser.add_argument("--backend", choices=("torch", "sim", "sim-fixed"), default="torch")
    parser.add_argument("--bundle", default=None,
                        help="bundle for the sim backends (default: export one to a temp dir)")
    parser.add_argument("--data-root", type=validate.in_dir, default=None)
    parser.add_argument("--batch-size", type=validate.batch, default=256)
    parser.add_argument("--dist-timeout", type=validate.seconds, default=600,
                        help="under torchrun (torch backend): seconds a rank may wait for another before failing")


def run(args: argparse.Namespace) -> int:
    import json
    import math
    from pathlib import Path

    import torch

    from spkdiff.backends import sample_images
    from spkdiff.config import read_run_config, resolve_run
    from spkdiff.data import check_image_shape, load_tensor
    from spkdiff.errors import SpkdiffError
    from spkdiff.eval.evaluate import append_results_row, evaluate_images
    from spkdiff.imageio import save_grid
    from spkdiff.train import distributed
    from spkdiff.train.loop import encode_dataset, load_stage
    from spkdiff.train.sampling import codebook_usage, reconstruct
    from spkdiff.validate import check_finite

    metrics = [m.lower() for m in args.metrics]
    unknown = sorted(set(metrics) - set(KNOWN))
    if unknown:
        raise SpkdiffError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(KNOWN)}")
    if args.n < 2:
        raise SpkdiffError("--n must be at least 2")
    from spkdiff.eval.inception import get_protocol

    protocols = args.fid_protocols
    for p in protocols:
        get_protocol(p)
    primary, also = protocols[0], protocols[1:]
    wanted_rec = [m for m in metrics if m in RECONSTRUCTION]
    wanted_gen = [m for m in metrics if m in GENERATIVE]
    wanted_nll = "nll" in metrics
    # Under torchrun (torch backend): rank 0 loads the models, the reconstruction and sampling batches are
    # shared out over the ranks and gathered; then rank 0 alone computes the metrics.
    with distributed.session(args.dist_timeout) as dist:
        if dist.enabled and args.backend != "torch":
            raise SpkdiffError(f"under torchrun only the torch backend is shared out; run --backend {args.backend} "
                               "as one process")
        run_dir = dist.run_on_main(lambda: resolve_run(args.run))
        config = dist.run_on_main(lambda: read_run_config(run_dir))
        if wanted_rec or wanted_nll:
            vq = dist.run_on_main(lambda: load_stage(run_dir, "vqsvae"))
            check_image_shape(config["dataset"], vq.cfg.image_shape, f"{args.run} was trained on")
            with dist.main_first():
                test, _ = load_tensor(config["dataset"], args.data_root, "test", limit=args.n)
            if wanted_rec:
                recon, tokens = reconstruct(vq, test, args.batch_size, dist=dist)
            else:  # nll alone needs the tokens, not the decoded images
                tokens = encode_dataset(vq, test, args.batch_size, dist=dist)
        if wanted_gen:
            images, _, info = sample_images(args.backend, run=args.run, bundle=args.bundle, n=args.n,
                                            steps=args.steps, method=args.method, temperature=args.temperature,
                                            remask=args.remask, seed=args.seed, batch_size=args.batch_size, dist=dist)
    if not dist.is_main:
        return 0
    out_dir = run_dir if not args.run.startswith("pretrained:") else Path("eval-" + args.run.split(":", 1)[1])
    dataset = config["dataset"]
    row: dict = {"run": args.run, "backend": args.backend, "seed": args.seed}

    if wanted_rec:
        check_finite(recon, "the reconstructed images (a model with NaN/Inf weights?)")
        paired = [m for m in wanted_rec if m != "rfid"]
        if paired:
            row.update(evaluate_images(recon, dataset, args.data_root, paired, reference=test, progress=False))
        if "rfid" in wanted_rec:  # the reconstructions' distribution against the whole test split
            fid_row = evaluate_images(recon, dataset, args.data_root, ["fid"], protocol=primary,
                                      also_fid_protocols=also, progress=False)
            row.update({"recon_" + k if k.startswith("fid") else k: v for k, v in fid_row.items()})
        row.update({f"codebook_{k}": v for k, v in codebook_usage(tokens, vq.cfg.codebook_size).items()})
        k = min(16, test.shape[0])
        save_grid(torch.cat([test[:k], recon[:k]]), out_dir / "reconstructions.png", nrow=k)
        row["n_reconstructed"] = int(test.shape[0])

    if wanted_nll:
        from spkdiff.train.sdid import held_out_cross_entropy

        scores = held_out_cross_entropy(load_stage(run_dir, "sdid"), tokens, args.batch_size, args.seed)
        row["prior_nll_bits_per_token"] = scores.elbo_bits_per_token()
        # bits per masked token at t = 1..T_d: high t is where the layout is drawn, low t the details
        row["prior_ce_bits_by_time"] = [None if math.isnan(b) else round(b, 5)
                                        for b in scores.per_masked_token().tolist()]
        row["n_token_grids"] = int(tokens.shape[0])

    if wanted_gen:
        check_finite(images, "the generated images (a model with NaN/Inf weights?)")
        save_grid(images[:64], out_dir / f"samples_{args.backend}.png")
        row.update(sampler=info["method"], sampler_steps=info["denoiser_calls"], temperature=info["temperature"],
                   remask=info["remask"])
        if "energy_per_image" in info:  # simulator backends: what each image cost, as `spkdiff sim --report`
            e = info["energy_per_image"]
            row.update({f"energy_mj_per_image_{e['profile']}": e["snn_j"] * 1e3,
                        f"energy_mj_per_image_ann_{e['ann_profile']}": e["ann_j"] * 1e3,
                        "energy_mj_per_image_papers_convention": e["papers_snn_j"] * 1e3})
        row.update(evaluate_images(images, dataset, args.data_root, wanted_gen, protocol=primary,
                                   also_fid_protocols=also if "fid" in wanted_gen else (), seed=args.seed))
    for key, value in row.items():  # a NaN metric is a failure, never a result row
        if isinstance(value, float):
            check_finite(value, f"metric {key}")
    append_results_row(out_dir, row)
    print(json.dumps(row, indent=2))
    return 0
