"""One streaming pass over a run's rows for everything the report aggregates (SPEC §11, §13).

A run may hold millions of rows, so nothing here materialises the run: the dataset is read as record
batches of only the columns needed (``uri``, ``status``, ``error``, ``flagged`` and the score columns), and
each batch is folded into fixed-size state and dropped:

- per-prefix counts (objects, scored, flagged, errors), grouped in Arrow per batch;
- one histogram per score over **fixed bins chosen before the pass** (:func:`score_edges`), from the
  held-out ID quantiles and the Parquet footers' min/max statistics, so bins never depend on batch order;
  values beyond the bins are counted as below/above rather than widening the axis without bound;
- the first ``max_failures`` failed rows (status not ``ok``) and the total count of them;
- SPEC §14's ``quality_issues``: rows per issue, decoded rows and rows with any issue
  (:class:`~ood_audit.report.findings.QualityCounts`); None for reports written before the column.

Batches come from :func:`ood_audit.store.runs.iter_batches`, one file at a time with minimal read-ahead: the
dataset scanner's default read-ahead runs ahead of a slower consumer and its peak memory grew with the
run's size (about 2.5x from 1M to 3M rows here), while file by file it stays flat.

A *prefix* is the first ``depth`` path components under the scanned input that holds the object (from
the run summary's ``inputs``), kept as the full URI prefix so that two inputs never collide; objects
directly under an input belong to the input itself. Objects under no input (manifest scans) are grouped
by the first ``depth`` components of their bucket or path.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ood_audit.report.findings import QUALITY_COLUMN, QualityCounts
from ood_audit.store.runs import iter_batches

N_BINS = 60
MAX_FAILURES = 200


@dataclass
class PrefixStats:
    objects: int = 0
    scored: int = 0
    flagged: int = 0
    errors: int = 0


@dataclass
class Histogram:
    """Counts of one score's finite values over fixed ``edges``; ``below``/``above``: outside them."""

    score: str
    edges: np.ndarray
    counts: np.ndarray
    below: int = 0
    above: int = 0

    @property
    def n(self) -> int:
        return int(self.counts.sum()) + self.below + self.above


@dataclass
class Collected:
    prefixes: dict[str, PrefixStats] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failures_total: int = 0
    rows: int = 0
    quality: QualityCounts | None = None


def prefix_keys(uris: pa.Array | pa.ChunkedArray, inputs: Sequence[str], depth: int = 1) -> pa.Array:
    """Each URI's prefix (see the module docstring), as the URI text up to and including its last ``/``."""
    if depth < 1:
        raise ValueError(f"prefix depth must be >= 1, got {depth}")
    keys = pc.replace_substring_regex(uris, _GENERIC.format(d=depth), r"\1")
    # longest input first, so a nested input (not allowed by the scan, but cheap to honour) wins
    for base in sorted({i.rstrip("/") for i in inputs if i}, key=len, reverse=True):
        pattern = f"(?s)^({_re2_escape(base)}/(?:[^/]*/){{0,{depth}}}).*$"
        under = pc.match_substring_regex(uris, f"^{_re2_escape(base)}/")
        keys = pc.if_else(under, pc.replace_substring_regex(uris, pattern, r"\1"), keys)
    return keys


# scheme://bucket/ (s3, gs, az, abfs) + up to d components, or / + up to d components of a local path
_GENERIC = r"(?s)^((?:[a-z][a-z0-9+.-]*://[^/]+/|/)(?:[^/]*/){{0,{d}}}).*$"


def _re2_escape(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}-])", r"\\\1", text)


