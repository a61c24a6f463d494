"""Deterministic, content-stable splits of ID data (bank/selection part vs held-out part)."""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def unit_hash(keys: Sequence[str], seed: int, salt: str) -> np.ndarray:
    """A uniform value in [0, 1) per key that depends only on (key, seed, salt).

    Adding or removing other objects never moves an object across a split.
    """
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        h = hashlib.blake2b(f"{salt}:{seed}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def heldout_mask(keys: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """True for the held-out part (≈ ``fraction`` of the keys)."""
    return unit_hash(keys, seed, "heldout") < fraction


def subsample_mask(keys: Sequence[str], size: int | None, seed: int = 0) -> np.ndarray:
    """Exactly ``min(size, len(keys))`` keys, the ones with the smallest hashes; all when ``size`` is None."""
    n = len(keys)
    if size is None or size >= n:
        return np.ones(n, dtype=bool)
    order = np.argsort(unit_hash(keys, seed, "select"), kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:size]] = True
    return mask
