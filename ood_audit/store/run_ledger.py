"""A scan run's own state under the output root: what it must scan (the plan) and what is done (markers).

Layout::

    <output>/runs/<run_id>/run.json              identity, run_date of the first attempt, attempts, passes
    <output>/runs/<run_id>/plan/c000000.parquet  the listing snapshot, one file per chunk (uri, etag, size)
    <output>/runs/<run_id>/plan.json             written after the last plan file: the plan is complete
    <output>/runs/<run_id>/chunks/c000000.json   commit marker: the chunk's part files and its counts
    <output>/runs/<run_id>/summary.json          written at the end of every attempt that finishes

An *attempt* is one invocation of the scan for the run (a resume is a new attempt); each attempt runs one
or more *pipeline passes* over the chunks not yet committed, numbered across the whole run. Part files
carry the number of the pass that wrote them (``a<NN>`` in their name).

Rules that make a run exactly-once (the argument is in :mod:`ood_audit.scan.driver`); the records
(feed rows, markers, the summary) are typed in :mod:`ood_audit.store.records`:

- The plan is written once, before any scoring, and never changes: a resumed run scans the objects the
  first attempt listed, in the same chunks, even if the bucket changed meanwhile. Chunk ``c`` is rows
  ``[0, n_c)`` of its plan file; a row's position there is its ``seq``.
- A chunk is *committed* only by its marker, written after all its part files exist and only when their
  positions cover ``[0, n_c)`` exactly once (:class:`ChunkTracker`).
- Before an attempt scans, and after it ends, every part file of the run that no marker names is deleted
  (:meth:`RunLedger.sweep`): leftovers of crashed attempts and of tasks that outlived their driver.
- Readers never depend on that sweep: they read only the files markers name
  (:func:`~ood_audit.store.runs.committed_parts`). :func:`sweep_output` (``ood-audit runs sweep``, and the
  start of every scan) removes the stray files of *every* run, each under that run's own lease, so a run
  still in progress is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ood_audit.errors import ConfigError, DataError
from ood_audit.io.fs import S3Config, read_bytes, resolve, subdirectories, write_bytes
from ood_audit.io.listing import LISTING_SCHEMA
from ood_audit.io.uri import join_uri
from ood_audit.scan.read import PlanSlice
from ood_audit.store.records import ChunkMarker, FeedRow, ListingInfo, RunSummary
from ood_audit.store.schema import PARTITION_KEY, delete_parts, list_parts, parse_part_name, partition_uri, reports_root
from ood_audit.store.runs import MARKERS_DIR, committed_parts, read_markers, run_dir

log = logging.getLogger(__name__)

LEASE_NAME = "lease.json"  # runs/<run_id>/lease.json: one driver per run id (the scan's, and the sweep's)
SWEEP_LEASE_TTL_S = 120.0  # held only while one run's stray files are deleted
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
LEDGER_VERSION = 1


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<6 hex>``: sortable by start time, unique without coordination."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id):
        raise ConfigError(f"--run-id {run_id!r} must be 1-64 letters, digits, '_' or '-', starting with a "
                          "letter or digit")
    return run_id


@dataclass(frozen=True)
class RunLayout:
    output: str
    run_id: str

    @property
    def run_dir(self) -> str:
        return run_dir(self.output, self.run_id)

    def file(self, *parts: str) -> str:
        return join_uri(self.run_dir, *parts)

    def plan_file(self, chunk: int) -> str:
        return self.file("plan", f"c{chunk:06d}.parquet")

    def marker(self, chunk: int) -> str:
        return self.file(MARKERS_DIR, f"c{chunk:06d}.json")


@dataclass
class Plan:
    """What a run scans: ``chunk_rows[c]`` objects in chunk ``c``, read in slices of ``slice_rows``."""

    chunk_rows: list[int]
    slice_rows: int
    info: ListingInfo = field(default_factory=ListingInfo)

    @property
    def objects(self) -> int:
        return int(sum(self.chunk_rows))


class RunLedger:
    """Reads and writes one run's state (see the module docstring)."""

    def __init__(self, layout: RunLayout, s3: S3Config | None = None,
                 fence: Callable[[], None] | None = None) -> None:
        self.layout, self.s3 = layout, s3
        self.fence = fence  # the run lease's fence (Lease.check): raises instead of a commit by a lost holder

    # -- run.json ---------------------------------------------------------------------------------------

    def open(self, identity: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
        """Start the run, or continue it: the stored identity must match (else ``ConfigError``).

        Returns ``run.json`` with this attempt appended; ``run_date`` stays the first attempt's.
        """
        now = now or datetime.now(timezone.utc)
        doc = self._read_json(self.layout.file("run.json"))
        if doc is None:
            doc = {"ledger_version": LEDGER_VERSION, "run_id": self.layout.run_id, "run_date": f"{now:%Y-%m-%d}",
                   "created_at": now.isoformat(timespec="seconds"), "identity": dict(identity), "attempts": []}
        else:
            stored = doc.get("identity", {})
            for key, value in identity.items():
                if stored.get(key) != value:
                    raise ConfigError(
                        f"--run-id {self.layout.run_id} was started with {key}={stored.get(key)!r}, not {value!r}; "
                        "resume it with the same arguments, or start a new run with another --run-id")
        doc["attempts"].append({"attempt": len(doc["attempts"]) + 1, "started_at": now.isoformat(timespec="seconds"),
                                "host": socket.gethostname(), "pid": os.getpid()})
        self._write_json(self.layout.file("run.json"), doc)
        return doc

    def save_run(self, doc: Mapping[str, Any]) -> None:
        self._write_json(self.layout.file("run.json"), doc)

    # -- plan ---------------------------------------------------------------------------------------------

    def plan(self) -> Plan | None:
        """The stored plan, or None when no attempt finished writing it."""
        doc = self._read_json(self.layout.file("plan.json"))
        if doc is None:
            return None
        return Plan([int(n) for n in doc["chunk_rows"]], int(doc["slice_rows"]),
                    ListingInfo.model_validate(doc.get("info") or {}))

    def write_plan(self, chunks: Iterable[pa.Table], *, slice_rows: int,
                   info: Callable[[], ListingInfo] | None = None) -> Plan:
        """Store the listing snapshot chunk by chunk (each table is one chunk), then ``plan.json``.

        Files of an earlier, unfinished plan are removed first. ``info()`` is called after the last chunk
        (counters filled while the listing streamed) and stored with the plan.
        """
        self._delete_dir("plan")
        rows: list[int] = []
        for chunk in chunks:
            table = chunk.select(LISTING_SCHEMA.names).cast(LISTING_SCHEMA)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, row_group_size=slice_rows)
            write_bytes(self.layout.plan_file(len(rows)), sink.getvalue().to_pybytes(), s3=self.s3)
            rows.append(table.num_rows)
        plan = Plan(rows, slice_rows, info() if info else ListingInfo())
        self._write_json(self.layout.file("plan.json"), {
            "ledger_version": LEDGER_VERSION, "chunks": len(rows), "objects": plan.objects,
            "chunk_rows": rows, "slice_rows": slice_rows, "info": plan.info.to_json()})
        return plan

    def slices(self, plan: Plan, chunks: Iterable[int]) -> list[PlanSlice]:
        out = []
        for c in chunks:
            n = plan.chunk_rows[c]
            for g, start in enumerate(range(0, n, plan.slice_rows)):
                out.append(PlanSlice(self.layout.plan_file(c), c, g, start, min(plan.slice_rows, n - start)))
        return out

    # -- markers ------------------------------------------------------------------------------------------

    def markers(self) -> dict[int, ChunkMarker]:
        """Every committed chunk's marker, by chunk number."""
        return read_markers(self.layout.output, self.layout.run_id, s3=self.s3)

    def commit(self, marker: ChunkMarker) -> None:
        if self.fence is not None:
            self.fence()
        self._write_json(self.layout.marker(marker.chunk), marker.to_json())

    # -- part files ---------------------------------------------------------------------------------------

    def sweep(self, run_date: str, markers: Mapping[int, ChunkMarker]) -> list[str]:
        """Delete this run's part files that no marker names; returns their names."""
        partition = partition_uri(self.layout.output, run_date)
        keep = {f for m in markers.values() for f in m.files}
        stray = [n for n in list_parts(partition, s3=self.s3, run_id=self.layout.run_id) if n not in keep]
        if stray:
            log.info("removing %d part file(s) of unfinished chunks of run %s", len(stray), self.layout.run_id)
            delete_parts(partition, stray, s3=self.s3)
        return stray

    def drop_broken(self, run_date: str, markers: dict[int, ChunkMarker]) -> list[int]:
        """Forget markers whose part files are gone (reports deleted by hand): those chunks are scanned again."""
        partition = partition_uri(self.layout.output, run_date)
        present = set(list_parts(partition, s3=self.s3, run_id=self.layout.run_id))
        broken = sorted(c for c, m in markers.items() if any(f not in present for f in m.files))
        for c in broken:
            log.warning("chunk %d of run %s lost part files since it was committed; scanning it again", c,
                        self.layout.run_id)
            fs, path = resolve(self.layout.marker(c), self.s3)
            fs.delete_file(path)
            del markers[c]
        return broken

    def check_parts(self, run_date: str, markers: Mapping[int, ChunkMarker]) -> None:
        """Every file the markers name exists (a marker never outlives its data)."""
        partition = partition_uri(self.layout.output, run_date)
        present = set(list_parts(partition, s3=self.s3, run_id=self.layout.run_id))
        missing = [f for m in markers.values() for f in m.files if f not in present]
        if missing:
            raise DataError(f"run {self.layout.run_id}: {len(missing)} committed part file(s) are missing from "
                            f"{partition} (e.g. {missing[0]}); they were deleted while the scan ran")

    def write_summary(self, summary: RunSummary) -> str:
        uri = self.layout.file("summary.json")
        self._write_json(uri, summary.to_json())
        return uri

    # -- helpers ------------------------------------------------------------------------------------------

    def _read_json(self, uri: str) -> dict[str, Any] | None:
        try:
            return json.loads(read_bytes(uri, s3=self.s3))
        except FileNotFoundError:
            return None

    def _write_json(self, uri: str, doc: Mapping[str, Any]) -> None:
        write_bytes(uri, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"), s3=self.s3)

    def _delete_dir(self, name: str) -> None:
        fs, path = resolve(self.layout.file(name), self.s3)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir_contents(path, missing_dir_ok=True)


@dataclass
class SweepResult:
    """What :func:`sweep_output` did: the part files it removed, and the runs it left alone (in progress)."""

    removed: list[str] = field(default_factory=list)
    busy_runs: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"removed {len(self.removed)} part file(s) that no commit marker names"]
        out += [f"  {u}" for u in self.removed]
        if self.busy_runs:
            out.append(f"left alone (a live scan holds its lease): {', '.join(self.busy_runs)}")
        return out


