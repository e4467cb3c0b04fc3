"""Evaluation: FID/KID/precision-recall (standard FID Inception-v3), CFD (in-domain classifier), MSE, SSIM.

Public API (imported lazily so that ``spkdiff --help`` stays fast):

- :func:`evaluate_images` (generated images vs a test split -> dict of floats + provenance),
  :func:`append_results_row` (RUN_DIR/metrics.json + results.md), :data:`DEFAULT_N`;
- feature sets: :func:`inception_features`, :func:`real_inception_features`;
- metrics on features: :func:`frechet_distance`, :func:`kernel_distance`, :func:`precision_recall`;
- paired image metrics: :func:`mse`, :func:`ssim_distance`;
- classifier: :func:`train_classifier`, :func:`load_classifier`, :func:`classifier_features`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate_images": "evaluate", "append_results_row": "evaluate", "results_markdown": "evaluate",
    "DEFAULT_N": "evaluate", "METRICS": "evaluate",
    "inception_features": "inception", "inception_sha256": "inception", "to_uint8_nchw": "inception",
    "real_inception_features": "features", "cache_dir": "features",
    "frechet_distance": "metrics", "kernel_distance": "metrics", "precision_recall": "metrics", "mse": "metrics",
    "ssim_distance": "metrics",
    "train_classifier": "classifier", "load_classifier": "classifier", "classifier_features": "classifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
