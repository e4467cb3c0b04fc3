"""The one validation layer: argument types, file schemas, Loihi integer ranges and finiteness checks.

Every check fails with one line that names the argument, or the file and the field, so the CLI prints it
and exits 2.  Argument types raise :class:`argparse.ArgumentTypeError` (argparse adds the option name);
everything else raises :class:`~spkdiff.errors.SpkdiffError`.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spkdiff.errors import SpkdiffError

# Upper bounds that refuse up front what cannot fit (a 28x28 float image is 3 KiB: 10**6 images are 3 GiB).
MAX_IMAGES = 1_000_000
MAX_STEPS = 100_000
MAX_BATCH = 65_536
MAX_SECONDS = 7 * 24 * 3600.0
MAX_ELEMENTS = 1 << 31  # a single input/state tensor of more elements (8 GiB of float32) cannot fit


# ----------------------------------------------------------------------------- argparse types


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi if hi is not None else 'inf'}], "
                                             f"got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    def parse(text: str) -> float:
        value = float(_number(text, float))
        if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"must be a number in {left}{lo:g}, "
                                             f"{'inf' if hi is None else f'{hi:g}'}], got {text}")
        return value
    parse.__name__ = "number"
    return parse


def comma_separated(item: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse type: "a, b,c" -> [item("a"), item("b"), item("c")] (blanks dropped, at least one value).

    ``item`` is a plain type (``str``, ``int``, ``float``) or one of this module's argument types.
    """
    name = getattr(item, "__name__", "value")

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated {name} values, got {text!r}")
        try:
            return [item(part) for part in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {name} values, got {text!r}") from None
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"{error} (in {text!r})") from None

    parse.__name__ = f"comma-separated {name}"
    return parse


count = int_in(1)  # images, epochs, limits: at least one
images = int_in(1, MAX_IMAGES)
batch = int_in(1, MAX_BATCH)
steps = int_in(1, MAX_STEPS)
seed = int_in(0, 2**63 - 1)
temperature = float_in(0.0, 1e6)  # 0 is greedy on purpose; negative is meaningless
probability = float_in(0.0, 1.0)
seconds = float_in(0.0, MAX_SECONDS, lo_open=True)
positive = float_in(0.0, None, lo_open=True)


def _probe(path: Path) -> os.stat_result | None:
    """stat() that turns a symlink loop or an unreadable path into an argparse error; None if absent."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except OSError as err:
        reason = {errno.ELOOP: "a symlink loop", errno.ENOTDIR: "a parent is not a folder"}.get(
            err.errno, err.strerror or str(err))
        raise argparse.ArgumentTypeError(f"{path}: {reason}") from None


def _output_probe(path: Path, target: Path | None = None) -> os.stat_result | None:
    try:
        return _probe(path)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"cannot write output {target or path}: {err}") from None


def _writable_parent(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder (the rest gets created)."""
    for parent in path.absolute().parents:
        st = _output_probe(parent, path)
        if st is None:
            continue
        if not os.path.isdir(parent):
            raise argparse.ArgumentTypeError(f"cannot write output {path}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write output {path}: folder {parent} is not writable")
        return


def out_file(text: str) -> Path:
    """An argparse type: a file to write (not a folder, no symlink loop, in a writable folder)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    path = Path(text)
    if _output_probe(path) is not None and path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    _writable_parent(path)
    return path


def out_dir(text: str) -> Path:
    """An argparse type: a folder to write into (absent or a folder; no symlink loop; creatable)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    path = Path(text)
    if _output_probe(path) is not None and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    _writable_parent(path)
    return path


