"""Thresholds at a target ID false-flag rate and percentiles against held-out ID (SPEC §10–11).

Scores are higher = ID; a sample is flagged for a score when it falls strictly below that score's
threshold.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

N_QUANTILES = 1001  # 0.0, 0.1, ..., 100.0 percent


def threshold_at(scores: np.ndarray, id_flag_rate: float) -> float:
    """The threshold t such that the fraction of held-out ID scores strictly below t is ≤ ``id_flag_rate``.

    With sorted scores s_(1) ≤ … ≤ s_(n), t = s_(⌊αn⌋+1): exactly ⌊αn⌋ samples lie below it (no ties).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no held-out scores to set a threshold")
    if not 0.0 < id_flag_rate < 1.0:
        raise ValueError(f"target ID flag rate must be in (0, 1), got {id_flag_rate}")
    return float(s[min(int(np.floor(id_flag_rate * s.size)), s.size - 1)])


def quantile_table(scores: np.ndarray) -> list[float]:
    """Held-out score quantiles at 0.0%, 0.1%, …, 100% (for percentiles at scan time)."""
    return np.quantile(np.asarray(scores, dtype=np.float64), np.linspace(0, 1, N_QUANTILES)).tolist()


def percentile(values: np.ndarray, table: list[float] | np.ndarray) -> np.ndarray:
    """Percent of held-out ID scoring below each value (0–100), interpolated in the quantile table."""
    q = np.asarray(table, dtype=np.float64)
    levels = np.linspace(0.0, 100.0, q.size)
    # np.interp needs increasing x: collapse runs of equal quantiles to their middle level
    uq, inv = np.unique(q, return_inverse=True)
    mid = np.array([levels[inv == i].mean() for i in range(uq.size)])
    v = np.asarray(values, dtype=np.float64)
    return np.interp(v, uq, mid, left=0.0, right=100.0) if uq.size > 1 else np.where(v < uq[0], 0.0, 100.0)


def flags(scores: Mapping[str, np.ndarray], thresholds: Mapping[str, float],
          flag_on: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    """(flagged [N], reasons per row): reasons list every score below threshold; ``flagged`` uses ``flag_on``."""
    names = [s for s in thresholds if s in scores]
    n = len(next(iter(scores.values()))) if scores else 0
    below = {s: np.asarray(scores[s]) < thresholds[s] for s in names}
    reasons = [[s for s in names if below[s][i]] for i in range(n)]
    flagged = np.zeros(n, dtype=bool)
    for s in flag_on:
        if s in below:
            flagged |= below[s]
    return flagged, reasons


def union_thresholds(scores: Mapping[str, np.ndarray], names: list[str],
                     id_flag_rate: float) -> tuple[dict[str, float], float]:
    """Per-score thresholds at a common rate α' ≤ target, chosen so that flagging when *any* of ``names``
    is below its threshold keeps the held-out ID false-flag rate at or under ``id_flag_rate``."""
    arrs = {s: np.asarray(scores[s], dtype=np.float64) for s in names}
    lo, hi = id_flag_rate / max(len(names), 1) / 2, id_flag_rate
    best = lo

    def rate(a: float) -> float:
        th = {s: threshold_at(arrs[s], a) for s in names}
        return float(np.mean(np.any([arrs[s] < th[s] for s in names], axis=0)))

    for _ in range(30):
        mid = (lo + hi) / 2
        if rate(mid) <= id_flag_rate:
            best, lo = mid, mid
        else:
            hi = mid
    return {s: threshold_at(arrs[s], best) for s in names}, best


def score_stats(scores: np.ndarray) -> dict[str, float]:
    """Mean, std, median and MAD of held-out ID scores."""
    s = np.asarray(scores, dtype=np.float64)
    med = float(np.median(s))
    return {"mean": float(s.mean()), "std": float(s.std()), "median": med,
            "mad": float(np.median(np.abs(s - med))), "n": int(s.size)}
