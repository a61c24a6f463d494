"""FeatureNorm (Yu et al., CVPR 2023, §3.1; SPEC §2) and its two-sided variant ``featurenorm2``."""
from __future__ import annotations

import numpy as np
import torch

_LOG_FLOOR = 1e-12   # FN = 0 (an all-dead block) has log −inf; clamp so the score stays finite (and very low)
_MIN_SCALE = 1e-12   # MAD = 0 guard; any positive scale gives the same ranking, thresholds and percentiles


def feature_norm(z: torch.Tensor) -> torch.Tensor:
    """FN(x; B) = (1/C) · Σ_c sqrt(Σ_{h,w} max(z[c,h,w], 0)²), for z of shape [N, C, H, W] -> [N].

    The mean over channels of each channel's spatial L2 norm after ReLU: not the norm of the pooled
    vector, not the Frobenius norm, no 1/(HW). Higher = more in-distribution. Computed in float32.
    """
    if z.dim() != 4:
        raise ValueError(f"feature_norm expects [N, C, H, W], got shape {tuple(z.shape)}")
    r = z.float().clamp_min(0)
    return r.square().sum(dim=(2, 3)).sqrt().mean(dim=1)


def feature_norm_two_sided(fn: torch.Tensor, center: float, scale: float) -> torch.Tensor:
    """featurenorm2(x) = −|log FN(x; B) − center| / scale, in float64 -> [N].

    ``center`` = median and ``scale`` = MAD of log FN over held-out ID images at the same block
    (:func:`two_sided_stats`; SPEC §10: held-out, not the bank images). Higher = more ID, like every
    score; unlike FeatureNorm it flags unusually *high* norms as well as low ones, so it cannot invert
    when OOD (e.g. texture-rich images under a model trained on low-texture data) has larger norms than
    ID. ``scale`` ≤ 0 is replaced by a tiny positive number (MAD = 0 guard).
    """
    logs = torch.log(torch.as_tensor(fn).double().clamp_min(_LOG_FLOOR))
    return -(logs - float(center)).abs() / max(float(scale), _MIN_SCALE)


def two_sided_stats(fn: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(median, MAD) of log FN over ID images, for :func:`feature_norm_two_sided`.

    When more than half the values tie (MAD = 0) the mean absolute deviation from the median is used,
    and 1.0 when that is 0 too; the scale only sets the score's units, never its ordering.
    """
    v = np.log(np.maximum(np.asarray(fn, dtype=np.float64).ravel(), _LOG_FLOOR))
    if v.size == 0:
        raise ValueError("two_sided_stats needs at least one FeatureNorm value")
    center = float(np.median(v))
    dev = np.abs(v - center)
    scale = float(np.median(dev))
    if not scale > _MIN_SCALE:
        scale = float(dev.mean())
    if not scale > _MIN_SCALE:
        scale = 1.0
    return center, scale
