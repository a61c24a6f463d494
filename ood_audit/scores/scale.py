"""SCALE (Xu et al., "Scaling for Training Time and Post-hoc Out-of-distribution Detection Enhancement", ICLR
2024, arXiv 2310.00227; SPEC §15): the energy of logits computed from rescaled penultimate activations.

For the post-ReLU penultimate activation a ∈ ℝ^D of one image and t its own p-th percentile:

    r = Σ_j a_j / Σ_j a_j·[a_j > t]
    a' = a · exp(r)
    score = logsumexp(W a' + b)           (higher = ID)

**p.** :data:`DEFAULT_PERCENTILE` = 85, the paper's setting for ResNet-50 on ImageNet-1K (also OpenOOD's
default), used for every architecture family the product builds (ResNets, whose penultimate layer is a
post-ReLU average pool). It is recorded in the bundle. It is not tuned: choosing it needs OOD data to
compare against, and SPEC §15 allows choosing it on held-out ID only, where no criterion tells a better p.
"""
from __future__ import annotations

import torch

DEFAULT_PERCENTILE = 85.0


def scale_ratio(a: torch.Tensor, percentile: float = DEFAULT_PERCENTILE) -> torch.Tensor:
    """r per row of ``a`` [N, D]: total activation over the activation above the row's own p-th percentile."""
    a = a.to(torch.float32)
    t = torch.quantile(a, percentile / 100.0, dim=1, keepdim=True)
    top = (a * (a > t)).sum(1)
    total = a.sum(1)
    # a row whose values are all equal has nothing above its percentile: it is not rescaled (r = 1)
    return torch.where(top > 0, total / top.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(total))


def scale_energy(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 percentile: float = DEFAULT_PERCENTILE) -> torch.Tensor:
    """logsumexp(W (a · exp(r)) + b) per row of ``a`` [N, D] (the module docstring's formula)."""
    a = a.to(torch.float32)
    scaled = a * torch.exp(scale_ratio(a, percentile))[:, None]
    logits = scaled @ weight.to(torch.float32).T
    if bias is not None:
        logits = logits + bias.to(torch.float32)
    return torch.logsumexp(logits, dim=1)
