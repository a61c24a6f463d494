"""ood-audit: find out-of-distribution samples in very large image datasets, on Ray.

Top-level names are imported lazily, so light modules (I/O, listing) start without loading torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from ood_audit.errors import BundleError, CheckpointError, ConfigError, DataError, KnnError, OodAuditError, ReportError

__version__ = "0.1.0"

_LAZY = {
    "NormRatioResult": "ood_audit.calibration.normratio",
    "norm_ratio": "ood_audit.calibration.normratio",
    "ood_metrics": "ood_audit.metrics",
    "TapModel": "ood_audit.models",
    "block_candidates": "ood_audit.models",
    "build_model": "ood_audit.models",
    "load_weights": "ood_audit.models",
    "save_weights": "ood_audit.models",
    "import_weights": "ood_audit.models.importer",
    "energy": "ood_audit.scores",
    "feature_norm": "ood_audit.scores",
    "feature_norm_two_sided": "ood_audit.scores",
    "jigsaw": "ood_audit.scores",
    "maxlogit": "ood_audit.scores",
    "msp": "ood_audit.scores",
    "csd_views": "ood_audit.scores.csd",
    "csd_bank": "ood_audit.scores.csd",
    "csd_score": "ood_audit.scores.csd",
    "CSD_VIEW_NAMES": "ood_audit.vocab",
    "knn_score": "ood_audit.scores.knn",
    "knn_index": "ood_audit.scores.knn",
    "alpa_loss_from_projections": "ood_audit.scores.alpa",
    "ALPAHead": "ood_audit.scores.alpa",
    "supcon_loss": "ood_audit.scores.supcon",
    "make_index": "ood_audit.knn",
    "build_index": "ood_audit.knn",
    "KnnIndex": "ood_audit.knn",
    "load_report": "ood_audit.store.runs",
    "DETECTORS": "ood_audit.scores.detectors",
    "make_detectors": "ood_audit.scores.detectors",
    "Scorer": "ood_audit.scores.scorer",
    "open_bundle": "ood_audit.bundle.files",
    "BundleMeta": "ood_audit.bundle.schema",
}

__all__ = ["BundleError", "CheckpointError", "ConfigError", "DataError", "KnnError", "OodAuditError", "ReportError",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ood_audit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
