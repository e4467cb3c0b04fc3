"""Deployment bundles (``spkdiff-export --target lava``): read one without the training or export code.

Layout of a bundle folder::

    manifest.json                 the export manifest (target "lava", bundle_version, versions incl. lava-nc)
    encoder.nir generator.nir sdid.nir        NIR graphs of the on-chip stages (float parameters)
    encoder.loihi.safetensors ...             Loihi integers of every neuron node of that stage

``manifest["stages"][stage]["loihi"]`` describes the integers: per neuron node ``du, dv, vth, scale,
spiking, analog_factor, method`` and its tensors ``bias_mant``/``bias_exp`` (population shape), per folded
synapse ``weight_int`` (torch layout, ``a = shift(W_int s, weight_exp)``) and per direct spike edge an
integer weight.  A neuron's float potential is ``V = v_int / scale``; graded (analog) input currents
``X`` enter as ``a = round(X * analog_factor)``.  ``files`` holds the sha256 of every other file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spkdiff.errors import SpkdiffError
from spkdiff.files import sha256
from spkdiff.neuromorphic import loihi
from spkdiff.neuromorphic.nir_graph import check_graph_finite
from spkdiff.neuromorphic.quantize import NeuronQuant, SynapseQuant
from spkdiff.validate import check_manifest

FORMAT = "spkdiff-export"
TARGET = "lava"
BUNDLE_VERSION = 1
STAGES = ("encoder", "generator", "sdid")


# ----------------------------------------------------------------------------- Loihi integer ranges


def loihi_ranges() -> dict[str, tuple[int, int]]:
    """Every integer field of a bundle's Loihi parameters and its range, from the formats of ``loihi``."""
    weight = (-(1 << loihi.WEIGHT_BITS), (1 << loihi.WEIGHT_BITS) - 1)  # what lava_dense_weights accepts
    return {"du": (0, loihi.DU_MAX), "dv": (0, loihi.DV_MAX), "vth": (0, loihi.READOUT_VTH),
            "bias_mant": (loihi.BIAS_MANT_MIN, loihi.BIAS_MANT_MAX),
            "bias_exp": (-loihi.BIAS_EXP_MAX, loihi.BIAS_EXP_MAX),
            "weight": weight, "weight_int": weight, "weight_exp": (-8, 7),  # Loihi's 4-bit signed weight exponent
            "sign_mode": (0, 3)}


def check_integer(value: Any, field: str, where: str) -> int:
    """A scalar Loihi integer: integral (not 2.5, not True) and in its format's range."""
    lo, hi = loihi_ranges()[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise SpkdiffError(f"{where}.{field} must be an integer, got {value!r:.40}")
    if not lo <= value <= hi:
        raise SpkdiffError(f"{where}.{field} = {int(value)} is outside Loihi's range [{lo}, {hi}]")
    return int(value)


def check_integer_array(array: Any, field: str, where: str) -> Any:
    """A tensor of Loihi integers (any numeric dtype; a float tensor must hold whole numbers) in range."""
    a = np.asarray(array)
    lo, hi = loihi_ranges()[field]
    if a.dtype.kind not in "iuf":
        raise SpkdiffError(f"{where}.{field} has dtype {a.dtype}, expected integers")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise SpkdiffError(f"{where}.{field} holds non-integer values")
    if a.size and (a.min() < lo or a.max() > hi):
        raise SpkdiffError(f"{where}.{field} spans [{a.min():g}, {a.max():g}], outside Loihi's range [{lo}, {hi}]")
    return a.astype(np.int64)


class BundleError(SpkdiffError):
    """A bundle is missing, damaged, or was written by another version."""


@dataclass
class Bundle:
    """A loaded bundle: ``graphs[stage]`` (nir.NIRGraph), ``loihi[stage][neuron]``, host constants."""

    path: Path
    manifest: dict[str, Any]
    graphs: dict[str, Any]
    loihi: dict[str, dict[str, NeuronQuant]]
    codebook: np.ndarray  # (K, C) float32

    @property
    def stages(self) -> list[str]:
        return list(self.manifest["stages"])

    def stage(self, name: str) -> dict[str, Any]:
        if name not in self.manifest["stages"]:
            raise BundleError(f"bundle {self.path} has no {name} stage (stages: {', '.join(self.stages)})")
        return self.manifest["stages"][name]

    def time_steps(self, stage: str) -> int:
        return int(self.stage(stage)["time_steps"])

    @property
    def host(self) -> dict[str, Any]:
        return self.manifest["host"]

    @property
    def sampler(self) -> dict[str, Any]:
        """``host.mask_sampler``: num_codes, diffusion_steps, time_bins, grid, method, steps, temperature."""
        if "mask_sampler" not in self.host:
            raise BundleError(f"bundle {self.path} holds no trained SDID (no host.mask_sampler)")
        return self.host["mask_sampler"]

    @property
    def decoder_output(self) -> dict[str, Any]:
        return self.host["decoder_output"]

    @property
    def quant_options(self) -> dict[str, Any]:
        return dict(self.manifest.get("lava", {}).get("quantization", {}).get("options", {}))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of bundle folder ``path`` (format, target and version, file hashes)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle folder not found: {root}")
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"{root} is not a bundle: manifest.json is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{mpath}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} was not written by spkdiff-export")
    if manifest.get("target") != TARGET:
        raise BundleError(f"{root} is a {manifest.get('target')!r} export, not a bundle: export it with --target lava")
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError(f"{root} is bundle version {manifest.get('bundle_version')!r}; this spkdiff reads version "
                          f"{BUNDLE_VERSION}: re-export it with this version")
    try:
        check_manifest(manifest, mpath)
    except SpkdiffError as err:
        raise BundleError(str(err)) from None
    for name, digest in manifest.get("files", {}).items():
        f = root / name
        if not f.is_file():
            raise BundleError(f"bundle {root} is incomplete: {name} is missing")
        if sha256(f) != digest:
            raise BundleError(f"bundle {root}: {name} does not match its sha256 in manifest.json (modified or damaged)")
    return manifest


