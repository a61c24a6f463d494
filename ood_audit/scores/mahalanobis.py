"""Mahalanobis++ (Mueller & Hein, ICML 2025, arXiv 2505.18032; SPEC §15): class-conditional Gaussians with one
shared covariance on L2-normalised penultimate features.

    z = f / ‖f‖₂
    μ_c = mean of z over the ID bank images of class c
    Σ = (1/N) Σ_c Σ_{i∈c} (z_i − μ_c)(z_i − μ_c)ᵀ,   Σ_ε = Σ + εI,   ε = δμ / (1 − δ) (below)
    score(z) = −min_c (z − μ_c)ᵀ Σ_ε⁻¹ (z − μ_c)        (higher = ID)

**Shrinkage.** The paper inverts Σ as it is. A bank smaller than the feature width (512 for ResNet18, 2048
for ResNet50) makes Σ singular, and even a larger one leaves its small eigenvalues noisy: held-out ID images
then land far outside the bank's span and score like outliers. So SPEC §15's ``εI`` is added, with ε from
the Ledoit–Wolf estimate (Ledoit & Wolf, J. Multivariate Analysis 2004), which needs only the bank: with
μ = tr(Σ)/D, d² = ‖Σ − μI‖²_F / D and b² = (Σ_i ‖x_i‖⁴ − N‖Σ‖²_F) / (N² D) over the centred rows x_i,
the optimal blend (1 − δ)Σ + δμI has δ = min(b², d²)/d²; it is (1 − δ)(Σ + εI) with ε = δμ/(1 − δ), and the
factor (1 − δ) scales every distance alike, so the score uses Σ + εI as SPEC §15 writes it. δ and ε are
recorded in the bundle. Everything is float64: Σ and its inverse (through a symmetric eigendecomposition,
exact for ill-conditioned Σ) and the distances, whose terms cancel catastrophically in float32.
"""
from __future__ import annotations

import numpy as np
import torch

MAX_BLEND = 0.999  # δ at most this: ε stays finite when the bank says "no covariance at all"


def l2_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm (a zero row stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def fit_shared_gaussian(z: np.ndarray | torch.Tensor,
                        labels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, float, float]:
    """``(means [C, D], precision (Σ + εI)⁻¹ [D, D], classes [C], δ, ε)`` in float64 from rows ``z``
    (L2-normalised here) and their labels; the classes are the distinct labels, in sorted order."""
    zt = l2_rows(torch.as_tensor(np.asarray(z), dtype=torch.float64))
    y = np.asarray(labels)
    classes = np.unique(y)
    if zt.shape[0] < 2 or classes.size < 1:
        raise ValueError("Mahalanobis++ needs at least two labelled bank images")
    means = torch.stack([zt[torch.as_tensor(y == c)].mean(0) for c in classes])
    centred = zt - means[torch.as_tensor(np.searchsorted(classes, y))]
    sigma = centred.T @ centred / zt.shape[0]
    blend = ledoit_wolf_blend(centred, sigma)
    mu = float(torch.trace(sigma)) / sigma.shape[0]
    eps = blend * mu / (1.0 - blend) if mu > 0 else 1.0
    return means, precision_of(sigma, eps or 1e-12), classes, blend, eps


def ledoit_wolf_blend(centred: torch.Tensor, sigma: torch.Tensor) -> float:
    """δ of the module docstring, from the centred rows and their covariance (float64)."""
    n, d = centred.shape
    mu = float(torch.trace(sigma)) / d
    frob2 = float((sigma * sigma).sum())
    d2 = (frob2 - d * mu * mu) / d
    b2 = (float((centred.pow(2).sum(1) ** 2).sum()) - n * frob2) / (n * n * d)
    if d2 <= 0:
        return MAX_BLEND  # Σ is already a multiple of I
    return min(max(min(b2, d2) / d2, 0.0), MAX_BLEND)


def precision_of(sigma: torch.Tensor, eps: float) -> torch.Tensor:
    """(Σ + εI)⁻¹ in float64, through the symmetric eigendecomposition Σ = V diag(w) Vᵀ."""
    s = sigma.to(torch.float64)
    s = (s + s.T) / 2
    w, v = torch.linalg.eigh(s)
    inv = 1.0 / (w.clamp_min(0.0) + eps)  # Σ is PSD; round-off may leave tiny negatives
    return (v * inv) @ v.T


def mahalanobis_pp(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """−min_c (z − μ_c)ᵀ P (z − μ_c) for ``z`` the L2-normalised rows of ``features`` [N, D]; float32 out."""
    z = l2_rows(features.to(torch.float64))
    mu, p = means.to(torch.float64), precision.to(torch.float64)
    zp = z @ p
    d = (zp * z).sum(1, keepdim=True) - 2 * zp @ mu.T + ((mu @ p) * mu).sum(1)[None, :]
    return (-d.min(dim=1).values).to(torch.float32)
