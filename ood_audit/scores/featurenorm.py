"""FeatureNorm (Yu et al., CVPR 2023, §3.1; SPEC §2)."""
from __future__ import annotations

import torch


def feature_norm(z: torch.Tensor) -> torch.Tensor:
    """FN(x; B) = (1/C) · Σ_c sqrt(Σ_{h,w} max(z[c,h,w], 0)²), for z of shape [N, C, H, W] -> [N].

    The mean over channels of each channel's spatial L2 norm after ReLU: not the norm of the pooled
    vector, not the Frobenius norm, no 1/(HW). Higher = more in-distribution. Computed in float32.
    """
    if z.dim() != 4:
        raise ValueError(f"feature_norm expects [N, C, H, W], got shape {tuple(z.shape)}")
    r = z.float().clamp_min(0)
    return r.square().sum(dim=(2, 3)).sqrt().mean(dim=1)
