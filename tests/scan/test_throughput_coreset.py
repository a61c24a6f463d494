"""Bank coresets (greedy k-center): off by default; when asked, a subset of the bank's rows that covers it."""

from __future__ import annotations

import math

import pytest
import torch

from ood_audit.scores.detectors.banks import KNN, k_center_greedy


def test_k_center_picks_every_cluster_first() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    idx = k_center_greedy(x, 4)
    assert sorted(int(i) // 50 for i in idx) == [0, 1, 2, 3]
    assert k_center_greedy(x, 1000).shape == (200,) and torch.equal(k_center_greedy(x, 7), k_center_greedy(x, 7))


def test_k_center_covers_better_than_a_random_subset() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 16, generator=g) * torch.linspace(0.2, 3.0, 16)

    def radius(idx: torch.Tensor) -> float:
        return float(torch.cdist(x, x[idx]).min(1).values.max())

    idx = k_center_greedy(x, 100)
    assert idx.unique().numel() == 100
    assert radius(idx) < radius(torch.randperm(2000, generator=g)[:100])


def test_knn_bank_default_unchanged_and_coreset_is_a_subset() -> None:
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(300, 8, generator=g)
    full = KNN(5, bank_dtype="float32").fit(rows)
    again = KNN(5, bank_dtype="float32", coreset=None).fit(rows)
    assert full.bank is not None and full.bank.shape == (300, 8) and torch.equal(full.bank, again.bank)
    small = KNN(5, bank_dtype="float32", coreset=0.1).fit(rows)
    assert small.bank is not None and small.bank.shape == (math.ceil(0.1 * 300), 8)
    assert (small.bank[:, None] == full.bank[None]).all(-1).any(1).all()  # rows of the full bank
    assert small.state()[0].bank_size == 30 and small.k == 1 and full.k == 5  # k shrinks with the bank
    with pytest.raises(ValueError, match="coreset"):
        KNN(5, coreset=0.0)
