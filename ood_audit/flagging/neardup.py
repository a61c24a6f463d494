"""Near-duplicates of the calibration set (``near_duplicate_of_id``; the kNN bank of SPEC §6 and §13).

A scanned image x is a near-duplicate of bank image j when

    d(x) = ‖ẑ(x) − ẑ_j‖₂ < τ,   j = NN_1(ẑ(x)),

with ẑ the L2-normalised pooled penultimate vector of the ``knn`` score and d the plain L2 distance the
report shows for the nearest ID neighbours (SPEC §13). The bank never holds held-out images, so each
held-out ID image's nearest-bank distance is a distance to *another* image; τ is set on those:

    τ = d_(⌊ρn⌋+1) of the n held-out nearest-bank distances (:func:`threshold_at`, default ρ = 1 %),

so at most a fraction ρ of distinct ID images are called near-duplicates, the same order statistic as
the score thresholds. A re-encoded or slightly resized copy of a bank image lands far below τ.
:func:`nearest_distances` with ``exclude_self`` gives the same distances within the bank (leave one out)
where no held-out split exists.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ood_audit.errors import ConfigError, DataError
from ood_audit.bundle.schema import NEARDUP_FORMULA as FORMULA
from ood_audit.bundle.schema import NearDupPart
from ood_audit.flagging.thresholds import threshold_at

if TYPE_CHECKING:  # torch only where distances are computed: the bundle part and τ need numpy alone
    import torch

    from ood_audit.knn import ArrayLike, KnnIndex

DEFAULT_RATE = 0.01
__all__ = ["DEFAULT_RATE", "FORMULA", "NearDupPart", "near_duplicate_rows", "near_duplicate_threshold",
           "nearest_distances"]


def nearest_distances(feats: ArrayLike, bank: ArrayLike | KnnIndex, *, exclude_self: bool = False,
                      kind: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(L2 distance [N], bank row [N]) of each raw feature row's nearest bank vector.

    With ``exclude_self`` the queries are the bank's own rows in order, and row i's own entry is skipped
    (its nearest *other* bank image; a bank of one row is refused).
    """
    from ood_audit.scores.knn import knn_score_and_neighbours

    k = 2 if exclude_self else 1
    if exclude_self and len(bank) < 2:
        raise DataError("near-duplicate distances within the bank need at least 2 bank images")
    _, ids, dist = knn_score_and_neighbours(feats, bank, k, k, kind=kind, name="near-duplicate")
    ids, dist = ids.cpu().numpy(), dist.cpu().numpy().astype(np.float64)
    if not exclude_self:
        return dist[:, 0], ids[:, 0]
    own = np.arange(ids.shape[0])
    pick = (ids[:, 0] == own).astype(np.int64)  # an exact duplicate may tie with the row itself
    rows = np.arange(ids.shape[0])
    return dist[rows, pick], ids[rows, pick]


def near_duplicate_threshold(heldout_distances: np.ndarray, rate: float = DEFAULT_RATE) -> NearDupPart:
    """τ from held-out ID nearest-bank distances (module docstring)."""
    d = np.asarray(heldout_distances, dtype=np.float64)
    if not 0.0 < rate < 0.5:
        raise ConfigError(f"near-duplicate rate must be in (0, 0.5), got {rate}")
    return NearDupPart(threshold=threshold_at(d, rate), rate=rate, heldout_images=int(d.size))


def near_duplicate_rows(distances: "np.ndarray | torch.Tensor", rows: "np.ndarray | torch.Tensor",
                        threshold: float) -> np.ndarray:
    """The nearest bank row where its distance is under ``threshold``, else −1 (int64 [N])."""
    d = np.asarray(distances, dtype=np.float64)
    r = np.asarray(rows, dtype=np.int64)
    return np.where(d < threshold, r, -1)
