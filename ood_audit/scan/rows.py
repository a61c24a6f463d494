"""Report rows (SPEC §11): scores, percentiles and flags from the bundle, assembled into the fixed schema.

:class:`RowBuilder` is pure (numpy in, pyarrow out) so it is tested without Ray. The scoring actor calls
it once per batch; rows whose status is not ``ok`` pass through with null scores.

Besides the report columns, every table carries the internal columns in :data:`INTERNAL_COLUMNS`
(chunk, position in the chunk, stage timings, the worker), which the sink stage consumes and never writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_audit.bundle.schema import BundleMeta, RowTables
from ood_audit.flagging.neardup import near_duplicate_rows
from ood_audit.flagging.perclass import per_class_flags
from ood_audit.flagging.thresholds import flags, percentile
from ood_audit.store.schema import QUALITY_COLUMN, report_schema, score_columns

CHUNK, SEQ, READ_S, SCORE_S, WORKER = "_chunk", "_seq", "_read_s", "_score_s", "_worker"
PIXELS = "pixels"  # the read stage's uint8 N×H×W×3 column; consumed by the scoring actor
DIGEST, QUALITY = "content_sha256", QUALITY_COLUMN  # the read stage's per-object findings (SPEC §14)
INTERNAL_COLUMNS = (CHUNK, SEQ, READ_S, SCORE_S, WORKER)
INTERNAL_SCHEMA = pa.schema([
    (CHUNK, pa.int32()), (SEQ, pa.int32()), (READ_S, pa.float32()), (SCORE_S, pa.float32()),
    (WORKER, pa.string()),
])


class PercentileTable:
    """``percentile(values, table)`` for one fixed held-out quantile table, with its knots computed once.

    :func:`~ood_audit.flagging.thresholds.percentile` is linear interpolation between its knots (the
    distinct quantiles) and their levels; the levels are taken from that function itself, so both agree
    exactly while each batch costs one ``np.interp``.
    """

    def __init__(self, table: Sequence[float]) -> None:
        self.table = np.asarray(table, dtype=np.float64)
        self.knots = np.unique(self.table)
        self.levels = percentile(self.knots, self.table) if self.knots.size > 1 else None

    def __call__(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if self.levels is None:
            return percentile(v, self.table)
        return np.interp(v, self.knots, self.levels, left=0.0, right=100.0)


class RowBuilder:
    """Turns per-object outcomes and per-image scores into report rows for one run and bundle.

    Args:
        meta: the bundle's typed metadata (its thresholds and held-out quantiles are used), or a partial
            ``meta``-shaped mapping (:class:`~ood_audit.bundle.schema.RowTables`).
        bundle_id, run_id: written into every row.
        score_names: the scorer's score names; see :func:`~ood_audit.store.schema.report_schema`.
        bank_uris: the kNN-bank rows' source URIs, in bank order (the bundle's ``knn_sources.parquet``,
            :meth:`~ood_audit.bundle.files.Bundle.bank_sources`). With the bundle's near-duplicate τ,
            ``near_duplicate_of_id`` is the nearest bank row's URI where its distance is under τ; without
            either, it is null.

    ``flagged`` and ``flag_reasons`` use the row's predicted class's thresholds where the bundle has
    per-class thresholds for it (:func:`~ood_audit.flagging.perclass.per_class_flags`), the global ones
    otherwise.
    """

    def __init__(self, meta: BundleMeta | Mapping[str, Any], bundle_id: str, run_id: str,
                 score_names: Sequence[str], *, bank_uris: Sequence[str] | None = None) -> None:
        self.bundle_id, self.run_id = bundle_id, run_id
        self.scores = score_columns(score_names)
        self.schema = report_schema(score_names)
        tables = RowTables.of(meta if isinstance(meta, BundleMeta) else dict(meta))
        self.per_score, self.flag, self.flag_on = dict(tables.per_score), dict(tables.flag), list(tables.flag_on)
        self.pct = {s: PercentileTable(q) for s, q in tables.quantiles.items()}
        self.per_class = tables.per_class
        self.near_dup = tables.near_duplicates.threshold if tables.near_duplicates is not None else None
        self.bank_uris = np.asarray(list(bank_uris), dtype=object) if bank_uris is not None else None

    @property
    def output_schema(self) -> pa.Schema:
        """The report schema followed by the internal columns."""
        schema = self.schema
        for field in INTERNAL_SCHEMA:
            schema = schema.append(field)
        return schema

    def build(
        self,
        batch: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray] | None,
        *,
        scanned_at: datetime | None = None,
        score_s: float = 0.0,
        worker: str = "",
    ) -> pa.Table:
        """Rows for one batch.

        ``batch`` holds the read stage's columns (``uri``, ``etag``, ``size``, ``status``, ``error``,
        ``width``, ``height``, ``content_sha256`` and ``quality_issues`` when the read stage sent them,
        and the internal ``_chunk``, ``_seq``, ``_read_s``); ``scores`` holds one
        array per score (plus ``csd_view``, ``pred_class``) for the rows with status ``ok``, in order.
        """
        n = len(batch["uri"])
        status = np.asarray(batch["status"], dtype=object)
        ok = status == "ok"
        n_ok = int(ok.sum())
        scores = scores or {}
        columns: dict[str, pa.Array] = {
            "run_id": pa.array([self.run_id] * n, pa.string()),
            "bundle_id": pa.array([self.bundle_id] * n, pa.string()),
            "uri": _strings(batch["uri"]),
            "etag": _strings(batch["etag"]),
            "size_bytes": _ints(batch["size"], pa.int64()),
            "status": _strings(status),
            "error": _strings(batch["error"]),
            "width": _ints(batch["width"], pa.int32()),
            "height": _ints(batch["height"], pa.int32()),
        }
        ok_scores = {s: np.asarray(scores[s], dtype=np.float64) for s in self.scores if s in scores and n_ok}
        for s in self.scores:
            columns[s] = _scatter(ok, ok_scores.get(s), pa.float64())
        columns["csd_view"] = _scatter(ok, scores.get("csd_view") if n_ok else None, pa.int8())
        columns["pred_class"] = _scatter(ok, scores.get("pred_class") if n_ok else None, pa.int32())
        columns["knn_nn"] = _scatter_matrix(ok, scores.get("knn_nn") if n_ok else None, pa.int32())
        columns["knn_nn_dist"] = _scatter_matrix(ok, scores.get("knn_nn_dist") if n_ok else None, pa.float32())
        for s in self.scores:
            values = self.pct[s](ok_scores[s]) if s in ok_scores and s in self.pct else None
            columns[f"pct_{s}"] = _scatter(ok, values, pa.float32())
        flagged, reasons = self._flags(ok_scores, scores.get("pred_class"), n_ok)
        columns["flagged"] = _scatter(ok, flagged, pa.bool_())
        columns["flag_reasons"] = _scatter_lists(ok, reasons)
        when = scanned_at or datetime.now(timezone.utc)
        columns["scanned_at"] = pa.array([when] * n, pa.timestamp("us", tz="UTC"))
        columns["content_sha256"] = _strings(batch[DIGEST]) if DIGEST in batch else pa.nulls(n, pa.string())
        columns["duplicate_of"] = pa.nulls(n, pa.string())  # set once the run is committed (scan.duplicates)
        columns[QUALITY] = _issue_lists(ok, batch.get(QUALITY))
        columns["near_duplicate_of_id"] = self._near_duplicates(ok, scores if n_ok else {})
        columns[CHUNK] = pa.array(np.asarray(batch[CHUNK], dtype=np.int32))
        columns[SEQ] = pa.array(np.asarray(batch[SEQ], dtype=np.int32))
        columns[READ_S] = pa.array(np.asarray(batch[READ_S], dtype=np.float32))
        columns[SCORE_S] = pa.array(np.full(n, score_s / max(n, 1), dtype=np.float32))
        columns[WORKER] = pa.array([worker] * n, pa.string())
        return pa.Table.from_pydict(columns, schema=self.output_schema)

    def empty(self) -> pa.Table:
        return self.output_schema.empty_table()

    def _flags(self, ok_scores: Mapping[str, np.ndarray], pred_class: Any,
               n_ok: int) -> tuple[np.ndarray | None, list | None]:
        if n_ok == 0:
            return None, None
        if self.per_class is not None and pred_class is not None:
            return per_class_flags(ok_scores, np.asarray(pred_class), self.per_class, self.per_score, self.flag)
        flagged, _ = flags(ok_scores, self.flag, self.flag_on)
        _, reasons = flags(ok_scores, self.per_score, [])
        return flagged, reasons

    def _near_duplicates(self, ok: np.ndarray, scores: Mapping[str, np.ndarray]) -> pa.Array:
        nn, dist = scores.get("knn_nn"), scores.get("knn_nn_dist")
        if self.near_dup is None or self.bank_uris is None or nn is None or dist is None:
            return pa.nulls(ok.size, pa.string())
        rows = near_duplicate_rows(np.asarray(dist)[:, 0], np.asarray(nn)[:, 0], self.near_dup)
        uris = np.full(ok.size, None, dtype=object)
        hit = rows >= 0
        uris[np.flatnonzero(ok)[hit]] = self.bank_uris[rows[hit]]
        return pa.array(uris.tolist(), pa.string())


def _strings(values: Any) -> pa.Array:
    """Strings with None kept null. Ray hands an all-null column over as floats (NaN): all null here."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fc":
        return pa.nulls(arr.size, pa.string())
    return pa.array([None if v is None or (isinstance(v, (float, np.floating)) and v != v) else str(v)
                     for v in arr.tolist()], pa.string())


