"""faiss backend: exact ``IndexFlatL2`` (CPU, or GPU when faiss has GPU support; SPEC §7).

faiss is imported when an index is first built, never when this module is imported.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from ood_audit.errors import KnnError
from ood_audit.knn.base import KnnIndex


def import_faiss() -> Any:
    """Import faiss or raise `KnnError` saying how to get it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise KnnError(
            "faiss is not installed: `pip install faiss-cpu` (or faiss-gpu), or use kind='torch'"
        ) from exc
    return faiss


def faiss_available() -> bool:
    """True when faiss can be imported (without importing it)."""
    return importlib.util.find_spec("faiss") is not None


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    if not faiss_available():
        return False
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


class _FaissIndex(KnnIndex):
    """Shared plumbing: lazy construction at the first ``add``, device placement, search."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self._index: Any = None
        self._gpu_resources: Any = None
        if self.device.type not in ("cpu", "cuda"):
            raise KnnError(f"faiss runs on 'cpu' or 'cuda', not device={str(self.device)!r}")
        if self.device.type == "cuda" and not faiss_gpu_available():
            raise KnnError(
                f"device={str(self.device)!r} needs faiss with GPU support (faiss-gpu) and a "
                "visible GPU; install it, or use kind='torch' on CUDA"
            )
        import_faiss()

    @property
    def backend(self) -> str:
        return "faiss-gpu" if self.device.type == "cuda" else "faiss-cpu"

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index (None until the first ``add``), e.g. for faiss.write_index."""
        return self._index

    def _place(self, cpu_index: Any) -> Any:
        if self.device.type != "cuda":
            return cpu_index
        faiss = import_faiss()
        self._gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, self.device.index or 0, cpu_index)

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        distances, indices = self._index.search(_to_numpy(queries), k)
        return torch.from_numpy(distances).clamp_min_(0.0), torch.from_numpy(indices)


class FaissFlatIndex(_FaissIndex):
    """Exact squared-L2 search with faiss ``IndexFlatL2`` (a GEMM over the whole bank)."""

    def _add(self, bank: torch.Tensor) -> None:
        if self._index is None:
            faiss = import_faiss()
            self._index = self._place(faiss.IndexFlatL2(int(bank.shape[1])))
        self._index.add(_to_numpy(bank))

    def describe(self) -> dict[str, Any]:
        return {
            "type": "flat",
            "backend": self.backend,
            "device": str(self.device),
            "metric": "l2sq",
            "dim": self.dim,
            "ntotal": self.ntotal,
        }
