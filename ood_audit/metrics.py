"""OOD metrics with ID as the positive class and scores oriented higher = ID (SPEC §9).

FPR95 follows the Hendrycks/ODIN convention: the fraction of OOD samples scoring at or above the
threshold that keeps 95% of ID samples (true-positive rate 95%, ID positive). OpenOOD (since 2023)
treats OOD as positive instead; its numbers are not directly comparable.
"""
from __future__ import annotations

import numpy as np

CONVENTION = ("ID = positive class, scores higher = more in-distribution; FPR95 = fraction of OOD "
              "scoring >= the threshold that keeps 95% of ID (Hendrycks/ODIN convention)")


def _as_1d(a, name: str) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of OOD with score >= t, where t is the largest threshold with ≥ ``tpr`` of ID ≥ t."""
    s = np.sort(id_scores)[::-1]
    t = s[int(np.ceil(tpr * s.size)) - 1]
    return float(np.mean(ood_scores >= t))


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + ½ P(pos = neg), via average ranks (Mann-Whitney U)."""
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size, dtype=np.float64)
    sorted_v = allv[order]
    # average rank over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], sorted_v.size]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """AP = Σ_n (R_n − R_{n−1}) P_n over distinct thresholds, descending (as sklearn defines it)."""
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[last_of_run]
    fp = (last_of_run + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """``fpr95``, ``auroc``, ``aupr_in`` (ID positive) and ``aupr_out`` (OOD positive, scores negated)."""
    i = _as_1d(id_scores, "id_scores")
    o = _as_1d(ood_scores, "ood_scores")
    return {
        "fpr95": fpr_at_tpr(i, o, 0.95),
        "auroc": auroc(i, o),
        "aupr_in": average_precision(i, o),
        "aupr_out": average_precision(-o, -i),
    }
