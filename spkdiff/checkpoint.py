"""Checkpoint I/O: safetensors only (never pickle), written atomically.

One file holds everything needed to resume exactly: model weights (``model/…``), optimizer
tensors (``optim/…``), RNG states (``rng/…``), training-only modules such as a discriminator
(``train/…``) and, in the safetensors header metadata, the JSON config, the optimizer's
non-tensor state and the loop position (epoch, step).  Export and sampling read only
``model/…`` plus the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from spkdiff.errors import CheckpointError, SpkdiffError
from spkdiff.files import atomic_write

FORMAT = "spkdiff-checkpoint"
FORMAT_VERSION = "1"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    *,
    model: dict[str, torch.Tensor],
    config: dict[str, Any],
    stage: str,
    optimizer: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    position: dict[str, Any] | None = None,
    training: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint atomically: temp file in the same folder, fsync, rename.

    ``training``: weights of training-only modules (a discriminator), kept for resume under ``train/``;
    export and sampling never read them.
    """
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model.items()}
    tensors.update({f"train/{k}": v.detach().contiguous().cpu() for k, v in (training or {}).items()})
    meta: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "stage": stage,
                            "config": config, "position": position or {}}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
    for name, value in (rng or {}).items():
        tensors[f"rng/{name}"] = value.contiguous()

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata={"spkdiff": json.dumps(meta)})
        except SafetensorError as err:  # safetensors reports a full disk as its own error type
            raise OSError(f"{err}") from None

    atomic_write(Path(path), write)


class Checkpoint:
    """A loaded checkpoint: ``model`` weights, ``config``, ``stage``, optional resume state."""

    def __init__(self, path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        from spkdiff.validate import check_finite, check_position, check_run_config

        try:
            check_run_config(meta["config"], f"checkpoint {path}: config", stages=(meta["stage"],))
            if "optimizer" in meta:  # a training checkpoint: its loop position is what --resume continues from
                check_position(meta.get("position"), path)
            for name, value in tensors.items():
                if name.startswith("model/"):
                    check_finite(value, f"checkpoint {path}: tensor {name[6:]}")
        except KeyError as err:
            raise CheckpointError(f"checkpoint {path}: metadata lacks the field {err}") from None
        except SpkdiffError as err:
            raise CheckpointError(str(err)) from None
        self.path = path
        self.stage: str = meta["stage"]
        self.config: dict[str, Any] = meta["config"]
        self.position: dict[str, Any] = meta.get("position", {})
        self.model = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
        self.rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng/")}
        self.training = {k[6:]: v for k, v in tensors.items() if k.startswith("train/")}
        optim = {k: v for k, v in tensors.items() if k.startswith("optim/")}
        self.optimizer = _unflatten_optimizer(optim, meta["optimizer"]) if "optimizer" in meta else None


def load_checkpoint(path: Path, stage: str | None = None) -> Checkpoint:
    """Load and validate a checkpoint; every problem is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file ({err})") from None
    try:
        meta = json.loads(header["spkdiff"])
        assert isinstance(meta, dict) and meta["format"] == FORMAT
    except (KeyError, json.JSONDecodeError, AssertionError, TypeError):
        raise CheckpointError(f"checkpoint {path} was not written by spkdiff (no spkdiff metadata)") from None
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta['version']}, expected {FORMAT_VERSION}")
    if meta.get("stage") not in ("vqsvae", "sdid") or (stage is not None and meta["stage"] != stage):
        raise CheckpointError(f"checkpoint {path} holds stage {meta.get('stage')!r}, "
                              f"expected {stage or 'vqsvae or sdid'!r}")
    return Checkpoint(path, meta, tensors)


def load_model_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load: every key present with the right shape, or a one-line error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    bad = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or extra or bad:
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shape {bad[:3]}")
    # load_state_dict would cast silently (an int64 or f16 tensor gives a different model): refuse instead
    cast = [k for k in own if weights[k].dtype != own[k].dtype]
    if cast:
        k = cast[0]
        raise CheckpointError(f"checkpoint {source}: tensor {k} is {weights[k].dtype}, expected {own[k].dtype}")
    module.load_state_dict(weights, strict=True)
