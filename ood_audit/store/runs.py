"""Reading finished scans back (SPEC §11): the runs an output root holds, their summaries, and their rows.

Everything after the scan (exports, the HTML report, notebooks) starts here, so it reads a run the one way:

- A run is known by ``<output>/runs/<run_id>/summary.json``, written at the end of every attempt that
  finishes, and parsed once here into a :class:`~ood_audit.store.records.RunSummary` (older formats
  through its migration). Runs are ordered by the start of their first attempt (``created_at``), then by id; the *latest*
  run is the last of that order, and a run's *previous* run is the one just before it.
- A run's rows are exactly the part files its commit markers (``runs/<run_id>/chunks/*.json``) name, in
  its own ``run_date`` partition (:func:`committed_parts`, the one home of "the committed part files of a
  run", used by every reader: this module, the incremental scan's done-set, the exports, the report and
  its drift). A part file no marker names (a crashed attempt's leftover that no sweep removed yet) is
  never read: it may hold rows of a chunk that was never completed. Reading one run never lists or opens
  another's files, however many nights the root holds.
- Every part file records ``ood_audit.report_format`` in its schema metadata. A version this code does not
  know is refused with one line, rather than read with silently missing or misread columns.
- Rows are read with column projection and filters pushed down to pyarrow's dataset scanner, and the
  most anomalous rows are chosen by :func:`most_anomalous`, which streams record batches and keeps only
  the current best ``n``: memory stays bounded by ``n`` plus one batch for a run of any size.

*Anomaly* is SPEC §12's: 1 − (the flagging score's percentile against held-out ID)/100, where the flagging
score is the ``flag_on`` score with the lowest percentile (the flag fires when any of them is low).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from ood_audit.errors import ReportError
from ood_audit.io.fs import S3Config, read_bytes, resolve, subdirectories
from ood_audit.io.uri import join_uri
from ood_audit.store.records import ChunkMarker, RunSummary, parse_marker, parse_summary
from ood_audit.store.schema import (
    PARTITION_KEY,
    SUPPORTED_REPORT_FORMATS,
    partition_uri,
    report_schema,
)

RUNS_DIR = "runs"
SUMMARY_JSON = "summary.json"
RUN_JSON = "run.json"
MARKERS_DIR = "chunks"
FORMAT_KEY = b"ood_audit.report_format"
DEFAULT_FLAG_ON = ("featurenorm", "csd")  # calibration's default, for summaries that predate ``flag_on``


def run_dir(output: str, run_id: str) -> str:
    """``<output>/runs/<run_id>``: a run's own state (plan, markers, summary)."""
    return join_uri(output, RUNS_DIR, run_id)


def run_ids(output: str, *, s3: S3Config | None = None) -> list[str]:
    """Every run directory under ``output`` (finished or not), sorted by id (which sorts by start time)."""
    return subdirectories(join_uri(output, RUNS_DIR), s3)


def _json(uri: str, s3: S3Config | None) -> dict[str, Any] | None:
    try:
        return json.loads(read_bytes(uri, s3=s3))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"{uri} is not valid JSON: {exc}") from None


def read_markers(output: str, run_id: str, *, s3: S3Config | None = None) -> dict[int, ChunkMarker]:
    """Every committed chunk's marker of one run, by chunk number."""
    base = join_uri(run_dir(output, run_id), MARKERS_DIR)
    fs, path = resolve(base, s3)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json"))
    uris = [join_uri(base, n) for n in names]
    with ThreadPoolExecutor(max_workers=16) as pool:
        docs = list(pool.map(lambda u: _json(u, s3), uris))
    markers = (parse_marker(d, uri) for d, uri in zip(docs, uris) if d is not None)
    return {m.chunk: m for m in markers}


@dataclass(frozen=True)
class CommittedParts:
    """The part files one run committed (named by its markers), and what its ``run.json`` says of it."""

    run_id: str
    partition: str
    names: tuple[str, ...]
    bundle_id: str | None  # the bundle the run was started with (run.json), None when it predates it

    @property
    def uris(self) -> list[str]:
        return [join_uri(self.partition, n) for n in self.names]


def committed_parts(output: str, run_id: str, *, s3: S3Config | None = None,
                    run_date: str | None = None) -> CommittedParts | None:
    """The committed part files of ``run_id`` (module docstring); None when the run never started
    (no ``run.json``). ``run_date`` saves reading ``run.json`` when the caller knows it."""
    doc = _json(join_uri(run_dir(output, run_id), RUN_JSON), s3)
    if doc is None and run_date is None:
        return None
    run_date = run_date or str(doc["run_date"])  # type: ignore[index]
    bundle = ((doc or {}).get("identity") or {}).get("bundle_id")
    names = sorted({f for m in read_markers(output, run_id, s3=s3).values() for f in m.files})
    return CommittedParts(run_id, partition_uri(output, run_date), tuple(names), bundle)


