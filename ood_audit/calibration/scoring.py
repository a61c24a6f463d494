"""Building a :class:`~ood_audit.scores.scorer.Scorer` from model weights, banks and a selected block.

Calibration (held-out phase), evaluation and the scan all go through :func:`make_scorer`.
"""
from __future__ import annotations

from typing import Any

import torch

from ..models import ModelSpec, TapModel


def load_state_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """A safetensors blob (never a pickle) as a CPU state dict."""
    from safetensors.torch import load

    return load(data)


def make_scorer(state: dict[str, torch.Tensor], spec: ModelSpec, block: str, *,
                csd_bank: torch.Tensor | None = None, knn_bank: torch.Tensor | None = None,
                k_csd: int = 10, k_knn: int = 50, device: str = "cpu", knn_backend: str = "auto",
                extra_blocks: tuple[str, ...] = (), autocast_dtype: torch.dtype | None = None) -> Any:
    """A Scorer whose model taps ``block`` (and ``extra_blocks``), with exact kNN indexes over the banks."""
    from ..knn import build_index
    from ..scores.scorer import Scorer

    model = spec.build(state)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    blocks = tuple(dict.fromkeys((block, *extra_blocks)))
    tap = TapModel(model, blocks=blocks, mean=spec.mean, std=spec.std)
    csd = build_index(csd_bank.float(), kind=knn_backend, device=device) if csd_bank is not None else None
    knn = build_index(knn_bank.float(), kind=knn_backend, device=device) if knn_bank is not None else None
    return Scorer(tap, block, csd_index=csd, knn_index=knn, k_csd=k_csd, k_knn=k_knn, device=device,
                  autocast_dtype=autocast_dtype)
