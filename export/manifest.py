"""``manifest.json``: what runs on chip, what runs on the host, and every constant the host needs.

Schema (``format = "spkdiff-export"``, ``version = 1``)::

    target            "nir" | "onnx" (| "lava", added by its writer)
    versions          python, spkdiff, torch, nir, numpy, onnx... that wrote the files
    source            run directory name, dataset, preset, per-stage checkpoint file + sha256 + position
    time              dt = 1 (one SNN step), the neuron update equation in those units
    neuron            the LIF constants (NIR and SpikingJelly spellings)
    stages.{encoder,generator,sdid}
        on_chip, file, time_steps, input {node, shape, fine_shape, kind, constant_in_time, encoding},
        output {node, shape, kind}, readout {node, kind, take, equation, depth_to_space, crop,
        fine_shape, host_post}, analog_input_layers [...], layers [{name, kind, source, shape,
        fine_shape, phase_factor, analog_input}]
    host.codebook_lookup   Eq 4-8: k, tau_syn, psp_variant, code_decay, codebook (K x C), equations
    host.mask_sampler      num_codes, mask_token, diffusion_steps, time_bins, input encoding,
                           logits = v_T / T, softmax/temperature, method, steps, schedule
    host.decoder_output    depth-to-space factor, crop, tanh
    pipelines              reconstruction and generation as ordered lists of chip/host steps
    files                  file name -> sha256 (every file written, except the manifest)

A writer fills ``stages.*.file`` (and may add keys); unknown keys must be ignored by readers.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import nn

from spkdiff.files import sha256

from .nir_graphs import DT, StageGraph

FORMAT = "spkdiff-export"
VERSION = 1
_PACKAGES = ("spkdiff", "torch", "nir", "nirtorch", "numpy", "h5py", "onnx", "onnxscript", "onnxruntime")


def versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _source(run_dir: Path, stages: tuple[str, ...]) -> dict[str, Any]:
    from spkdiff.checkpoint import load_checkpoint

    out: dict[str, Any] = {"run": Path(run_dir).name, "checkpoints": {}}
    for stage in stages:
        path = Path(run_dir) / f"{stage}.safetensors"
        ckpt = load_checkpoint(path, stage=stage)
        out["checkpoints"][stage] = {"file": path.name, "sha256": sha256(path), "position": ckpt.position}
        out.setdefault("dataset", ckpt.config.get("dataset"))
        out.setdefault("preset", ckpt.config.get("preset"))
    return out


def _stage_entry(sg: StageGraph) -> dict[str, Any]:
    inp = next(layer for layer in sg.layers if layer.kind == "Input")
    encodings = {
        "encoder": ("analog currents", "image pixels x/255 - 0.5 (range [-0.5, 0.5]) as input current at every step"),
        "generator": ("analog currents", "z_q = codebook[tokens] as (C, h, w), input current at every step"),
        "sdid": ("spikes", "one-hot token and time-bin channels (see host.mask_sampler.input_spikes), "
                           "the same spikes at every step"),
    }
    kind, encoding = encodings[sg.name]
    return {
        "on_chip": True,
        "file": None,
        "time_steps": sg.steps,
        "input": {"node": inp.name, "shape": list(inp.shape), "fine_shape": list(inp.fine_shape), "kind": kind,
                  "constant_in_time": True, "encoding": encoding},
        "output": {"node": "output", "shape": list(sg.output.coarse), "phase_factor": sg.output.f,
                   "kind": "spikes" if sg.output.spikes else "read-out state"},
        "readout": dict(sg.readout),
        "analog_input_layers": [layer.name for layer in sg.layers if layer.analog_input],
        "layers": [layer.to_dict() for layer in sg.layers],
    }


def build_manifest(run_dir: Path, vq: nn.Module, sdid: nn.Module | None, stages: dict[str, StageGraph],
                   target: str) -> dict[str, Any]:
    """The target-independent manifest; writers fill in ``stages.*.file`` and ``files``."""
    vc = vq.cfg
    trained = ("vqsvae", "sdid") if sdid is not None else ("vqsvae",)
    if vc.psp_variant == "paper":
        psp = "PSP_t = (1 - 1/tau_syn) PSP_(t-1) + s_t / tau_syn, PSP_0 = 0; PSP = PSP_Ts"
    else:
        psp = "PSP = sum_t s_t code_decay^(Ts-1-t)"
    gen = stages["generator"].readout
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "target": target,
        "versions": versions(),
        "source": _source(run_dir, trained),
        "time": {
            "dt": DT,
            "unit": "one SNN step; NIR time constants are in steps",
            "lif_update": "v <- v + (dt/tau) (v_leak - v + r I); spike if v >= v_threshold; then v <- v_reset",
            "li_update": "v <- v + (dt/tau) (v_leak - v + r I)",
            "i_update": "v <- v + dt r I",
            "initial_state": "v = 0",
            "consumers": "pass dt = 1 to importers whose time constants are in seconds "
                         "(SpikingJelly import_from_nir(dt=1), Norse from_nir(dt=1))",
        },
        "neuron": {
            "model": "LIF, hard reset, decay_input",
            "nir": {"tau": 2.0, "r": 1.0, "v_leak": 0.0, "v_threshold": 1.0, "v_reset": 0.0},
            "spikingjelly": "LIFNode(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0)",
            "equation": "H = V + (X - (V - V_reset)) / tau; S = H >= V_th; V = V_reset if S else H",
        },
        "stages": {name: _stage_entry(sg) for name, sg in stages.items()},
        "host": {
            "codebook_lookup": {
                "after": "encoder", "before": "generator",
                "features": "z_e = k SFR + (1 - k) PSP  (per channel and position, over the encoder's spikes)",
                "sfr": "SFR = (1/Ts) sum_t s_t",
                "psp": psp,
                "k": float(vq.k.detach()),
                "tau_syn": vc.tau_syn,
                "psp_variant": vc.psp_variant,
                "code_decay": vc.readout_decay,
                "argmin": "h_ij = argmin_k ||z_e[:, i, j] - codebook[k]||_2 (lowest k on ties)",
                "embedding": "z_q[:, i, j] = codebook[h_ij]  -> generator input (C, h, w)",
                "codebook_shape": list(vq.codebook.shape),
                "codebook": vq.codebook.detach().double().tolist(),
            },
            "decoder_output": {
                "after": "generator",
                "steps": ["take the read-out state at the last step v_T",
                          f"depth-to-space (pixel_shuffle) by {gen['depth_to_space']}",
                          f"crop to {gen['crop']}", "x_hat = tanh(v_T)  (image in [-1, 1]; training pixels "
                                                    "are in [-0.5, 0.5])"],
                "depth_to_space": gen["depth_to_space"],
                "crop": gen["crop"],
            },
        },
        "pipelines": {
            "reconstruction": ["encoder (chip)", "codebook_lookup (host)", "generator (chip)",
                               "decoder_output (host)"],
        },
        "files": {},
    }
    if sdid is not None:
        sc = sdid.cfg
        sample = _sample_settings(run_dir)
        manifest["host"]["mask_sampler"] = {
            "before": "sdid", "after": "sdid",
            "num_codes": sc.num_codes, "mask_token": sc.num_codes, "grid": [sc.grid, sc.grid],
            "diffusion_steps": sc.diffusion_steps, "time_bins": sc.time_bins,
            "patch": sc.patch,
            "input_spikes": _sdid_input_text(sc),
            "logits": (f"logits = v_T / {sc.time_steps} (integrator state at the last step)" + (
                "" if sc.patch == 1 else f", (K p^2, h/p, w/p) -> (K, h, w) depth-to-space with p = {sc.patch}: "
                "read-out channel c p^2 + dy p + dx is code c at token (p i + dy, p j + dx)")),
            "softmax": "p = softmax(logits / temperature) over the K codes",
            "sampling": "draw h ~ Categorical(p) for each masked token",
            "method": sample.get("method", "confidence"),
            "steps": sample.get("steps"),
            "temperature": sample.get("temperature", 1.0),
            "remask": sample.get("remask", 0.0),
            "schedule": {
                "start": "all tokens [MASK]",
                "model_time": "t_model = max(1, ceil(step_t T_d / S)) for step_t = S..1",
                "paper": "each still-masked token is unmasked w.p. 1/step_t with its drawn token",
                "remask": "paper with remask = eta > 0 (ReMDM-cap): alpha_t = 1 - step_t/S, alpha_s = 1 - "
                          "(step_t - 1)/S, sigma = min(eta, (1 - alpha_s)/alpha_t) (0 if alpha_t = 0); with one "
                          "uniform u per token, a masked token is unmasked with its draw if u < (alpha_s - (1 - "
                          "sigma) alpha_t)/(1 - alpha_t), a token unmasked before the step is masked again if u < "
                          "sigma",
                "confidence": "keep the most probable draws so that floor(N cos(pi/2 (i+1)/S)) tokens stay "
                              "masked after step i (0 after the last)",
                "coarse": "unmask the positions of rank < round(N (i+1)/S) at step i; rank: the phase of the "
                          "stride-2 sub-lattice in the order (even, even), (odd, odd), (even, odd), (odd, even), "
                          "random within a phase (drawn once, before the first step)",
            },
        }
        manifest["pipelines"]["generation"] = [
            "repeat S times: mask_sampler -> sdid (chip) -> mask_sampler (host)",
            "embedding z_q = codebook[tokens] (host)", "generator (chip)", "decoder_output (host)"]
    return manifest


def _sdid_input_text(sc: Any) -> str:
    """The manifest's description of the SDID's input spikes (the host builds them each call)."""
    g, p = sc.chip_grid, sc.patch
    tokens = ("channel h_ij is 1 at (i, j)" if p == 1 else
              f"channel h_ij p^2 + (i mod p) p + (j mod p) is 1 at (i div p, j div p) with p = {p}")
    return (f"(p^2 (K+1) + bins, h/p, w/p) = ({sc.in_channels}, {g}, {g}): {tokens} (K = {sc.num_codes} is "
            f"[MASK]); channel p^2 (K+1) + bin(t) is 1 everywhere with bin(t) = clamp(ceil(t bins / T_d) - 1, 0, "
            "bins - 1)")


def _sample_settings(run_dir: Path) -> dict[str, Any]:
    from spkdiff.checkpoint import load_checkpoint

    # Sampler settings are not training state: the run's config.json (editable) wins over the checkpoint's copy.
    run_config = Path(run_dir) / "config.json"
    if run_config.exists():
        try:
            sample = json.loads(run_config.read_text()).get("sdid", {}).get("sample")
        except (OSError, ValueError, AttributeError):  # unreadable or malformed: use the checkpoint's copy
            sample = None
        if sample:
            return dict(sample)
    ckpt = load_checkpoint(Path(run_dir) / "sdid.safetensors", stage="sdid")
    return dict(ckpt.config.get("sdid", {}).get("sample", {}))


def finish_manifest(manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Record the sha256 of every file in ``out_dir`` (except the manifest) under ``files``."""
    manifest["files"] = {p.name: sha256(p) for p in sorted(Path(out_dir).iterdir())
                         if p.is_file() and p.name != "manifest.json"}
    return manifest


def write_manifest(manifest: dict[str, Any], out_dir: Path) -> None:
    """Fill ``files`` and write ``out_dir/manifest.json``."""
    finish_manifest(manifest, out_dir)
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