def all_committed_parts(output: str, *, s3: S3Config | None = None, bundle_id: str | None = None,
                        exclude_run: str | None = None) -> list[CommittedParts]:
    """:func:`committed_parts` of every run under ``output`` with any (only ``bundle_id``'s when given),
    stopped and unfinished runs included: a committed chunk is final whatever happened to its run."""
    ids = [r for r in run_ids(output, s3=s3) if r != exclude_run]
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda r: committed_parts(output, r, s3=s3), ids))
    return [p for p in found if p is not None and p.names and (bundle_id is None or p.bundle_id in (None, bundle_id))]


def parts_dataset(parts: Sequence[CommittedParts], *, s3: S3Config | None = None,
                  schema: pa.Schema | None = None) -> pads.Dataset | None:
    """The given committed part files as one dataset (no ``run_date`` column); None when there are none.
    Without ``schema`` the first file's is used and its report format checked."""
    parts = [p for p in parts if p.names]
    if not parts:
        return None
    fs, paths = None, []
    for p in parts:
        fs, path = resolve(p.partition, s3)
        paths += [f"{path}/{n}" for n in p.names]
    ds = pads.dataset(paths, format="parquet", filesystem=fs, schema=schema)
    if schema is None:
        check_format(ds.schema, parts[0].uris[0])
    return ds


@dataclass(frozen=True)
class RunInfo:
    """One finished (or partly finished) scan run, from its ``summary.json``."""

    output: str
    run_id: str
    run_date: str
    bundle_id: str
    bundle_uri: str
    complete: bool
    started_at: str
    summary: RunSummary

    @property
    def flag_on(self) -> list[str]:
        """The scores whose union threshold flags a row (from the bundle, recorded in the summary)."""
        return list(self.summary.bundle.flag_on or DEFAULT_FLAG_ON)

    @property
    def partition(self) -> str:
        return partition_uri(self.output, self.run_date)


def list_runs(output: str, *, s3: S3Config | None = None) -> list[RunInfo]:
    """Every run under ``output`` that has a summary, oldest first (see the module docstring)."""
    ids = run_ids(output, s3=s3)

    def load(run_id: str) -> RunInfo | None:
        uri = join_uri(run_dir(output, run_id), SUMMARY_JSON)
        doc = _json(uri, s3)
        return None if doc is None else run_info(output, parse_summary(doc, uri))

    with ThreadPoolExecutor(max_workers=16) as pool:
        runs = [r for r in pool.map(load, ids) if r is not None]
    return sorted(runs, key=lambda r: (r.started_at, r.run_id))


def find_run(output: str, run_id: str | None = None, *, s3: S3Config | None = None,
             runs: list[RunInfo] | None = None) -> RunInfo:
    """The run ``run_id`` under ``output`` (the latest when None). ``ReportError`` when there is none.
    ``runs`` is :func:`list_runs`' answer when the caller already has it."""
    runs = list_runs(output, s3=s3) if runs is None else runs
    if not runs:
        raise ReportError(f"no scan runs under {output} (no {RUNS_DIR}/<run_id>/{SUMMARY_JSON}); "
                          "run `ood-audit scan --output` there first")
    if run_id is None:
        return runs[-1]
    for run in runs:
        if run.run_id == run_id:
            return run
    known = ", ".join(r.run_id for r in runs[-5:])
    raise ReportError(f"unknown --run-id {run_id!r} under {output}; latest runs: {known}")


def previous_run(output: str, run: RunInfo, *, s3: S3Config | None = None,
                 runs: list[RunInfo] | None = None) -> RunInfo | None:
    """The run just before ``run`` on the same output root, or None for the first."""
    runs = list_runs(output, s3=s3) if runs is None else runs
    ids = [r.run_id for r in runs]
    i = ids.index(run.run_id) if run.run_id in ids else len(runs)
    return runs[i - 1] if i > 0 else None


def run_dataset(run: RunInfo, *, s3: S3Config | None = None) -> pads.Dataset:
    """The run's committed part files as one dataset (no ``run_date`` column). Refuses unknown report formats."""
    parts = committed_parts(run.output, run.run_id, s3=s3, run_date=run.run_date)
    ds = parts_dataset([parts] if parts is not None else [], s3=s3)
    if ds is None and not run.summary.objects:
        # A night with nothing new (an incremental scan that skipped everything) has no rows: an empty
        # report, not an error.
        return pads.dataset(report_schema().empty_table())
    if ds is None:
        raise ReportError(f"run {run.run_id} has no committed report files under {run.partition}")
    return ds


