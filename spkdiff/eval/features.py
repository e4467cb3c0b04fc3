"""Real-data features with an on-disk cache.

Real features are computed once per (dataset, split, subset, feature network, protocol, weights sha256) and
stored as safetensors under the cache directory: ``$SPKDIFF_CACHE`` or ``~/.cache/spkdiff``, in ``features/``.
Features rather than only (mu, Sigma) are kept so that KID and precision/recall reuse them too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from spkdiff.eval.inception import get_protocol, inception_features, inception_sha256, to_uint8_nchw
from spkdiff.files import lock_folder

SUBSET_SEED = 0


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$SPKDIFF_CACHE``, else ``~/.cache/spkdiff``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("SPKDIFF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spkdiff"


def load_split(dataset: str, data_root: str | os.PathLike | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W) images and int64 labels of a dataset split, via ``spkdiff.data``."""
    from spkdiff.data import load_arrays, resolve_data_root

    images, labels = load_arrays(dataset, resolve_data_root(data_root), split)
    return to_uint8_nchw(np.asarray(images)), torch.tensor(np.asarray(labels), dtype=torch.int64)


def canonical_name(dataset: str) -> str:
    """The dataset's canonical name (aliases such as ``fmnist`` resolved), used in cache keys."""
    from spkdiff.data import get_spec

    return get_spec(dataset).name


def subset_indices(total: int, n: int | None, seed: int = SUBSET_SEED) -> np.ndarray:
    """All indices if ``n`` is None or >= total, else a sorted seeded random subset of size ``n``."""
    if n is None or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def _read_features(path: Path, key_json: str) -> torch.Tensor | None:
    """The features stored at ``path`` if the file is readable and was written for ``key_json``."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("key") != key_json:
                return None
        return load_file(str(path))["features"]
    except (SafetensorError, OSError, KeyError):
        return None  # corrupt or foreign file: recompute and overwrite


def _write_features(path: Path, feats: torch.Tensor, key_json: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({"features": feats.float().contiguous()}, str(tmp), metadata={"key": key_json})
    tmp.replace(path)


def _cache_name(key: dict[str, Any]) -> str:
    return "_".join(str(key[k]) for k in sorted(key) if k != "sha256") + f"_{str(key.get('sha256', ''))[:16]}"


def stored_features(key: dict[str, Any], total: int, directory: str | os.PathLike | None = None) -> torch.Tensor | None:
    """The complete features stored under ``key``, or None when the cache does not hold all ``total`` of them."""
    path = cache_dir(directory) / "features" / f"{_cache_name(key)}.safetensors"
    done = _read_features(path, json.dumps(key, sort_keys=True))
    return done if done is not None and done.shape[0] == total else None


def cached_features(key: dict[str, Any], total: int, compute: Callable[[slice], torch.Tensor],
                    directory: str | os.PathLike | None = None, *, chunk: int = 500, progress: bool = False,
                    desc: str = "features") -> torch.Tensor:
    """Features of ``total`` items stored under ``key`` in the cache; ``compute(slice)`` makes a range of them.

    On a miss, items are computed in chunks of ``chunk`` and the partial result is saved after each chunk, so an
    interrupted run resumes where it stopped. The full key is stored in each file's metadata and checked on load.
    Processes that need the same features at once compute them once: the others wait for it.
    """
    from tqdm.auto import tqdm

    folder = cache_dir(directory) / "features"
    name = _cache_name(key)
    path, partial_path = folder / f"{name}.safetensors", folder / f"{name}.partial.safetensors"
    key_json = json.dumps(key, sort_keys=True)
    done = _read_features(path, key_json)
    if done is not None and done.shape[0] == total:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    # One computer per key: a second process waits, then reads the first one's result instead of redoing it.
    with lock_folder(folder / f"{name}.lock", f"feature cache {name}", wait=True):
        done = _read_features(path, key_json)
        if done is not None and done.shape[0] == total:
            return done
        partial = _read_features(partial_path, key_json)
        parts = [partial] if partial is not None and partial.shape[0] < total else []
        start = parts[0].shape[0] if parts else 0
        with tqdm(total=total, initial=start, desc=desc, unit="img", disable=not progress) as bar:
            while start < total:
                stop = min(start + chunk, total)
                parts.append(compute(slice(start, stop)).float())
                start = stop
                bar.update(stop - bar.n)
                if start < total:
                    _write_features(partial_path, torch.cat(parts), key_json)
        feats = torch.cat(parts) if parts else torch.zeros(0)
        _write_features(path, feats, key_json)
        partial_path.unlink(missing_ok=True)
    return feats


def real_inception_features(dataset: str, data_root: str | os.PathLike | None = None, *, split: str = "test",
                            n: int | None = None, protocol: str = "std", batch_size: int = 50, device: str = "cpu",
                            progress: bool = True, cache: str | os.PathLike | None = None) -> torch.Tensor:
    """Cached (N, 2048) Inception features of a real split (all of it, or a seeded subset of ``n`` images).

    A subset not cached on its own is sliced from the whole split's cached features when those exist.
    """
    get_protocol(protocol)
    dataset = canonical_name(dataset)
    sha = inception_sha256()
    key = {"dataset": dataset, "split": split, "n": "all" if n is None else int(n), "net": "inception",
           "protocol": protocol, "sha256": sha}

    images, _ = load_split(dataset, data_root, split)
    indices = torch.from_numpy(subset_indices(images.shape[0], n))
    if indices.numel() < images.shape[0]:
        own = stored_features(key, indices.numel(), cache)
        if own is not None:
            return own
        # A subset's features are rows of the whole split's (the network sees one image at a time): reuse them
        # when the whole split is cached already, rather than paying the Inception pass again.
        whole = stored_features({**key, "n": "all"}, images.shape[0], cache)
        if whole is not None:
            return whole[indices]
    images = images[indices]

    def compute(sl: slice) -> torch.Tensor:
        return inception_features(images[sl], protocol=protocol, batch_size=batch_size, device=device,
                                  progress=False)

    return cached_features(key, images.shape[0], compute, cache, progress=progress,
                           desc=f"inception {dataset}/{split}")
