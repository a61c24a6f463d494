"""The two bank detectors, CSD (SPEC §7) and kNN (SPEC §6): ``fit`` builds the ID bank, ``score`` searches it.

Banks are built only by :func:`~ood_audit.scores.csd.csd_bank` and :func:`~ood_audit.scores.knn.knn_index`,
stored in ``bank_dtype`` (float16 by default: half the bundle, and the search runs in fp32 on the
up-cast bank), and searched exactly.

``coreset`` (a fit-time option, off by default) keeps only a fraction of the bank's rows, chosen by
greedy k-center (:func:`k_center_greedy`), so that big ID sets give banks a CPU can search.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch

from ood_audit.bundle.schema import BankPart
from ood_audit.knn import KnnIndex, build_index
from ood_audit.scores.csd import csd_bank, csd_score, csd_views
from ood_audit.scores.knn import knn_index, knn_score_and_neighbours, l2_normalize
from ood_audit.scores.detectors.base import Detector, Features

NEAREST_NEIGHBOURS = 3  # kNN-bank rows recorded per image for explanations (SPEC §13)
BANK_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def k_center_greedy(x: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``m`` rows of ``x`` [n, d] chosen by greedy k-center (farthest-point) selection.

    Starting from row 0, each step adds the row farthest from the rows chosen so far:
    c_{t+1} = argmax_i min_{j ≤ t} ‖x_i − x_{c_j}‖₂, which keeps the covering radius
    max_i min_j ‖x_i − x_{c_j}‖₂ within twice the optimum (Gonzalez, TCS 1985; used as a "core-set" by
    Sener & Savarese, ICLR 2018, and as PatchCore's memory-bank reduction, Roth et al., CVPR 2022).
    O(n·m·d) time, O(n) extra memory; deterministic.
    """
    n = int(x.shape[0])
    m = min(int(m), n)
    xf = x.float()
    chosen = torch.empty(m, dtype=torch.long)
    if m == 0:
        return chosen
    chosen[0] = 0
    dist = (xf - xf[0]).pow(2).sum(1)
    for t in range(1, m):
        j = int(torch.argmax(dist))
        chosen[t] = j
        dist = torch.minimum(dist, (xf - xf[j]).pow(2).sum(1))
    return chosen


class _BankDetector(Detector):
    stateful = True
    file: str
    views_per_image: int | None = None  # bank rows per image, when not one

    def __init__(self, k: int, *, bank_dtype: str = "float16", device: str | torch.device = "cpu",
                 knn_backend: str = "auto", coreset: float | None = None) -> None:
        super().__init__()
        if coreset is not None and not 0.0 < coreset <= 1.0:
            raise ValueError(f"coreset must be a fraction in (0, 1], got {coreset!r}")
        self.k, self.bank_dtype, self.coreset = int(k), bank_dtype, coreset
        self.device, self.knn_backend = torch.device(device), knn_backend
        self.bank: torch.Tensor | None = None
        self._index: KnnIndex | None = None

    @property
    def index(self) -> KnnIndex:
        self.require_fitted()
        if self._index is None:
            self._index = self._build_index(self.bank.float())  # type: ignore[union-attr]
        return self._index

    def _build_index(self, bank: torch.Tensor) -> KnnIndex:
        raise NotImplementedError

    def _reduce(self, bank: torch.Tensor) -> torch.Tensor:
        """The fitted bank, or its k-center coreset of ``ceil(coreset · rows)`` rows.

        ``k`` shrinks with the bank (``round(k · kept / rows)``, at least 1): the k-th neighbour in the
        full bank lies about as far as the (k·f)-th in a bank thinned to a fraction f.
        """
        if self.coreset is None or self.coreset >= 1.0:
            return bank
        n = int(bank.shape[0])
        m = min(n, math.ceil(self.coreset * n))
        self.k = max(1, round(self.k * m / n))
        return bank[k_center_greedy(bank, m)]

    def _set_bank(self, bank: torch.Tensor) -> "_BankDetector":
        self.bank = bank.to(BANK_DTYPES[self.bank_dtype]).contiguous()
        self._index, self.fitted = None, True
        return self

    def state(self) -> tuple[BankPart, dict[str, torch.Tensor]]:
        self.require_fitted()
        b = self.bank
        assert b is not None
        return (BankPart(k=self.k, bank_size=int(b.shape[0]), dim=int(b.shape[1]), dtype=self.bank_dtype,  # type: ignore[arg-type]
                         file=self.file, views_per_image=self.views_per_image), {"bank": b})

    @classmethod
    def from_state(cls, part: BankPart, tensors: dict[str, torch.Tensor], *,
                   device: str | torch.device = "cpu", knn_backend: str = "auto") -> "_BankDetector":
        bank = tensors["bank"]
        dtype = next((n for n, t in BANK_DTYPES.items() if t == bank.dtype), "float32")
        det = cls(part.k, bank_dtype=dtype, device=device, knn_backend=knn_backend)
        return det._set_bank(bank)


