"""ood-audit: find out-of-distribution samples in very large image datasets, on Ray."""
from .calibration.normratio import NormRatioResult, norm_ratio
from .errors import BundleError, CheckpointError, ConfigError, DataError, KnnError, OodAuditError
from .metrics import ood_metrics
from .models import TapModel, block_candidates, build_model, load_weights, save_weights
from .scores import energy, feature_norm, jigsaw, maxlogit, msp

__version__ = "0.1.0"

__all__ = [
    "BundleError", "CheckpointError", "ConfigError", "DataError", "KnnError", "NormRatioResult", "OodAuditError",
    "TapModel", "block_candidates", "build_model", "energy", "feature_norm", "jigsaw", "load_weights",
    "maxlogit", "msp", "norm_ratio", "ood_metrics", "save_weights",
]