def in_dir(text: str) -> str:
    """An argparse type: a folder to read (may be absent: the command says what it expected there)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    path = Path(text)
    if _probe(path) is not None and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is not a folder")
    return text


def in_file(text: str) -> Path:
    """An argparse type: an existing readable file."""
    path = Path(text)
    if _probe(path) is None:
        raise argparse.ArgumentTypeError(f"{path} not found")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    return path


def check_fits(what: str, elements: int) -> None:
    """Refuse up front a tensor of ``elements`` that cannot fit in memory."""
    if elements > MAX_ELEMENTS:
        raise SpkdiffError(f"{what} would need {elements:.3g} values (over {MAX_ELEMENTS:.3g}); use fewer")


# ----------------------------------------------------------------------------- schemas

Field = tuple[type | tuple[type, ...], float | None, float | None]  # (types, lo, hi); bounds for numbers


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "integer", float: "number", str: "string", list: "list", dict: "mapping",
                        bool: "boolean"}.get(t, t.__name__) for t in types)


def check_value(value: Any, spec: Field, where: str) -> None:
    """One field: its type (bool is not a number; an int is a number) and, for numbers, finiteness and range."""
    types, lo, hi = spec
    types = types if isinstance(types, tuple) else (types,)
    accepted = (*types, int) if float in types else types  # an integer is a number
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in types):
        raise SpkdiffError(f"{where} must be a {_type_name(types)}, got {type(value).__name__} {value!r:.40}")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and (not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi)):
        raise SpkdiffError(f"{where} = {value!r} is outside [{lo}, {hi}]")


def check_mapping(data: Any, fields: Mapping[str, Field], where: str, required: tuple[str, ...] = ()) -> dict:
    """A JSON/YAML mapping: required keys present, known keys of the right type and range."""
    if not isinstance(data, dict):
        raise SpkdiffError(f"{where} must be a mapping, got {type(data).__name__}")
    for key in required:
        if key not in data:
            raise SpkdiffError(f"{where} lacks the field {key!r}")
    for key, spec in fields.items():
        if key in data:
            check_value(data[key], spec, f"{where}.{key}")
    return data


_SIZE = (int, 1, 4096)  # channel counts: 4096 channels on the 7x7 grid is far beyond any model here
MAX_CONTEXT_LAYERS = 8  # the generator's 3x3 context layers (VQSVAEConfig.decoder_context)
_VQSVAE_MODEL: dict[str, Field] = {
    "in_channels": (int, 1, 4), "image_size": (int, 4, 256), "latent_channels": _SIZE,
    "codebook_size": (int, 2, 65536), "time_steps": (int, 1, 1024), "beta": (float, 0, 1e3),
    "tau_syn": (float, 1, 1e6), "readout_decay": (float, 0, 1), "k_init": (float, -1e3, 1e3),
    "psp_variant": (str, None, None), "recon_loss": (str, None, None), "hidden": (list, None, None),
    "decoder_hidden": ((list, type(None)), None, None),
    "decoder_context": (int, 0, MAX_CONTEXT_LAYERS), "neuron": (dict, None, None),
}
_SDID_MODEL: dict[str, Field] = {
    "num_codes": (int, 2, 65536), "grid": (int, 1, 256), "channels": _SIZE, "blocks": (int, 0, 64),
    "time_steps": (int, 1, 1024), "diffusion_steps": (int, 1, 100_000), "time_bins": (int, 1, 100_000),
    "neuron": (dict, None, None),
}
_TRAIN: dict[str, Field] = {
    "epochs": (int, 1, 1_000_000), "batch_size": (int, 1, MAX_BATCH), "lr": (float, 0, 10),
    "weight_decay": (float, 0, 10), "warmup_steps": (int, 0, None), "checkpoint_every": (int, 1, None),
    "log_every": (int, 1, None), "limit": ((int, type(None)), 1, None), "max_steps": ((int, type(None)), 0, None),
    "betas": (list, None, None), "lr_schedule": (str, None, None),
}
_SAMPLE: dict[str, Field] = {"steps": (int, 1, MAX_STEPS), "temperature": (float, 0, 1e6), "method": (str, None, None),
                             "remask": ((float, int), 0, 1)}


def check_stage(data: Any, stage: str, where: str) -> dict:
    """One stage's section of a preset or run config: ``model`` and ``train`` mappings in range."""
    section = check_mapping(data, {"model": (dict, None, None), "train": (dict, None, None),
                                   "sample": (dict, None, None)}, where, required=("model", "train"))
    model = check_mapping(section["model"], _VQSVAE_MODEL if stage == "vqsvae" else _SDID_MODEL, f"{where}.model")
    for key in ("hidden", "decoder_hidden") if stage == "vqsvae" else ():
        channels = model.get(key)
        if channels is None:
            continue
        if len(channels) != 2:
            raise SpkdiffError(f"{where}.model.{key} must list 2 channel counts, got {len(channels)}")
        for i, c in enumerate(channels):
            check_value(c, _SIZE, f"{where}.model.{key}[{i}]")
    check_mapping(section["train"], _TRAIN, f"{where}.train")
    if "sample" in section:
        check_mapping(section["sample"], _SAMPLE, f"{where}.sample")
    return section


def check_preset(data: Any, source: str) -> dict:
    """A preset (configs/*.yaml or a user YAML): a ``vqsvae`` and an ``sdid`` section."""
    check_mapping(data, {}, f"preset {source}", required=("vqsvae", "sdid"))
    for stage in ("vqsvae", "sdid"):
        check_stage(data[stage], stage, f"preset {source}: {stage}")
    return data


def check_run_config(data: Any, source: str | Path, stages: tuple[str, ...] = ("vqsvae", "sdid")) -> dict:
    """A resolved run config (config.json, or the one inside a checkpoint) that builds the given stages."""
    where = str(source)
    check_mapping(data, {"dataset": (str, None, None), "seed": (int, 0, 2**63 - 1)}, where,
                  required=("dataset", "seed", *stages))
    for stage in stages:
        check_stage(data[stage], stage, f"{where}: {stage}")
    return data


def check_position(data: Any, source: str | Path) -> dict:
    """A checkpoint's loop position (epoch, step in epoch, global step)."""
    fields: dict[str, Field] = {k: (int, 0, None) for k in ("epoch", "in_epoch", "step")}
    return check_mapping(data, fields, f"checkpoint {source}: position", required=tuple(fields))


