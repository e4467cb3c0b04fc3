"""Presets (configs/*.yaml) and run configs.

A preset holds one section per stage (``vqsvae``, ``sdid``), each with ``model`` and ``train``
sub-sections.  The resolved config of a run is stored beside its checkpoints (``config.json``) and
is all that is needed to rebuild the models.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

from spkdiff.errors import SpkdiffError
from spkdiff.files import atomic_write

# The host's mask-sampler orders (spkdiff.host.MaskSampler): named here, without torch, so the command
# parsers that offer them (`sim`, `eval`, `sample`) build without importing it.
SAMPLER_METHODS = ("paper", "confidence", "coarse")
PRESETS = ("paper", "fast", "fast_adversarial", "fast_grid14", "fast_grid14_adversarial", "tiny", "cifar10_fast")


def preset_name(name: str, dataset: str) -> str:
    """A dataset's own variant of a named preset (``fast`` on cifar10 -> ``cifar10_fast``), else ``name``."""
    variant = f"{dataset}_{name}"
    return variant if variant in PRESETS else name


def load_preset(name: str) -> dict[str, Any]:
    """Return the preset ``name`` (one of :data:`PRESETS`) or a YAML file path as a dict."""
    from spkdiff.validate import check_preset, load_yaml

    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise SpkdiffError(f"cannot read preset {path}: {getattr(err, 'strerror', None) or err}") from None
    else:
        if name not in PRESETS:
            raise SpkdiffError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} or a .yaml file")
        text = resources.files("spkdiff.configs").joinpath(f"{name}.yaml").read_text()
    return check_preset(load_yaml(text, f"preset {name}"), name)


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
