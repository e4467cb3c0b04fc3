"""Presets (configs/*.yaml) and run configs.

A preset holds one section per stage (``vqsvae``, ``sdid``), each with ``model`` and ``train``
sub-sections.  The resolved config of a run is stored beside its checkpoints (``config.json``) and
is all that is needed to rebuild the models.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from spkdiff.errors import SpkdiffError
from spkdiff.files import atomic_write

# The host's mask-sampler orders (spkdiff.host.MaskSampler): named here, without torch, so the command
# parsers that offer them (`sim`, `eval`, `sample`) build without importing it.
SAMPLER_METHODS = ("paper", "confidence", "coarse")
REMASK_HELP = "paper sampler: ReMDM-cap remasking rate eta in [0, 1] (default: the run's or bundle's, else 0)"
PRESETS = ("paper", "fast", "fast_adversarial", "fast_grid14", "fast_grid14_adversarial", "tiny", "cifar10_fast")


def preset_name(name: str, dataset: str) -> str:
    """A dataset's own variant of a named preset (``fast`` on cifar10 -> ``cifar10_fast``), else ``name``."""
    variant = f"{dataset}_{name}"
    return variant if variant in PRESETS else name


def load_preset(name: str) -> dict[str, Any]:
    """Return the preset ``name`` (one of :data:`PRESETS`) or a YAML file path as a dict, checked.

    A preset may derive from another: ``base: NAME_OR_PATH`` names a package preset (one of :data:`PRESETS`)
    or a ``.yaml`` file. A relative path resolves against the folder of the file that names it (for a
    package preset, against the package's configs). The base is resolved first (recursively; a cycle is
    refused), then the file's own keys are merged over it with :func:`merge`: mappings merge key by key,
    any other value (lists included) replaces the base's.

    Removing a key of the base takes ``unset: [DOTTED.KEY, ...]`` (e.g. ``unset: [sdid.model.neuron]``),
    applied to the base before the file's own keys are merged, so ``unset`` plus the same key in the file
    replaces a base mapping instead of merging into it. YAML ``null`` is *not* a deletion: it is a value
    (``limit: null`` and ``max_steps: null`` are valid train settings), kept as written. Each unset key
    must exist in the base (a typo is an error). ``base`` and ``unset`` do not appear in the result;
    validation (:func:`spkdiff.validate.check_preset`) applies to the resolved dict only.
    """
    from spkdiff.validate import check_preset

    path = Path(name)
    if path.suffix in _YAML_SUFFIXES and path.exists():
        source = _file_source(path, name)
    else:
        if name not in PRESETS:
            raise SpkdiffError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} or a .yaml file")
        source = _package_source(name)
    return check_preset(_resolve(source, ()), name)


_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class _Source:
    """Where a preset's text comes from: ``label`` for messages, ``key`` for cycle detection, ``folder`` for
    the relative paths it names."""

    label: str
    key: str
    file: Traversable
    folder: Traversable


def _file_source(path: Path, label: str) -> _Source:
    return _Source(label, str(path.resolve()), path, path.parent)


def _package_source(name: str, label: str | None = None) -> _Source:
    folder = resources.files("spkdiff.configs")
    file = folder.joinpath(name if name.endswith(_YAML_SUFFIXES) else f"{name}.yaml")
    key = str(file.resolve()) if isinstance(file, Path) else f"spkdiff.configs/{file.name}"
    return _Source(label or name, key, file, folder)


def _base_source(ref: Any, naming: _Source) -> _Source:
    """The preset that ``base: REF`` in NAMING's file names."""
    if not isinstance(ref, str) or not ref:
        raise SpkdiffError(f"preset {naming.label}: base must be a preset name or a .yaml path, got {ref!r:.40}")
    if not ref.endswith(_YAML_SUFFIXES):
        if ref not in PRESETS:
            raise SpkdiffError(f"preset {naming.label}: unknown base {ref!r}: choose one of {', '.join(PRESETS)} "
                               "or a .yaml file")
        return _package_source(ref)
    if Path(ref).is_absolute():
        source = _file_source(Path(ref), ref)
    elif isinstance(naming.folder, Path):
        path = naming.folder / ref
        source = _file_source(path, os.path.normpath(path))
    else:  # a package preset inside an archive: a relative base is another file of the package's configs
        source = _package_source(ref, f"spkdiff.configs/{ref}")
    if not source.file.is_file():
        raise SpkdiffError(f"preset {naming.label}: base {ref!r} not found ({source.label})")
    return source


def _read(source: _Source) -> str:
    try:
        return source.file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpkdiffError(f"cannot read preset {source.label}: {getattr(err, 'strerror', None) or err}") from None


def _resolve(source: _Source, chain: tuple[_Source, ...]) -> Any:
    """SOURCE's preset with its ``base`` chain merged in (unchecked but for the keys ``base`` and ``unset``)."""
    from spkdiff.validate import check_mapping, load_yaml

    if source.key in {s.key for s in chain}:
        links = " -> ".join(s.label for s in (*chain, source))
        raise SpkdiffError(f"preset {chain[0].label}: base cycle {links}")
    data = load_yaml(_read(source), f"preset {source.label}")
    if not isinstance(data, dict) or not ("base" in data or "unset" in data):
        return data  # not a mapping: check_preset (or the preset naming it as base) says so
    own = dict(data)
    ref, unset = own.pop("base", None), own.pop("unset", None)
    if "base" not in data:
        raise SpkdiffError(f"preset {source.label}: unset needs a base to remove keys from")
    base_source = _base_source(ref, source)
    base = check_mapping(_resolve(base_source, (*chain, source)), {}, f"preset {base_source.label}")
    return merge(_unset(base, unset, source.label), own)


def _unset(base: dict[str, Any], keys: Any, where: str) -> dict[str, Any]:
    """BASE without the dotted KEYS (``sdid.model.neuron``), each of which it must have."""
    if keys is None:
        return base
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise SpkdiffError(f"preset {where}: unset must be a list of dotted keys such as sdid.model.neuron, "
                           f"got {keys!r:.60}")
    out = copy.deepcopy(base)
    for dotted in keys:
        *parents, last = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise SpkdiffError(f"preset {where}: unset {dotted!r}: its base has no such key")
        del node[last]
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins. Returns a new dict."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise SpkdiffError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SpkdiffError(f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpkdiffError(f"cannot read {what} {path}: {getattr(err, 'strerror', None) or err}") from None


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/config.json, checked: the dataset, the seed and both stages' model and train sections."""
    from spkdiff.validate import check_run_config

    path = Path(run_dir) / "config.json"
    return check_run_config(read_json(path, "run config"), path)


PRETRAINED_PREFIX = "pretrained:"


def resolve_run(arg: str) -> Path:
    """A run directory, or ``pretrained:NAME`` for a model shipped inside the package."""
    if arg.startswith(PRETRAINED_PREFIX):
        name = arg[len(PRETRAINED_PREFIX):]
        root = resources.files("spkdiff").joinpath("pretrained")
        available = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if name not in available:
            raise SpkdiffError(f"no pretrained model {name!r}; available: {', '.join(available) or 'none'}")
        return Path(str(root.joinpath(name)))
    path = Path(arg)
    if not path.is_dir():
        raise SpkdiffError(f"run directory not found: {path}")
    return path