def load_yaml(text: str, source: str) -> Any:
    """YAML by ``safe_load`` (tags such as ``!!python`` refused); a syntax error is one line."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise SpkdiffError(f"{source}: invalid YAML{at} ({' '.join(str(problem).split())})") from None


# ----------------------------------------------------------------------------- bundle manifests


def check_manifest(manifest: Any, source: str | Path) -> dict:
    """The structure a bundle reader relies on: stages with files and Loihi layers, the host's codebook."""
    where = str(source)
    check_mapping(manifest, {"stages": (dict, None, None), "host": (dict, None, None),
                             "files": (dict, None, None)}, where, required=("stages", "host"))
    if not manifest["stages"]:
        raise SpkdiffError(f"{where}: stages is empty")
    for stage, entry in manifest["stages"].items():
        check_mapping(entry, {"file": (str, None, None), "time_steps": (int, 1, 1024)},
                      f"{where}: stages.{stage}", required=("file", "time_steps"))
        if "loihi" in entry:
            q = check_mapping(entry["loihi"], {"file": (str, None, None), "layers": (dict, None, None)},
                              f"{where}: stages.{stage}.loihi", required=("file", "layers"))
            for name, layer in q["layers"].items():
                check_mapping(layer, {"scale": (float, 0, None), "analog_factor": (float, 0, None),
                                      "synapses": (dict, None, None), "direct": (dict, None, None)},
                              f"{where}: stages.{stage}.loihi.layers.{name}",
                              required=("method", "du", "dv", "vth", "scale", "spiking", "analog_factor",
                                        "bias_mant", "bias_exp"))
    host = check_mapping(manifest["host"], {"codebook_lookup": (dict, None, None)}, f"{where}: host",
                         required=("codebook_lookup",))
    lookup = check_mapping(host["codebook_lookup"], {"codebook": (list, None, None)},
                           f"{where}: host.codebook_lookup", required=("codebook",))
    check_matrix(lookup["codebook"], f"{where}: host.codebook_lookup.codebook")
    _check_token_grid(manifest, where)
    return manifest


def _check_token_grid(manifest: dict, where: str) -> None:
    """The host's token grid and codebook fit the stages' inputs: the generator takes codebook[tokens] as
    (C, h, w) and the SDID one-hot tokens as (p^2 (K+1) + bins, h/p, w/p); a mismatch would otherwise hang a
    Lava run."""
    codebook = manifest["host"]["codebook_lookup"]["codebook"]
    k, c = len(codebook), len(codebook[0])

    def fine_shape(stage: str) -> list | None:
        inp = manifest["stages"].get(stage, {}).get("input")
        shape = inp.get("fine_shape") if isinstance(inp, dict) else None
        return list(shape) if isinstance(shape, list) and len(shape) == 3 else None

    gen = fine_shape("generator")
    if gen is not None and gen[0] != c:
        raise SpkdiffError(f"{where}: the codebook has {c}-channel codes but the generator takes {gen[0]} channels")
    sampler = manifest["host"].get("mask_sampler")
    if not isinstance(sampler, dict) or gen is None:
        return
    grid = sampler.get("grid")
    grid = [grid, grid] if isinstance(grid, int) else grid
    if grid != gen[1:]:
        raise SpkdiffError(f"{where}: host.mask_sampler.grid {grid} does not match the codebook embedding grid "
                           f"{gen[1:]} the generator takes")
    if sampler.get("num_codes") != k:
        raise SpkdiffError(f"{where}: host.mask_sampler.num_codes {sampler.get('num_codes')} does not match the "
                           f"codebook's {k} codes")
    patch = sampler.get("patch", 1)
    check_value(patch, (int, 1, None), f"{where}: host.mask_sampler.patch")
    if gen[1] % patch or gen[2] % patch:
        raise SpkdiffError(f"{where}: host.mask_sampler.patch {patch} does not divide the {gen[1]}x{gen[2]} "
                           "token grid")
    sdid = fine_shape("sdid")
    if sdid is not None and [v * patch for v in sdid[1:]] != gen[1:]:
        raise SpkdiffError(f"{where}: the SDID takes a {sdid[1]}x{sdid[2]} grid of {patch}x{patch} token patches, "
                           f"the generator a {gen[1]}x{gen[2]} token grid")


def check_matrix(rows: Any, where: str) -> None:
    """A non-empty rectangular 2-D list of finite numbers."""
    import numpy as np

    try:
        a = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):
        raise SpkdiffError(f"{where} must be a rectangular list of numbers") from None
    if a.ndim != 2 or a.size == 0:
        raise SpkdiffError(f"{where} must be a 2-D (codes x channels) list, got shape {a.shape}")
    check_finite(a, where)


# ----------------------------------------------------------------------------- finiteness


def check_finite(value: Any, where: str) -> None:
    """No NaN or Inf in a tensor, an array or a number."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        bad = value.is_floating_point() and not bool(torch.isfinite(value).all())
    elif isinstance(value, float | int):
        bad = not math.isfinite(value)
    else:
        a = np.asarray(value)
        bad = a.dtype.kind in "fc" and not bool(np.isfinite(a).all())
    if bad:
        raise SpkdiffError(f"{where} holds NaN or Inf")