def sweep_output(output: str, *, s3: S3Config | None = None, skip_run: str | None = None) -> SweepResult:
    """Delete every part file under ``<output>/reports/`` that no commit marker names (module docstring).

    A file whose run has no ``run.json`` is an orphan and goes at once. Otherwise the run's lease is taken
    first (a dead or stale holder is taken over, a live one is left alone: its files may be a chunk in
    flight) and its markers are read under it. ``skip_run`` is the caller's own run (it sweeps its own).
    """
    from ood_audit.io.lease import Lease, LeaseHeld

    result = SweepResult()
    fs, root = resolve(reports_root(output), s3)
    partitions = [name for name in subdirectories(reports_root(output), s3) if name.startswith(f"{PARTITION_KEY}=")]
    by_run: dict[str, dict[str, list[str]]] = {}
    for d in partitions:
        partition = join_uri(reports_root(output), d)
        for name in list_parts(partition, s3=s3):
            run = parse_part_name(name)[0]  # type: ignore[index]  # list_parts returns part names only
            if run != skip_run:
                by_run.setdefault(run, {}).setdefault(partition, []).append(name)

    def stray(run: str, found: dict[str, list[str]]) -> dict[str, list[str]]:
        parts = committed_parts(output, run, s3=s3)
        keep = set(parts.names) if parts is not None else set()
        return {p: [n for n in names if not (parts is not None and p == parts.partition and n in keep)]
                for p, names in found.items()}

    for run, found in sorted(by_run.items()):
        if not any(stray(run, found).values()):
            continue
        layout = RunLayout(output, run)
        lease = Lease(layout.file(LEASE_NAME), SWEEP_LEASE_TTL_S, run=f"sweep-{run}"[:64], s3=s3,
                      dead_holder_is_stale=True)
        has_run = read_bytes_or_none(layout.file("run.json"), s3) is not None
        try:
            if has_run:
                lease.acquire()
        except LeaseHeld:
            result.busy_runs.append(run)
            continue
        try:
            for partition, names in stray(run, found).items():  # again, under the lease
                if names:
                    delete_parts(partition, names, s3=s3)
                    result.removed += [join_uri(partition, n) for n in names]
        finally:
            if has_run:
                lease.release()
    if result.removed:
        log.info("removed %d part file(s) that no commit marker names under %s", len(result.removed), output)
    return result