class CSD(_BankDetector):
    """CSD(x) = −min_v d_v(x), d_v = squared L2 distance from view v (four quadrants, global, centre of
    the last-stage map, each L2-normalised) to its k-th nearest view of the ID bank; ``csd_view`` =
    argmin_v (Zhang et al., "From Global to Local: Multi-scale Out-of-distribution Detection", TIP 2023,
    "Cross-Scale Decision"; SPEC §7). ``fit`` takes the six views of every ID bank image."""

    name, reference, outputs = "csd", "Zhang et al., TIP 2023 (MODE)", ("csd", "csd_view")
    file, views_per_image = "csd_bank.safetensors", 6

    def fit_rows(self, f: Features) -> np.ndarray:
        v = csd_views(f.last_map)
        return v.reshape(v.shape[0], -1).cpu().numpy()

    def fit(self, rows: Any) -> "CSD":
        """``rows``: an array or iterable of [n, 6·C] (from :meth:`fit_rows`) or [n, 6, C] view batches."""
        parts = [rows] if isinstance(rows, (np.ndarray, torch.Tensor)) else list(rows)
        views = (torch.as_tensor(p).float().reshape(len(p), 6, -1) for p in parts if len(p))
        return self._set_bank(self._reduce(csd_bank(views)))  # type: ignore[return-value]

    def _build_index(self, bank: torch.Tensor) -> KnnIndex:
        return build_index(bank, kind=self.knn_backend, device=self.device)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        s, view = csd_score(csd_views(f.last_map), self.index, k=self.k)
        return {"csd": s, "csd_view": view}


class KNN(_BankDetector):
    """knn(x) = −‖ẑ − NN_k(ẑ)‖₂, ẑ the L2-normalised penultimate vector and NN_k its k-th nearest
    neighbour in the bank of ID ẑ (Sun et al., "Out-of-Distribution Detection with Deep Nearest
    Neighbors", ICML 2022; SPEC §6). ``knn_nn`` / ``knn_nn_dist`` are the 3 nearest bank rows from the
    same search (SPEC §13). ``fit`` takes the penultimate vectors of the ID bank images."""

    name, reference, outputs = "knn", "Sun et al., ICML 2022", ("knn", "knn_nn", "knn_nn_dist")
    file = "knn_bank.safetensors"

    def fit_rows(self, f: Features) -> np.ndarray:
        return l2_normalize(f.penultimate, "penultimate features").cpu().numpy()

    def fit(self, rows: Any) -> "KNN":
        parts: Iterable[Any] = [rows] if isinstance(rows, (np.ndarray, torch.Tensor)) else rows
        bank = torch.cat([l2_normalize(torch.as_tensor(p), "knn bank") for p in parts if len(p)])
        return self._set_bank(self._reduce(bank))  # type: ignore[return-value]

    def _build_index(self, bank: torch.Tensor) -> KnnIndex:
        return knn_index(bank, kind=self.knn_backend, device=self.device)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        s, nn, dist = knn_score_and_neighbours(f.penultimate, self.index, k=self.k,
                                               n_neighbours=min(NEAREST_NEIGHBOURS, len(self.index)))
        return {"knn": s, "knn_nn": nn, "knn_nn_dist": dist}