def score_edges(ds: pads.Dataset, score: str, id_quantiles: Sequence[float] | None,
                threshold: float | None = None, bins: int = N_BINS) -> np.ndarray | None:
    """Fixed bin edges for ``score``: the held-out ID range (0.1–99.9%) and the threshold, widened to the
    scanned min/max from the Parquet footers but by at most twice the ID span on either side."""
    lo_s, hi_s = _footer_range(ds, score)
    finite = [float(v) for v in (id_quantiles or ()) if v is not None and np.isfinite(v)]
    if len(finite) >= 3:
        q = np.asarray(finite)
        lo, hi = float(np.quantile(q, 0.001)), float(np.quantile(q, 0.999))
    elif lo_s is not None:
        lo, hi = lo_s, hi_s
    else:
        return None
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    span = max(hi - lo, 1e-6 * max(1.0, abs(hi)))
    if lo_s is not None:
        lo, hi = max(min(lo, lo_s), lo - 2 * span), min(max(hi, hi_s), hi + 2 * span)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _footer_range(ds: pads.Dataset, column: str) -> tuple[float | None, float | None]:
    lo, hi = None, None
    try:
        for frag in ds.get_fragments():
            for rg in frag.row_groups:
                st = (rg.statistics or {}).get(column)
                if not st or st.get("min") is None or st.get("max") is None:
                    continue
                a, b = float(st["min"]), float(st["max"])
                if np.isfinite(a):
                    lo = a if lo is None else min(lo, a)
                if np.isfinite(b):
                    hi = b if hi is None else max(hi, b)
    except (AttributeError, OSError, ValueError):  # no footer statistics: the ID range alone sets the bins
        return None, None
    return lo, hi


def collect(ds: pads.Dataset, *, inputs: Sequence[str], depth: int = 1,
            edges: Mapping[str, np.ndarray] | None = None, max_failures: int = MAX_FAILURES,
            batch_size: int = 65_536, quality: bool = True) -> Collected:
    """Fold the whole run into :class:`Collected` in one pass of record batches (see the module docstring)."""
    edges = dict(edges or {})
    names = set(ds.schema.names)
    scores = [s for s in edges if s in names]
    quality = quality and QUALITY_COLUMN in names
    cols = ["uri", "status", "error", "flagged", *scores, *([QUALITY_COLUMN] if quality else [])]
    out = Collected(histograms={s: Histogram(s, e, np.zeros(len(e) - 1, np.int64)) for s, e in edges.items()
                                if s in names}, quality=QualityCounts() if quality else None)
    for batch in iter_batches(ds, columns=cols, batch_size=batch_size):
        if batch.num_rows == 0:
            continue
        out.rows += batch.num_rows
        status = batch.column("status")
        ok = pc.equal(status, "ok")
        t = pa.table({"key": prefix_keys(batch.column("uri"), inputs, depth),
                      "ok": pc.cast(ok, pa.int64()),
                      "flagged": pc.cast(pc.fill_null(batch.column("flagged"), False), pa.int64()),
                      "err": pc.cast(pc.invert(ok), pa.int64())})
        agg = t.group_by("key").aggregate([("ok", "count"), ("ok", "sum"), ("flagged", "sum"), ("err", "sum")])
        for key, n, s, f, e in zip(*(agg.column(c).to_pylist() for c in
                                     ("key", "ok_count", "ok_sum", "flagged_sum", "err_sum"))):
            st = out.prefixes.setdefault(key, PrefixStats())
            st.objects += n
            st.scored += s
            st.flagged += f
            st.errors += e
        for s in scores:
            h = out.histograms[s]
            v = np.asarray(batch.column(s).to_numpy(zero_copy_only=False), dtype=np.float64)
            v = v[np.isfinite(v)]
            h.below += int((v < h.edges[0]).sum())
            h.above += int((v > h.edges[-1]).sum())
            h.counts += np.histogram(v, bins=h.edges)[0]
        if out.quality is not None:
            out.quality.add(batch.column(QUALITY_COLUMN))
        failed = batch.filter(pc.invert(ok))
        out.failures_total += failed.num_rows
        room = max_failures - len(out.failures)
        if room > 0 and failed.num_rows:
            out.failures += failed.slice(0, room).select(["uri", "status", "error"]).to_pylist()
    out.failures.sort(key=lambda r: (r["status"], r["uri"]))
    return out


def prefix_counts(ds: pads.Dataset, *, inputs: Sequence[str], depth: int = 1) -> dict[str, PrefixStats]:
    """Only the per-prefix counts (for the previous run, in drift)."""
    return collect(ds, inputs=inputs, depth=depth, max_failures=0, quality=False).prefixes
