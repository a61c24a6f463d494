"""The one kNN interface every backend implements (SPEC §6, §7).

An index holds a bank of M vectors of dimension d. ``search(queries, k)`` returns, for every query,
its k nearest bank vectors sorted nearest first:

    distances[i, j] = ‖queries[i] − bank[indices[i, j]]‖₂²   (SQUARED L2, float32, clamped at 0)
    indices[i, j]   = row of that neighbour in the bank, in the order the rows were added (int64)

Distances are squared because that is what faiss returns and what CSD uses (SPEC §7); the global kNN
score takes the square root itself (SPEC §6).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from ood_audit.errors import DataError, KnnError

ArrayLike = torch.Tensor | np.ndarray


def ensure_finite(x: ArrayLike, name: str) -> None:
    """Raise `DataError` naming ``name`` if ``x`` holds NaN or ±inf. Never rank a NaN silently."""
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        return
    # A NaN or inf anywhere makes the plain sum non-finite, and the sum is far cheaper than a
    # full mask. A non-finite sum of finite values (overflow) is caught by the exact check below.
    if bool(torch.isfinite(t.sum())):
        return
    rows = t.reshape(t.shape[0], -1) if t.dim() > 0 and t.shape[0] > 0 else t.reshape(1, -1)
    bad = (~torch.isfinite(rows)).any(dim=1).nonzero().flatten()
    if bad.numel() == 0:
        return
    raise DataError(
        f"{name}: {bad.numel()} of {rows.shape[0]} rows contain NaN or inf (first bad row: "
        f"{int(bad[0])}); check the model weights and the decoded images feeding '{name}'"
    )


def as_matrix(x: ArrayLike, what: str) -> torch.Tensor:
    """View ``x`` as a 2-D torch tensor (no copy for numpy input), or raise `KnnError`."""
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise KnnError(f"{what} must be a 2-D [rows, dim] array, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    return t


class KnnIndex(ABC):
    """Exact k-nearest-neighbour index over squared L2 distance.

    Subclasses implement ``_add``, ``_search`` and ``describe``; this class validates arguments so
    every backend fails the same way (`KnnError`) on misuse and `DataError` on non-finite input.
    """

    def __init__(self) -> None:
        self._dim: int | None = None
        self._ntotal = 0

    @property
    def dim(self) -> int | None:
        """Vector dimension, fixed by the first ``add`` (None while empty)."""
        return self._dim

    @property
    def ntotal(self) -> int:
        """Number of bank vectors added so far."""
        return self._ntotal

    def __len__(self) -> int:
        return self._ntotal

    def add(self, bank: ArrayLike) -> KnnIndex:
        """Append ``bank`` ([M, d] float array or tensor) to the index; returns ``self``."""
        b = as_matrix(bank, "bank")
        if self._dim is not None and b.shape[1] != self._dim:
            raise KnnError(
                f"bank has dimension {b.shape[1]} but the index holds dimension {self._dim}; "
                "add vectors from the same feature tap"
            )
        if b.shape[0] == 0:
            return self
        ensure_finite(b, "bank")
        self._add(b)
        self._dim = int(b.shape[1])
        self._ntotal += int(b.shape[0])
        return self

    def search(self, queries: ArrayLike, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (squared L2 distances [Q, k] float32, indices [Q, k] int64), nearest first.

        Tensors come back on the index's device for the torch backend and on CPU for faiss.
        """
        q = as_matrix(queries, "queries")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise KnnError(f"k must be a positive integer, got k={k!r}")
        k = int(k)
        if self._ntotal == 0:
            raise KnnError("cannot search an empty bank; add() the ID bank vectors first")
        if q.shape[1] != self._dim:
            raise KnnError(
                f"query dimension {q.shape[1]} does not match bank dimension {self._dim}; "
                "queries and bank must come from the same feature tap"
            )
        if k > self._ntotal:
            raise KnnError(f"k={k} is larger than the bank size {self._ntotal}; lower k")
        if q.shape[0] == 0:
            return (torch.empty(0, k, dtype=torch.float32), torch.empty(0, k, dtype=torch.int64))
        ensure_finite(q, "queries")
        return self._search(q, k)

    @abstractmethod
    def _add(self, bank: torch.Tensor) -> None: ...

    @abstractmethod
    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Parameters to record in the bundle: {"type": "flat", "backend": ..., ...}."""

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={val!r}" for key, val in self.describe().items())
        return f"{type(self).__name__}({params})"
