"""Exact kNN with torch: chunked GEMM + top-k on any device (CPU or CUDA). SPEC §7."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ood_audit.errors import KnnError
from ood_audit.knn.base import KnnIndex


@contextmanager
def _exact_matmul(device: torch.device) -> Iterator[None]:
    # TF32 on CUDA would change which neighbours are found; exact search needs full fp32 GEMMs.
    if device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class TorchFlatIndex(KnnIndex):
    """Exact squared-L2 search: d(q, b) = ‖q‖² + ‖b‖² − 2 q·b in float32, clamped at 0.

    Queries are processed ``query_chunk`` rows at a time against ``bank_chunk`` bank rows at a
    time; each bank chunk's top-k is merged into a running top-k, so the scratch memory is one
    [query_chunk, bank_chunk] float32 matrix whatever the bank size. The bank itself is held once,
    in float32, on ``device``.
    """

    def __init__(
        self, device: str | torch.device = "cpu", query_chunk: int | None = None,
        bank_chunk: int | None = None,
    ) -> None:
        super().__init__()
        # Defaults: 64 MB of scratch on CPU; 1 GB on CUDA, where bigger GEMMs and fewer top-k merges
        # measured ~25% faster on an H100 (49k queries x 300k bank) with identical neighbours.
        cuda = torch.device(device).type == "cuda"
        query_chunk = query_chunk if query_chunk is not None else (4096 if cuda else 1024)
        bank_chunk = bank_chunk if bank_chunk is not None else (65536 if cuda else 16384)
        if query_chunk < 1 or bank_chunk < 1:
            raise KnnError(
                f"query_chunk and bank_chunk must be >= 1, got {query_chunk} and {bank_chunk}"
            )
        self.device = torch.device(device)
        self.query_chunk = int(query_chunk)
        self.bank_chunk = int(bank_chunk)
        self._blocks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (vectors, squared norms)

    def _add(self, bank: torch.Tensor) -> None:
        vectors = bank.detach().to(self.device, torch.float32, copy=True).contiguous()
        # Squared norms chunk by chunk so adding a large bank needs no second bank-sized temporary.
        norms = torch.cat([(part * part).sum(dim=1) for part in vectors.split(self.bank_chunk)])
        self._blocks.append((vectors, norms))

    def _bank_chunks(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        offset = 0
        for vectors, norms in self._blocks:
            for start in range(0, vectors.shape[0], self.bank_chunk):
                stop = start + self.bank_chunk
                yield offset + start, vectors[start:stop], norms[start:stop]
            offset += vectors.shape[0]

    @torch.no_grad()
    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q_all = queries.detach().to(self.device, torch.float32)
        n_queries = q_all.shape[0]
        out_d = torch.empty(n_queries, k, dtype=torch.float32, device=self.device)
        out_i = torch.empty(n_queries, k, dtype=torch.int64, device=self.device)
        with _exact_matmul(self.device):
            for start in range(0, n_queries, self.query_chunk):
                q = q_all[start : start + self.query_chunk]
                best_d = torch.full((q.shape[0], k), float("inf"), device=self.device)
                best_i = torch.full((q.shape[0], k), -1, dtype=torch.int64, device=self.device)
                for offset, bank, bank_norms in self._bank_chunks():
                    # ‖b‖² − 2 q·b ranks like the full distance; ‖q‖² is added to the k winners.
                    partial = torch.addmm(bank_norms.unsqueeze(0), q, bank.T, alpha=-2.0)
                    chunk_d, chunk_i = partial.topk(
                        min(k, partial.shape[1]), dim=1, largest=False, sorted=False
                    )
                    merged_d = torch.cat([best_d, chunk_d], dim=1)
                    merged_i = torch.cat([best_i, chunk_i + offset], dim=1)
                    best_d, pick = merged_d.topk(k, dim=1, largest=False, sorted=False)
                    best_i = merged_i.gather(1, pick)
                best_d = (best_d + (q * q).sum(dim=1, keepdim=True)).clamp_min_(0.0)
                best_d, order = best_d.sort(dim=1)
                out_d[start : start + q.shape[0]] = best_d
                out_i[start : start + q.shape[0]] = best_i.gather(1, order)
        return out_d, out_i

    def describe(self) -> dict[str, Any]:
        return {
            "type": "flat",
            "backend": "torch",
            "device": str(self.device),
            "metric": "l2sq",
            "dim": self.dim,
            "ntotal": self.ntotal,
            "query_chunk": self.query_chunk,
            "bank_chunk": self.bank_chunk,
        }