def read_bytes_or_none(uri: str, s3: S3Config | None) -> bytes | None:
    try:
        return read_bytes(uri, s3=s3)
    except FileNotFoundError:
        return None


class ChunkTracker:
    """Collects feed rows (one per written part file) and says when a chunk is complete.

    A chunk is complete when its files' positions cover ``[0, n)`` exactly once. A position seen twice
    marks the chunk *conflicted*: it is never committed by this attempt, so the next attempt deletes its
    files and scans it again.
    """

    def __init__(self, plan: Plan, attempt: int) -> None:
        self.plan, self.attempt = plan, attempt
        self._seen: dict[int, np.ndarray] = {}
        self._feeds: dict[int, list[FeedRow]] = {}
        self.conflicted: set[int] = set()

    def add(self, feed: FeedRow) -> ChunkMarker | None:
        """Record one feed row; returns the chunk's marker once the chunk is complete, else None."""
        chunk = feed.chunk
        n = self.plan.chunk_rows[chunk]
        seen = self._seen.setdefault(chunk, np.zeros(n, dtype=bool))
        seqs = np.asarray(feed.seqs, dtype=np.int64)
        if seqs.size and (seqs.min() < 0 or seqs.max() >= n):
            raise DataError(f"chunk {chunk}: positions outside [0, {n}) in {feed.file}; the plan was modified")
        if seen[seqs].any() or np.unique(seqs).size != seqs.size:
            if chunk not in self.conflicted:
                log.warning("chunk %d: rows written twice (file %s); it will be scanned again", chunk, feed.file)
            self.conflicted.add(chunk)
        seen[seqs] = True
        self._feeds.setdefault(chunk, []).append(feed)
        if chunk in self.conflicted or not seen.all():
            return None
        feeds = self._feeds.pop(chunk)
        del self._seen[chunk]
        return ChunkMarker.of_feeds(chunk, n, feeds, self.attempt)

    @property
    def pending(self) -> int:
        return len(self._seen)

