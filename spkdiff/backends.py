"""Where the commands meet the backends of :mod:`spkdiff.generation`.

``torch`` samples from a run's checkpoints; ``sim``, ``sim-fixed`` and ``lava`` run a deployment bundle
(a run given instead is exported to a temporary bundle first), so data flows one way:
checkpoint -> export -> bundle -> simulator or Lava.  This module (with the commands) is the only place
that knows all of train, export, simulator and neuromorphic.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from spkdiff.errors import SpkdiffError

BACKENDS = ("torch", "sim", "sim-fixed", "lava")


def add_backend_arguments(parser: argparse.ArgumentParser, default_backend: str) -> None:
    """The model source (``--run`` or ``--bundle``) and the backend options that every backend command shares."""
    from spkdiff import validate

    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="trained run directory, or pretrained:NAME (mnist, fashion-mnist, cifar10)")
    src.add_argument("--bundle", help="deployment bundle from `spkdiff-export --target lava` (sim / lava backends)")
    parser.add_argument("--backend", choices=BACKENDS, default=default_backend)
    parser.add_argument("--batch-size", type=validate.batch, default=256)
    parser.add_argument("--fixed", action="store_true", help="lava backend: fixed_pt (bit-accurate) models")
    parser.add_argument("--timeout", type=validate.seconds, default=600,
                        help="lava backend: seconds before the run is killed")


@contextmanager
def bundle_for(run: str | None, bundle: str | Path | None) -> Iterator[Path]:
    """``bundle`` as it is, or ``run`` exported to a temporary bundle that is removed afterwards."""
    if bundle is not None:
        yield Path(bundle)
        return
    if run is None:
        raise SpkdiffError("give --run or --bundle")
    from spkdiff.export.command import export

    with tempfile.TemporaryDirectory(prefix="spkdiff-bundle-") as tmp:
        out = Path(tmp) / "bundle"
        export(run, "lava", out)
        yield out


def sample_images(backend: str, *, run: str | None = None, bundle: str | Path | None = None, n: int,
                  steps: int | None = None, method: str | None = None, temperature: float | None = None,
                  remask: float | None = None, seed: int = 0, batch_size: int = 256, fixed: bool = False,
                  timeout: float = 600.0, dist: Any = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``n`` images in [0, 1], their tokens and an info dict (``denoiser_calls``, ``snn_steps``, ``seconds``,
    ``method``, ``steps``, ``temperature``, ``remask``; the simulator adds per-stage counts and
    ``energy_per_image``) from ``backend``.

    ``dist`` (torch backend under torchrun): the batches are shared out and every rank gets all images.
    """
    if backend not in BACKENDS:
        raise SpkdiffError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if run is None:
            raise SpkdiffError("the torch backend samples from --run (a bundle holds no torch model)")
        return _sample_torch(run, n, steps, method, temperature, remask, seed, batch_size, dist)
    with bundle_for(run, bundle) as path:
        if backend == "lava":
            from spkdiff.neuromorphic.lava_generate import sample_lava

            return sample_lava(path, n, steps=steps, method=method, temperature=temperature, remask=remask, seed=seed,
                               fixed=fixed, batch_size=batch_size, timeout=timeout)
        from spkdiff.simulator.generate import generate

        gen = generate(path, n, fixed=backend == "sim-fixed", steps=steps, method=method, temperature=temperature,
                       remask=remask, seed=seed, batch_size=batch_size)
    return gen.images, gen.tokens, {**gen.info(), "energy_per_image": generation_energy(gen)}


def generation_energy(gen: Any) -> dict[str, Any]:
    """Joules per generated image of a simulator run, as ``spkdiff sim --report`` prices it: the Loihi profile,
    the same network as an ANN at 45 nm, and the papers' SOP/MAC convention."""
    from spkdiff.simulator.report import build_report

    e = build_report(gen)["energy_per_image"]
    return {"profile": e["profile"], "snn_j": e["total_j"], "ann_profile": e["ann_profile"], "ann_j": e["ann_total_j"],
            "papers_snn_j": e["papers_convention"]["snn_j"]}


def _sample_torch(run: str, n: int, steps: int | None, method: str | None, temperature: float | None,
                  remask: float | None, seed: int, batch_size: int, dist: Any
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    from spkdiff.config import read_json, resolve_run
    from spkdiff.generation import resolve_sampler_settings
    from spkdiff.train.distributed import SINGLE
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import generate_images

    dist = dist or SINGLE

    def load() -> tuple:
        run_dir = resolve_run(run)
        return read_json(run_dir / "config.json", "run config"), load_stage(run_dir, "vqsvae"), \
            load_stage(run_dir, "sdid")

    config, vq, sdid = dist.run_on_main(load)  # rank 0 reads the files
    settings = resolve_sampler_settings(config.get("sdid", {}).get("sample"), method, steps, temperature, remask)
    images, tokens, stats = generate_images(vq, sdid, n, settings, seed=seed, batch_size=batch_size, dist=dist)
    info = {"backend": "torch", "method": settings.method, "steps": stats.denoiser_calls,
            "temperature": settings.temperature, "remask": settings.remask, "denoiser_calls": stats.denoiser_calls,
            "snn_steps": stats.snn_steps, "seconds": stats.seconds}
    return images, tokens, info


def reconstruct_images(backend: str, images: torch.Tensor, *, run: str | None = None,
                       bundle: str | Path | None = None, batch_size: int = 256, fixed: bool = False,
                       timeout: float = 600.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], Any]:
    """Reconstructions in [0, 1], tokens, an info dict (``seconds``, ``snn_steps``, ...) and, for the
    simulator backends, the :class:`spkdiff.simulator.generate.Reconstruction` (counters for a report; else
    None) of ``images`` (n, C, H, W) in [0, 1] on ``backend`` (:func:`spkdiff.generation.reconstruct`)."""
    if backend not in BACKENDS:
        raise SpkdiffError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if run is None:
            raise SpkdiffError("the torch backend reconstructs with --run (a bundle holds no torch model)")
        return (*_reconstruct_torch(run, images, batch_size), None)
    with bundle_for(run, bundle) as path:
        if backend == "lava":
            from spkdiff.neuromorphic.lava_generate import reconstruct_lava

            recon, tokens, info = reconstruct_lava(path, images, fixed=fixed, batch_size=batch_size,
                                                   timeout=timeout)
            return recon, tokens, info, None
        from spkdiff.simulator.generate import reconstruct

        rec = reconstruct(path, images, fixed=backend == "sim-fixed", batch_size=batch_size)
    return rec.images, rec.tokens, rec.info(), rec


def _reconstruct_torch(run: str, images: torch.Tensor, batch_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    from spkdiff.config import resolve_run
    from spkdiff.generation import check_images
    from spkdiff.train.loop import load_stage
    from spkdiff.train.sampling import reconstruct

    vq = load_stage(resolve_run(run), "vqsvae")
    x = check_images(images, (vq.cfg.in_channels, vq.cfg.image_size, vq.cfg.image_size))
    start = time.perf_counter()
    recon, tokens = reconstruct(vq, x, batch_size)
    return recon, tokens, {"backend": "torch", "seconds": time.perf_counter() - start, "snn_steps": 2 * vq.steps}