def _layer(name: str, meta: dict[str, Any], tensors: dict[str, np.ndarray], where: str) -> NeuronQuant:
    """One neuron node's integers, as the quantizer made them, each checked to be integral and in its Loihi
    format's range."""
    where = f"{where}.{name}"

    def synapse(s: str, m: dict[str, Any]) -> SynapseQuant:
        at = f"{where}.synapses.{s}"
        if m.get("sign_mode") is not None:
            check_integer(m["sign_mode"], "sign_mode", at)
        if m.get("weight") is None:
            raise SpkdiffError(f"{at} has no integer weights")
        return SynapseQuant(check_integer_array(tensors[m["weight"]], "weight_int", at),
                            check_integer(m["weight_exp"], "weight_exp", at))

    syns = {s: synapse(s, m) for s, m in meta.get("synapses", {}).items()}
    direct = {d: (check_integer(m["weight"], "weight", f"{where}.direct.{d}"),
                  check_integer(m["weight_exp"], "weight_exp", f"{where}.direct.{d}"))
              for d, m in meta.get("direct", {}).items()}
    ints = {k: check_integer(meta[k], k, where) for k in ("du", "dv", "vth")}
    return NeuronQuant(meta["method"], ints["du"], ints["dv"], ints["vth"], float(meta["scale"]),
                       bool(meta["spiking"]), float(meta["analog_factor"]),
                       check_integer_array(tensors[meta["bias_mant"]], "bias_mant", where),
                       check_integer_array(tensors[meta["bias_exp"]], "bias_exp", where), syns, direct)


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle folder; any problem is one-line :class:`BundleError`."""
    import nir
    from safetensors.numpy import load_file

    root = Path(path)
    manifest = read_manifest(root)
    graphs: dict[str, Any] = {}
    layers: dict[str, dict[str, NeuronQuant]] = {}
    for stage, entry in manifest["stages"].items():
        try:
            graphs[stage] = nir.read(str(root / entry["file"]))
        except Exception as err:  # h5py / nir raise many types, some with an empty message
            raise BundleError(f"bundle {root}: cannot read {entry.get('file')}: {str(err) or type(err).__name__}"
                              ) from None
        check_graph_finite(graphs[stage], f"bundle {root}: {entry['file']}", BundleError)
        q = entry.get("loihi")
        if q is None:
            raise BundleError(f"bundle {root}: stage {stage} has no Loihi parameters")
        try:
            tensors = load_file(str(root / q["file"]))
            layers[stage] = {n: _layer(n, m, tensors, f"bundle {root}: {stage}") for n, m in q["layers"].items()}
        except SpkdiffError as err:
            raise BundleError(str(err)) from None
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise BundleError(f"bundle {root}: stage {stage}: bad Loihi parameters ({err})") from None
    codebook = np.asarray(manifest["host"]["codebook_lookup"]["codebook"], dtype=np.float32)
    return Bundle(root, manifest, graphs, layers, codebook)
