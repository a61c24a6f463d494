"""A scan run's records, typed once (SPEC §11): the feed row, the chunk marker and the run summary.

They follow the data: the write stage emits one :class:`FeedRow` per part file (it crosses Ray Data as an
Arrow batch, :data:`FEED_SCHEMA`); the driver folds a chunk's feed rows into a :class:`ChunkMarker`
(``runs/<run_id>/chunks/c<n>.json``) once the chunk is complete; the run's counts come from the markers
into a :class:`RunSummary` (``runs/<run_id>/summary.json``), which everything after the scan reads back
through :func:`parse_summary`.

The JSON keeps the keys it always had, so external readers of ``summary.json`` and of the markers are not
affected; unknown keys are kept (a later version's fields survive a round trip). Formats:

- **2** (this version): ``summary_format`` / ``marker_format`` are present.
- **1** (written before the field existed, possibly before ``startup_s`` and ``duplicates`` or, for
  summaries written by hand, with most keys missing) is migrated on read: the missing parts read as
  unknown (None or empty). The file is not changed.
- Anything newer is refused in one line naming the file: it needs a newer ood-audit.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from ood_audit.errors import DataError, OodAuditError, ReportError
from ood_audit.io.decode import STATUSES

SUMMARY_FORMAT = 2
MARKER_FORMAT = 2
STAGES = ("read_s", "score_s", "write_s")  # busy seconds per stage, summed over rows / files

# -- the feed row (write stage -> driver) ---------------------------------------------------------------

FEED_SCHEMA = pa.schema([
    ("chunk", pa.int32()),
    ("file", pa.string()),
    ("rows", pa.int64()),
    ("seqs", pa.list_(pa.int32())),
    *((f"n_{s}", pa.int64()) for s in STATUSES),
    ("flagged", pa.int64()),
    *((k, pa.float64()) for k in STAGES),
    ("scanned_min", pa.float64()),  # epoch seconds of the first and last scoring batch in the file
    ("scanned_max", pa.float64()),
    ("workers", pa.list_(pa.string())),
])


@dataclass(frozen=True)
class FeedRow:
    """One written part file: its chunk, the chunk positions it holds, its counts and stage seconds.

    A dataclass, not a model: it is built and read per part file on the scan's hot path, where the Arrow
    schema already fixes the types."""

    chunk: int
    file: str
    rows: int
    seqs: list[int]
    counts: dict[str, int]  # status -> rows (FEED_SCHEMA's ``n_<status>`` columns)
    flagged: int
    read_s: float
    score_s: float
    write_s: float
    scanned_min: float
    scanned_max: float
    workers: list[str]

    def _flat(self) -> dict[str, Any]:
        d = asdict(self)
        counts = d.pop("counts")
        d.update({f"n_{s}": int(counts.get(s, 0)) for s in STATUSES})
        return d


def feed_table(rows: Sequence[FeedRow]) -> pa.Table:
    """Feed rows as the Arrow table the write stage returns."""
    return pa.Table.from_pylist([r._flat() for r in rows], schema=FEED_SCHEMA)


def feed_rows(block: pa.Table) -> list[FeedRow]:
    """The feed rows of one block the driver received (:func:`feed_table`'s inverse)."""
    out = []
    for d in block.to_pylist():
        counts = {s: int(d.pop(f"n_{s}")) for s in STATUSES}
        out.append(FeedRow(counts=counts, **d))
    return out


# -- models --------------------------------------------------------------------------------------------


class _Record(BaseModel):
    # extra="allow": keys written by a later version (or by hand) are kept and written back unchanged
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class StageSeconds(_Record):
    read_s: float = 0.0
    score_s: float = 0.0
    write_s: float = 0.0


class ChunkMarker(_Record):
    """A committed chunk (``runs/<run_id>/chunks/c<n>.json``): its part files and what they hold."""

    chunk: int
    rows: int
    attempt: int
    files: list[str]
    counts: dict[str, int] = Field(default_factory=dict)
    flagged: int = 0
    seconds: StageSeconds = StageSeconds()
    workers: list[str] = Field(default_factory=list)
    committed_at: str | None = None
    marker_format: int = MARKER_FORMAT

    @classmethod
    def of_feeds(cls, chunk: int, rows: int, feeds: Iterable[FeedRow], attempt: int) -> ChunkMarker:
        """The marker of a complete chunk of ``rows`` objects from the feed rows of its part files."""
        feeds = list(feeds)
        return cls(chunk=chunk, rows=rows, attempt=attempt, files=sorted(f.file for f in feeds),
                   counts={s: int(sum(f.counts.get(s, 0) for f in feeds)) for s in STATUSES},
                   flagged=int(sum(f.flagged for f in feeds)),
                   seconds=StageSeconds(**{k: round(float(sum(getattr(f, k) for f in feeds)), 4) for k in STAGES}),
                   workers=sorted({w for f in feeds for w in f.workers}),
                   committed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


class ListingInfo(_Record):
    """How the plan was made (stored in ``plan.json``): keys listed and skipped, and how long it took."""

    listed: int | None = None
    skipped_done: int = 0
    done_set: int | None = None  # objects already done with this bundle (``--incremental``), else None
    done_set_s: float | None = None
    listing_s: float | None = None
    keys_per_s: float | None = None
    chunk_size: int | None = None


class BundleRef(_Record):
    id: str = ""
    uri: str = ""
    flag_on: list[str] = Field(default_factory=list)
    precision: str | None = None


class ChunkCounts(_Record):
    total: int = 0
    committed: int = 0


class ExecutionRecord(_Record):
    """One pipeline pass of this attempt."""

    attempt: int
    seconds: float = 0.0
    rows: int = 0
    chunks_committed: int = 0
    error: str | None = None


class Throughput(_Record):
    objects_per_s: float | None = None
    steady_objects_per_s: float | None = None
    startup_s: float | None = None  # the first pass's start until its first scored batch


class StageBusy(_Record):
    read: float | None = None
    score: float | None = None
    write: float | None = None


class Timings(_Record):
    listing: float | None = None
    scan_wall: float | None = None
    stage_busy: StageBusy = StageBusy()


class WorkerCounts(_Record):
    scoring_actors: int = 0
    nodes: int = 0


class StartupPhases(_Record):
    """Seconds per start-up phase (None: the phase did not run in this attempt)."""

    bundle_load: float | None = None
    planning: float | None = None
    ray_start: float | None = None
    actor_start: float | None = None
    first_batch: float | None = None


class DuplicateStats(_Record):
    """What the ``duplicate_of`` pass (:mod:`ood_audit.scan.duplicates`) found and did."""

    rows: int = 0               # rows whose duplicate_of is set
    within_run: int = 0         # ... to a URI of this run
    earlier_runs: int = 0       # ... to a URI an earlier run recorded
    digests_added: int = 0      # new digests recorded in the index by this run
    files_rewritten: int = 0
    unstaged_files: int = 0     # committed part files without staging (written before duplicate_of): skipped
    seconds: float = 0.0

    @field_serializer("seconds")
    def _round(self, v: float) -> float:
        return round(v, 3)


class RunSummary(_Record):
    """``runs/<run_id>/summary.json``: what one attempt of a run did, and the run's totals so far."""

    run_id: str
    run_date: str = ""
    reports: str = ""
    complete: bool = False
    bundle: BundleRef = BundleRef()
    inputs: list[str] = Field(default_factory=list)
    manifest: str | None = None
    incremental: bool = False
    objects: int | None = None
    chunks: ChunkCounts | None = None
    listing: ListingInfo = ListingInfo()
    counts: dict[str, int] = Field(default_factory=dict)  # status -> rows
    flagged: int = 0
    rows_committed: int | None = None
    rows_in_files: int | None = None
    files: int | None = None
    attempts: int | None = None
    executions: list[ExecutionRecord] = Field(default_factory=list)
    throughput: Throughput = Throughput()
    timings_s: Timings = Timings()
    workers: WorkerCounts | None = None
    config: dict[str, Any] = Field(default_factory=dict)  # the ScanConfig fields that shape the run
    quality_thresholds: dict[str, Any] | None = None  # SPEC §14: every threshold the read task used
    software: dict[str, str] = Field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    startup_s: StartupPhases | None = None
    duplicates: DuplicateStats | None = None
    summary_format: int = SUMMARY_FORMAT


# -- reading back ---------------------------------------------------------------------------------------


def migrate_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 summary in format-2 form (module docstring); format 2 passes through."""
    if "summary_format" in doc:
        return dict(doc)
    # format 1 had no other renames: its missing parts read as unknown through the models' defaults
    return {**doc, "summary_format": SUMMARY_FORMAT}


def migrate_marker(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 marker in format-2 form; format 2 passes through."""
    return dict(doc) if "marker_format" in doc else {**doc, "marker_format": MARKER_FORMAT}


def _parse(model: type[_Record], doc: Any, key: str, latest: int, migrate: Any, where: str,
           error: type[OodAuditError]) -> Any:
    if not isinstance(doc, Mapping):
        raise error(f"{where} is not a JSON object")
    version = doc.get(key, 1)
    if not isinstance(version, int) or not 1 <= version <= latest:
        raise error(f"{where} has {key} {version!r}; this ood-audit reads 1 to {latest}: use the "
                          "ood-audit release that wrote it")
    try:
        return model.model_validate(migrate(doc))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise error(f"{where} field {loc or '(top)'}: {err['msg']}; it was edited or is not ood-audit's") from None


def parse_summary(doc: Any, where: str) -> RunSummary:
    """A stored ``summary.json`` (any known format) as a :class:`RunSummary`, or a one-line ReportError."""
    return _parse(RunSummary, doc, "summary_format", SUMMARY_FORMAT, migrate_summary, where, ReportError)


def parse_marker(doc: Any, where: str) -> ChunkMarker:
    """A stored chunk marker (any known format) as a :class:`ChunkMarker`, or a one-line DataError."""
    return _parse(ChunkMarker, doc, "marker_format", MARKER_FORMAT, migrate_marker, where, DataError)
