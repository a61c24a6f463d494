"""Drift of the flagged rate per prefix between two runs (SPEC §13): pure statistics, no I/O.

For each prefix, run A (before) flagged x₁ of its n₁ scored objects and run B (now) x₂ of n₂. With
p̂ = (x₁ + x₂)/(n₁ + n₂) the pooled rate, the two-proportion z statistic is

    z = (x₂/n₂ − x₁/n₁) / √( p̂ (1 − p̂) (1/n₁ + 1/n₂) ),

and its two-sided p-value is 2·(1 − Φ(|z|)) = erfc(|z|/√2). When p̂ is 0 or 1 the two rates are equal and
the test has nothing to say: z = 0, p = 1.

Many prefixes are tested at once, so the p-values are adjusted with Benjamini–Hochberg (step-up, false
discovery rate): q₍ᵢ₎ = min over j ≥ i of p₍ⱼ₎·m/j for the i-th smallest of m p-values, capped at 1. A prefix
is marked when q < ``alpha`` (0.01).

Only prefixes where both runs scored at least ``min_scored`` (30) objects are tested; the others show their
rates with no verdict, and take no part in the adjustment (they would only dilute it). Runs scored with
different bundles are not comparable (thresholds and scores differ), so then every prefix shows its rates
only.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.01
MIN_SCORED = 30


@dataclass(frozen=True)
class Rate:
    """Flagged and scored (status ``ok``) objects of one prefix in one run."""

    flagged: int
    scored: int

    @property
    def rate(self) -> float | None:
        return self.flagged / self.scored if self.scored else None


@dataclass(frozen=True)
class DriftRow:
    """One prefix's flagged rate before and now, with the test's outcome.

    ``verdict`` is ``"changed"`` (q < alpha), ``"no change"``, ``"too few"`` (either run under
    ``min_scored``), ``"new"`` / ``"gone"`` (the prefix is absent from one run) or ``"other bundle"``.
    """

    prefix: str
    before: Rate
    now: Rate
    z: float | None = None
    p: float | None = None
    q: float | None = None
    verdict: str = "no change"

    @property
    def significant(self) -> bool:
        return self.verdict == "changed"


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """``(z, two-sided p)`` for the change from ``x1/n1`` to ``x2/n2`` (see the module docstring)."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"both samples need objects (n1={n1}, n2={n2})")
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if var <= 0.0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values), in the input's order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    q = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # step-up: from the largest p down, keep the running minimum
        i = order[rank - 1]
        running = min(running, pvalues[i] * m / rank)
        q[i] = min(running, 1.0)
    return q


def drift_rows(before: Mapping[str, Rate], now: Mapping[str, Rate], *, same_bundle: bool = True,
               alpha: float = ALPHA, min_scored: int = MIN_SCORED) -> list[DriftRow]:
    """Every prefix of either run, sorted by name, with its test outcome (see the module docstring)."""
    empty = Rate(0, 0)
    prefixes = sorted(set(before) | set(now))
    rows: dict[str, DriftRow] = {}
    tested: list[tuple[str, float, float]] = []
    for prefix in prefixes:
        b, n = before.get(prefix, empty), now.get(prefix, empty)
        if not same_bundle:
            rows[prefix] = DriftRow(prefix, b, n, verdict="other bundle")
        elif prefix not in before or prefix not in now:
            rows[prefix] = DriftRow(prefix, b, n, verdict="new" if prefix not in before else "gone")
        elif b.scored < min_scored or n.scored < min_scored:
            rows[prefix] = DriftRow(prefix, b, n, verdict="too few")
        else:
            z, p = two_proportion_z(b.flagged, b.scored, n.flagged, n.scored)
            tested.append((prefix, z, p))
    for (prefix, z, p), q in zip(tested, benjamini_hochberg([p for _, _, p in tested])):
        rows[prefix] = DriftRow(prefix, before[prefix], now[prefix], z=z, p=p, q=q,
                                verdict="changed" if q < alpha else "no change")
    return [rows[p] for p in prefixes]