def _ints(values: Any, type_: pa.DataType) -> pa.Array:
    """Integers where negative numbers (the read stage's "unknown") and None become null."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        arr = np.array([-1 if v is None or v != v else v for v in arr.tolist()], dtype=np.int64)
    return pa.array(arr, type_, mask=arr < 0)


def _scatter(ok: np.ndarray, values: np.ndarray | None, type_: pa.DataType) -> pa.Array:
    """Values for the ``ok`` rows placed at their positions, null elsewhere (and everywhere without values)."""
    n = ok.size
    if values is None:
        return pa.nulls(n, type_)
    values = np.asarray(values)
    if ok.all():
        return pa.array(values, type_)
    full = np.zeros(n, dtype=values.dtype)
    full[ok] = values
    return pa.array(full, type_, mask=~ok)


def _scatter_matrix(ok: np.ndarray, values: np.ndarray | None, type_: pa.DataType) -> pa.Array:
    """Rows of an [n_ok, k] matrix as lists at the ``ok`` positions, null elsewhere."""
    if values is None:
        return pa.nulls(ok.size, pa.list_(type_))
    it = iter(np.asarray(values).tolist())
    return pa.array([next(it) if flag else None for flag in ok.tolist()], pa.list_(type_))


def issue_lists(issues: Any) -> pa.Array:
    """Per-object issue lists (None: not decoded) as the ``list<string>`` column that travels between the read
    and score stages: typed explicitly, since Ray would infer ``null`` for a batch where none has an issue.
    Accepts lists, an Arrow array, or the object array of arrays Ray hands to a numpy-format stage."""
    if isinstance(issues, (pa.Array, pa.ChunkedArray)):
        return issues.cast(pa.list_(pa.string()))
    if isinstance(issues, np.ndarray) and issues.dtype.kind in "fc":  # Ray's all-null column: floats (NaN)
        return pa.nulls(issues.size, pa.list_(pa.string()))
    return pa.array([None if x is None else [str(i) for i in x] for x in issues], pa.list_(pa.string()))


def _issue_lists(ok: np.ndarray, issues: Any) -> pa.Array:
    """The read stage's issues as lists for ``ok`` rows, null elsewhere."""
    if issues is None:
        return pa.nulls(ok.size, pa.list_(pa.string()))
    return pc.if_else(pa.array(ok), issue_lists(issues), pa.nulls(ok.size, pa.list_(pa.string())))


def _scatter_lists(ok: np.ndarray, reasons: list | None) -> pa.Array:
    if reasons is None:
        return pa.nulls(ok.size, pa.list_(pa.string()))
    it = iter(reasons)
    return pa.array([list(next(it)) if flag else None for flag in ok.tolist()], pa.list_(pa.string()))
