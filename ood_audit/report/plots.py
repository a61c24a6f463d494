"""Per-score histograms for the report: the scanned set against the bundle's held-out ID distribution.

Rendered with matplotlib's object API on the Agg canvas (no pyplot, no global figure state, no display),
to PNG bytes the page inlines. The ID distribution is the bundle's 1001 held-out quantiles (SPEC §10):
the ID mass in a bin is the difference of the interpolated ID CDF at its edges, so both curves share the
scanned histogram's fixed bins and are drawn as fractions of their own totals.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ood_audit.flagging.thresholds import percentile
from ood_audit.report.collect import Histogram

SCANNED_COLOUR = "#d9480f"
ID_COLOUR = "#1c7ed6"


def id_mass(edges: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Fraction of held-out ID falling in each bin of ``edges``, from its quantile table."""
    cdf = percentile(np.asarray(edges, dtype=np.float64), np.asarray(quantiles, dtype=np.float64)) / 100.0
    return np.diff(cdf)


def histogram_png(hist: Histogram, *, id_quantiles: Sequence[float] | None = None,
                  thresholds: Sequence[tuple[float, str]] = (), dpi: int = 100) -> bytes:
    """One score's histogram as PNG bytes: scanned bars, the ID outline, and ``(value, label)`` threshold lines
    (the first dashed, any further one solid)."""
    fig = Figure(figsize=(4.2, 2.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = hist.edges
    widths = np.diff(edges)
    total = hist.n
    if total:
        ax.bar(edges[:-1], hist.counts / total, width=widths, align="edge", color=SCANNED_COLOUR, alpha=0.55,
               label=f"scanned ({total:,})")
    if id_quantiles:
        mass = id_mass(edges, id_quantiles)
        ax.stairs(mass, edges, color=ID_COLOUR, linewidth=1.6, label="held-out ID")
    for i, (value, label) in enumerate(thresholds):
        if value is not None and np.isfinite(value):
            ax.axvline(value, color="#212529", linestyle="--" if i == 0 else "-", linewidth=1.1, label=label)
    notes = []
    if hist.below:
        notes.append(f"{hist.below:,} below the axis")
    if hist.above:
        notes.append(f"{hist.above:,} above")
    ax.set_title(hist.score + (f"  ({', '.join(notes)})" if notes else ""), fontsize=10)
    ax.set_xlabel("score (higher = more like the training data)", fontsize=8)
    ax.set_ylabel("fraction", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
