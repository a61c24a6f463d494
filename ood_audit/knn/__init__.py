"""kNN search behind one interface (SPEC §6, §7; STYLE "device and backend are parameters").

    index = make_index("auto", device="cpu")     # or "faiss", "torch", "faiss-gpu"
    index.add(bank)                              # [M, d]
    dist_sq, idx = index.search(queries, k)      # SQUARED L2, nearest first
    index.describe()                             # record in the bundle

Every kind ("faiss", "faiss-gpu", "torch") is exact: they return the same neighbours up to float
rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from ood_audit.errors import KnnError
from ood_audit.knn.base import ArrayLike, KnnIndex, ensure_finite
from ood_audit.knn.faiss_backend import (
    FaissFlatIndex,
    faiss_available,
    faiss_gpu_available,
)
from ood_audit.knn.torch_backend import TorchFlatIndex

INDEX_KINDS = ("auto", "faiss", "faiss-gpu", "torch")

__all__ = [
    "INDEX_KINDS",
    "ArrayLike",
    "FaissFlatIndex",
    "KnnIndex",
    "TorchFlatIndex",
    "build_index",
    "ensure_finite",
    "faiss_available",
    "faiss_gpu_available",
    "make_index",
]


def make_index(kind: str = "auto", device: str | torch.device = "cpu", **params: Any) -> KnnIndex:
    """Create an empty index.

    kind:
      - "auto": exact; faiss-cpu on CPU when faiss is importable (else torch), torch on CUDA.
      - "faiss": exact faiss ``IndexFlatL2`` on CPU.
      - "faiss-gpu": exact faiss ``IndexFlatL2`` on ``device`` (a CUDA device; needs faiss-gpu).
      - "torch": exact chunked GEMM + top-k on ``device``; params ``query_chunk``, ``bank_chunk``.
    """
    dev = torch.device(device)
    if kind == "auto":
        kind = "faiss" if dev.type == "cpu" and faiss_available() else "torch"
    try:
        if kind == "torch":
            return TorchFlatIndex(device=dev, **params)
        if kind == "faiss":
            if dev.type != "cpu":
                raise KnnError(f"kind='faiss' runs on CPU; for device={str(dev)!r} use 'faiss-gpu'")
            return FaissFlatIndex(device=dev, **params)
        if kind == "faiss-gpu":
            if dev.type != "cuda":
                raise KnnError(f"kind='faiss-gpu' needs a CUDA device, got device={str(dev)!r}")
            return FaissFlatIndex(device=dev, **params)
    except TypeError as exc:
        raise KnnError(f"bad parameters {sorted(params)} for kind={kind!r}: {exc}") from exc
    raise KnnError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")


def build_index(
    bank: ArrayLike, kind: str = "auto", device: str | torch.device = "cpu", **params: Any
) -> KnnIndex:
    """``make_index(kind, device, **params)`` with ``bank`` added."""
    return make_index(kind, device=device, **params).add(bank)