def check_format(schema: pa.Schema, where: str) -> str:
    """The report format version in ``schema``'s metadata; ``ReportError`` unless this code reads it."""
    version = (schema.metadata or {}).get(FORMAT_KEY, b"").decode("utf-8", "replace")
    if version not in SUPPORTED_REPORT_FORMATS:
        raise ReportError(f"{where}: report format {version or '(none)'!r} is not one this version reads "
                          f"({', '.join(SUPPORTED_REPORT_FORMATS)}); use the ood-audit release that wrote it")
    return version


def load_report(uri: str, run_id: str | None = None, *, columns: Sequence[str] | None = None,
                filter: Any = None, s3: S3Config | None = None) -> pa.Table:
    """One run's report rows as a pyarrow Table (``.to_pandas()`` for notebooks).

    ``uri`` is the scan's output root (local or ``s3://``); ``run_id=None`` means the latest run.
    ``columns`` and ``filter`` (a ``pyarrow.compute`` expression) are pushed down to the scanner.
    """
    s3 = s3 if s3 is not None else S3Config.from_env()
    ds = run_dataset(find_run(uri, run_id, s3=s3), s3=s3)
    missing = [c for c in columns or () if c not in ds.schema.names]
    if missing:
        raise ReportError(f"unknown report column(s) {', '.join(missing)}; columns: {', '.join(ds.schema.names)}")
    return ds.to_table(columns=list(columns) if columns is not None else None, filter=filter)


def anomaly(table: pa.Table | pa.RecordBatch, flag_on: Sequence[str]) -> np.ndarray:
    """SPEC §12's anomaly in [0, 1] per row (NaN where no ``flag_on`` percentile is known)."""
    cols = [f"pct_{s}" for s in flag_on if f"pct_{s}" in table.schema.names]
    if not cols:
        return np.full(table.num_rows, np.nan)
    pct = np.stack([np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64) for c in cols])
    low = np.where(np.isnan(pct), np.inf, pct).min(axis=0)  # nulls read as NaN: ignored
    low[np.isinf(low)] = np.nan                              # no percentile known at all
    return np.clip(1.0 - low / 100.0, 0.0, 1.0)


def iter_batches(ds: pads.Dataset, *, columns: Sequence[str], filter: Any = None,
                 batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Record batches of the requested columns (only what is needed is read), file by file with read-ahead
    1: the scanner's default read-ahead holds several files' batches at once, so its memory grows with the
    number of part files, while this stays flat."""
    for fragment in ds.get_fragments():
        yield from fragment.to_batches(schema=ds.schema, columns=list(columns), filter=filter,
                                       batch_size=batch_size, batch_readahead=1, fragment_readahead=1)


def most_anomalous(ds: pads.Dataset, n: int, flag_on: Sequence[str], *, columns: Sequence[str],
                   filter: Any = None) -> pa.Table:
    """The ``n`` rows with the highest anomaly (ties: by ``uri``), highest first, with an ``anomaly`` column.

    Streams the dataset and keeps the best ``n`` so far, so memory is O(n + one batch) for any run size.
    Rows without a known anomaly (not scored) are never chosen.
    """
    needed = list(dict.fromkeys([*columns, "uri", *(f"pct_{s}" for s in flag_on if f"pct_{s}" in ds.schema.names)]))
    best: pa.Table | None = None
    for batch in iter_batches(ds, columns=needed, filter=filter):
        t = pa.Table.from_batches([batch])
        t = t.append_column("anomaly", pa.array(anomaly(t, flag_on), pa.float64()))
        t = t.filter(pc.is_finite(t.column("anomaly")))
        best = t if best is None else pa.concat_tables([best, t])
        if best.num_rows > n:
            best = _top(best, n)
    if best is None:
        schema = ds.schema
        empty = pa.schema([schema.field(c) for c in needed]).append(pa.field("anomaly", pa.float64()))
        return empty.empty_table()
    return _top(best, n)


def _top(t: pa.Table, n: int) -> pa.Table:
    order = pc.sort_indices(t, sort_keys=[("anomaly", "descending"), ("uri", "ascending")])
    return t.take(order[:n])


def run_info(output: str, summary: RunSummary) -> RunInfo:
    """The run a summary describes, under ``output``."""
    return RunInfo(output=output, run_id=summary.run_id, run_date=summary.run_date, bundle_id=summary.bundle.id,
                   bundle_uri=summary.bundle.uri, complete=summary.complete,
                   started_at=summary.created_at or summary.started_at or "", summary=summary)


__all__ = ["PARTITION_KEY", "CommittedParts", "RunInfo", "all_committed_parts", "anomaly", "check_format",
           "committed_parts", "find_run", "iter_batches", "list_runs", "load_report", "most_anomalous",
           "parts_dataset", "previous_run", "read_markers", "run_dataset", "run_dir", "run_ids", "run_info"]
