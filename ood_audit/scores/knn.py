"""Global kNN score (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors",
ICML 2022, the k-th nearest neighbour distance score; SPEC §6).

With ẑ = z/‖z‖ the L2-normalised pooled penultimate vector and the bank the ẑ of the ID training
set,

    knn(x) = −‖ẑ − NN_k(ẑ)‖₂        (plain L2 distance, NOT squared, to the k-th neighbour; k = 50)

Higher = more in-distribution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ood_audit.errors import DataError
from ood_audit.knn import ArrayLike, KnnIndex, ensure_finite, make_index

KNN_EPS = 1e-12
_BANK_BLOCK = 65536


def l2_normalize(feats: ArrayLike, name: str = "features") -> torch.Tensor:
    """ẑ = z / max(‖z‖, 1e-12) row-wise, float32 (idempotent). `DataError` naming ``name`` on
    NaN/inf or a shape other than [N, C]."""
    z = torch.as_tensor(feats)
    if z.dim() != 2:
        raise DataError(f"{name}: features must be [N, C], got shape {tuple(z.shape)}")
    ensure_finite(z, name)
    return F.normalize(z.float(), dim=1, eps=KNN_EPS)


def knn_index(
    bank: ArrayLike,
    kind: str = "auto",
    device: str | torch.device = "cpu",
    name: str = "knn bank",
    **params: Any,
) -> KnnIndex:
    """Build an exact index (``make_index(kind, device, **params)``) over the L2-normalised bank
    [M, C]. `DataError` naming ``name`` on NaN/inf."""
    b = torch.as_tensor(bank)
    if b.dim() != 2:
        raise DataError(f"{name}: features must be [N, C], got shape {tuple(b.shape)}")
    ensure_finite(b, name)
    index = make_index(kind, device=device, **params)
    # Normalise block by block so the only bank-sized copy is the one the index keeps.
    for block in b.split(_BANK_BLOCK):
        index.add(l2_normalize(block, name))
    return index


def knn_score(
    feats: ArrayLike,
    bank: ArrayLike | KnnIndex,
    k: int = 50,
    *,
    kind: str = "auto",
    name: str = "knn",
) -> torch.Tensor:
    """kNN scores [N] (float32, higher = ID) of raw pooled features ``feats`` [N, C].

    ``bank`` is raw or normalised ID features [M, C] (normalised here), or an index built with
    ``knn_index`` (it must hold normalised vectors). Raises `DataError` naming ``name`` on NaN/inf
    features, `KnnError` on misuse (empty bank, dimension mismatch, k out of range).
    """
    return knn_score_and_neighbours(feats, bank, k, kind=kind, name=name)[0]


def knn_score_and_neighbours(
    feats: ArrayLike,
    bank: ArrayLike | KnnIndex,
    k: int = 50,
    n_neighbours: int = 0,
    *,
    kind: str = "auto",
    name: str = "knn",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``knn_score`` plus, from the same search, the ``n_neighbours`` closest bank rows [N, n] (int64) and
    their L2 distances [N, n] (float32), closest first: the report's nearest ID neighbours (SPEC §13)."""
    z = l2_normalize(feats, name)
    index = bank if isinstance(bank, KnnIndex) else knn_index(bank, kind, z.device, f"{name} bank")
    distances, ids = index.search(z, max(k, n_neighbours))
    distances = distances.to(z.device)
    near = distances[:, :n_neighbours].clamp_min(0).sqrt()
    return -distances[:, k - 1].sqrt(), ids[:, :n_neighbours].to(torch.int64), near
