"""Evaluate a batch of generated images against a dataset's test split, and record the results of a run.

Metric names for :func:`evaluate_images`:

=============  ================================================================================
``fid``        Frechet distance of Inception pool3 features (protocol "std"), generated vs test split
``kid``        KID on the same features (``kid`` mean and ``kid_std`` over 100 subsets of <= 1000)
``pr``         improved precision/recall, k = 3, on the same features (``precision``, ``recall``)
``cfd``        Frechet distance of the in-domain classifier's 128-d features
``ckid``       KID on classifier features (``ckid``, ``ckid_std``)
``cpr``        precision/recall on classifier features (``cprecision``, ``crecall``)
``mse``        mean squared error vs ``reference`` (paired, [0, 1] pixels)
``ssim``       1 - SSIM vs ``reference`` (paired), reported as ``1-ssim``
=============  ================================================================================
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spkdiff.data import check_image_shape
from spkdiff.errors import SpkdiffError
from spkdiff.eval.features import canonical_name, real_inception_features
from spkdiff.eval.inception import get_protocol, inception_features, inception_sha256
from spkdiff.eval.metrics import frechet_distance, kernel_distance, mse, precision_recall, ssim_distance
from spkdiff.files import lock_folder
from spkdiff.validate import check_finite

DEFAULT_N = 5000
INCEPTION_METRICS = ("fid", "kid", "pr")
CLASSIFIER_METRICS = ("cfd", "ckid", "cpr")
PAIRED_METRICS = ("mse", "ssim")
METRICS = INCEPTION_METRICS + CLASSIFIER_METRICS + PAIRED_METRICS


def _distribution_metrics(real: torch.Tensor, fake: torch.Tensor, wanted: Sequence[str], prefix: str,
                          fd_name: str, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    if fd_name in wanted:
        out[fd_name] = frechet_distance(real, fake)
    if f"{prefix}kid" in wanted:
        out[f"{prefix}kid"], out[f"{prefix}kid_std"] = kernel_distance(real, fake, seed=seed)
    if f"{prefix}pr" in wanted:
        out[f"{prefix}precision"], out[f"{prefix}recall"] = precision_recall(real, fake, k=3)
    return out


def evaluate_images(generated: torch.Tensor, dataset: str, data_root: str | os.PathLike | None = None,
                    metrics: Sequence[str] = ("fid", "kid", "cfd"), *, reference: torch.Tensor | None = None,
                    protocol: str = "std", also_fid_protocols: Sequence[str] = (), batch_size: int = 50,
                    device: str = "cpu", cache: str | os.PathLike | None = None,
                    classifier_path: str | os.PathLike | None = None, progress: bool = True,
                    seed: int = 0) -> dict[str, Any]:
    """Metrics of ``generated`` (uint8, or float in [0, 1], (N, C, H, W)) against the full test split.

    Distribution metrics compare all N generated images with the whole test split (real features cached, see
    :mod:`spkdiff.eval.features`); the standard N is :data:`DEFAULT_N` = 5000 and is the caller's choice.
    Paired metrics compare ``generated`` with ``reference`` image by image. Returns plain floats plus the
    provenance: dataset, protocol, N, weights sha256 and the classifier's test accuracy.
    ``also_fid_protocols``: FID under these protocols too, as ``fid_<protocol>`` (e.g. ``fid_pytorch_fid``).
    """
    wanted = list(dict.fromkeys(m.lower() for m in metrics))
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise SpkdiffError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    name = canonical_name(dataset)
    get_protocol(protocol)
    if generated.ndim == 3:
        generated = generated[:, None]
    check_image_shape(name, generated.shape[1:], "the evaluated images are")  # e.g. a run scored on another dataset
    check_finite(generated, "the evaluated images")  # NaN images would be scored (a CFD, a precision of 1.0)
    if reference is not None:
        check_finite(reference, "the reference images")
    row: dict[str, Any] = {"dataset": name, "n_generated": int(generated.shape[0])}

    if any(m in wanted for m in INCEPTION_METRICS):
        fake = inception_features(generated, protocol=protocol, batch_size=batch_size, device=device,
                                  progress=progress, desc="inception generated")
        real = real_inception_features(name, data_root, split="test", protocol=protocol, batch_size=batch_size,
                                       device=device, progress=progress, cache=cache)
        row.update(protocol=protocol, n_real=int(real.shape[0]), inception_sha256=inception_sha256())
        row.update(_distribution_metrics(real, fake, wanted, "", "fid", seed))
    for other in dict.fromkeys(p for p in also_fid_protocols if p != protocol):
        get_protocol(other)
        fake = inception_features(generated, protocol=other, batch_size=batch_size, device=device,
                                  progress=progress, desc=f"inception generated ({other})")
        real = real_inception_features(name, data_root, split="test", protocol=other, batch_size=batch_size,
                                       device=device, progress=progress, cache=cache)
        row["fid_" + other.replace("-", "_")] = _distribution_metrics(real, fake, ["fid"], "", "fid", seed)["fid"]

    if any(m in wanted for m in CLASSIFIER_METRICS):
        from spkdiff.eval.classifier import classifier_features, load_classifier, real_classifier_features

        clf = load_classifier(name, classifier_path, cache)
        fake = classifier_features(clf.model, generated)
        real = real_classifier_features(clf, data_root, split="test", cache=cache)
        row.update(n_real=int(real.shape[0]), classifier_sha256=clf.sha256,
                   classifier_test_accuracy=clf.test_accuracy)
        row.update(_distribution_metrics(real, fake, wanted, "c", "cfd", seed))

    if any(m in wanted for m in PAIRED_METRICS):
        if reference is None:
            raise SpkdiffError("mse/ssim compare image pairs: pass the reference images")
        if reference.ndim == 3:
            reference = reference[:, None]
        if "mse" in wanted:
            row["mse"] = mse(generated, reference)
        if "ssim" in wanted:
            row["1-ssim"] = ssim_distance(generated, reference)
    return row


# ------------------------------------------------------------------------------------------------ run records

def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256: the full value is in metrics.json
    return str(value).replace("|", "\\|").replace("\n", " ")


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one row per record, columns = union of keys in first-seen order."""
    columns: list[str] = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format(row[c]) if c in row else "" for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def metrics_rows(text: str, where: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.json's ``text`` (``{"rows": [...]}``); ``where`` names the file in the error."""
    try:
        return list(json.loads(text)["rows"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SpkdiffError(f"{where} is not a metrics file written by spkdiff ({type(err).__name__})") from None


def append_results_row(run_dir: str | os.PathLike, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``row`` (plus a UTC ``time`` if absent) to RUN_DIR/metrics.json and rewrite RUN_DIR/results.md.

    metrics.json holds ``{"rows": [...]}``; results.md is the same rows as a Markdown table.
    Returns all rows.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path = run_dir / "metrics.json"
    # Several evaluations of one run may finish together: the read-modify-write of the table is one at a time.
    with lock_folder(run_dir / ".metrics.lock", f"{json_path}", wait=True):
        rows = metrics_rows(json_path.read_text(), json_path) if json_path.is_file() else []
        stamped = {"time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **row}
        rows.append(stamped)
        _write_atomic(json_path, json.dumps({"rows": rows}, indent=2) + "\n")
        _write_atomic(run_dir / "results.md", results_markdown(rows))
    return rows
