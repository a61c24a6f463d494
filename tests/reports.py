"""Constructed scan runs for exports, drift and report tests: real part files and summaries, laid out exactly
as the scan writes them, with rows whose rates and scores the test chooses."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa

from ood_audit.io.fs import S3Config, write_bytes
from ood_audit.io.uri import join_uri
from ood_audit.store.schema import SPEC_SCORES, part_name, partition_uri, report_schema, write_part
from ood_audit.store.records import ChunkMarker
from ood_audit.store.runs import MARKERS_DIR, RUN_JSON, SUMMARY_JSON, run_dir

BASE_TIME = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
FORMATS = {"featurenorm", "csd"}


def row(uri: str, *, status: str = "ok", pct: float | None = 50.0, flagged: bool | None = None,
        pred_class: int = 0, csd_view: int = 4, etag: str = "e1", error: str | None = None,
        pct_by_score: Mapping[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """One report row; ``pct`` is every percentile unless ``pct_by_score`` names some."""
    ok = status == "ok"
    r: dict[str, Any] = {"uri": uri, "etag": etag, "size_bytes": 100, "status": status,
                         "error": None if ok else (error or f"{status}: constructed"), "width": 32, "height": 32}
    for s in SPEC_SCORES:
        p = (pct_by_score or {}).get(s, pct)
        r[s] = (p - 50.0) / 10.0 if ok and p is not None else None
        r[f"pct_{s}"] = p if ok else None
    if ok:
        r["csd_view"], r["pred_class"] = csd_view, pred_class
        r["knn_nn"], r["knn_nn_dist"] = [0, 1, 2], [0.1, 0.2, 0.3]
        fl = flagged if flagged is not None else (pct is not None and pct < 5.0)
        r["flagged"] = fl
        r["flag_reasons"] = ["featurenorm"] if fl else []
    r.update(extra)
    return r


def commit_run(output: str, run_id: str, run_date: str, files: Sequence[tuple[str, int]], *,
               bundle_id: str = "b" * 32, s3: S3Config | None = None) -> None:
    """What the scan writes to commit part files: ``run.json``, then one marker per (file, rows), chunk i."""
    doc = {"ledger_version": 1, "run_id": run_id, "run_date": run_date, "identity": {"bundle_id": bundle_id},
           "attempts": []}
    write_bytes(join_uri(run_dir(output, run_id), RUN_JSON), json.dumps(doc).encode(), s3=s3)
    for chunk, (name, rows) in enumerate(files):
        marker = ChunkMarker(chunk=chunk, rows=rows, attempt=1, files=[name])
        write_bytes(join_uri(run_dir(output, run_id), MARKERS_DIR, f"c{chunk:06d}.json"),
                    json.dumps(marker.to_json()).encode(), s3=s3)


def write_run(output: str, run_id: str, rows: Sequence[Mapping[str, Any]], *, bundle_id: str = "b" * 32,
              bundle_uri: str = "", day: int = 0, s3: S3Config | None = None, inputs: Sequence[str] = (),
              rows_per_file: int = 1000, summary: Mapping[str, Any] | None = None) -> str:
    """Write ``rows`` as run ``run_id`` created ``day`` days after :data:`BASE_TIME`; returns its partition."""
    created = BASE_TIME + timedelta(days=day)
    run_date = f"{created:%Y-%m-%d}"
    schema = report_schema()
    partition = partition_uri(output, run_date)
    files = []
    for chunk, start in enumerate(range(0, len(rows), rows_per_file)):  # no rows, no part files
        part = rows[start:start + rows_per_file]
        cols = {f.name: [r.get(f.name) for r in part] for f in schema}
        cols["run_id"] = [run_id] * len(part)
        cols["bundle_id"] = [bundle_id] * len(part)
        cols["scanned_at"] = [created] * len(part)
        name = part_name(run_id, chunk, 1, "d0")
        write_part(pa.Table.from_pydict(cols, schema=schema), join_uri(partition, name), s3=s3)
        files.append((name, len(part)))
    commit_run(output, run_id, run_date, files, bundle_id=bundle_id, s3=s3)
    counts = {s: sum(r.get("status", "ok") == s for r in rows)
              for s in ("ok", "decode_error", "missing", "too_large", "unsupported")}
    doc = {"run_id": run_id, "run_date": run_date, "reports": partition, "complete": True,
           "bundle": {"id": bundle_id, "uri": bundle_uri}, "inputs": list(inputs), "objects": len(rows),
           "counts": counts, "flagged": sum(bool(r.get("flagged")) for r in rows),
           "throughput": {"objects_per_s": 100.0, "steady_objects_per_s": 120.0, "startup_s": 3.0},
           "timings_s": {"listing": 0.5, "scan_wall": len(rows) / 100.0,
                         "stage_busy": {"read": 1.0, "score": 2.0, "write": 0.5}},
           "created_at": created.isoformat(timespec="seconds"), "started_at": created.isoformat(timespec="seconds"),
           "ended_at": (created + timedelta(minutes=5)).isoformat(timespec="seconds"), **(summary or {})}
    write_bytes(join_uri(run_dir(output, run_id), SUMMARY_JSON), json.dumps(doc).encode(), s3=s3)
    return partition
