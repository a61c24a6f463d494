"""What a scan attempt did, as its :class:`~ood_audit.store.records.RunSummary` (SPEC §11): counts from the
committed markers, per-pass progress, throughput and the start-up breakdown."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from ood_audit.bundle.files import software_versions
from ood_audit.io.decode import STATUSES
from ood_audit.io.fs import S3Config
from ood_audit.store.records import (
    STAGES,
    BundleRef,
    ChunkCounts,
    DuplicateStats,
    ExecutionRecord,
    RunSummary,
    StageBusy,
    StartupPhases,
    Throughput,
    Timings,
    WorkerCounts,
)
from ood_audit.store.schema import count_rows

if TYPE_CHECKING:
    from ood_audit.scan.driver import ScanContext


@dataclass
class PassStats:
    """One pipeline pass as the driver saw it."""

    attempt: int
    started: float = field(default_factory=time.perf_counter)
    started_epoch: float = field(default_factory=time.time)
    first_scored: float | None = None  # epoch seconds of the first scoring batch
    first_feed: float | None = None    # perf_counter when the driver saw the first written part file
    rows: int = 0
    scored: list[tuple[float, int]] = field(default_factory=list)  # (epoch s of a file's last scoring, its rows)
    committed: int = 0
    error: str | None = None
    seconds: float = 0.0

    def progress(self) -> list[tuple[float, int]]:
        """(epoch seconds, rows scored by then), from the rows' scoring times."""
        out, total = [], 0
        for t, n in sorted(self.scored):
            total += n
            out.append((t, total))
        return out


def steady_window(progress: list[tuple[float, int]], lo: float, hi: float) -> tuple[float, float, int] | None:
    """(start, end, rows scored between) while the scored rows went from ``lo`` to ``hi`` of an attempt's
    rows; None when the progress is too short to tell."""
    if len(progress) < 3 or progress[-1][1] == 0:
        return None
    t = np.array([p[0] for p in progress])
    rows = np.array([p[1] for p in progress])
    i, j = int(np.searchsorted(rows, lo * rows[-1])), int(np.searchsorted(rows, hi * rows[-1]))
    if j <= i or t[j] <= t[i]:
        return None
    return float(t[i]), float(t[j]), int(rows[j] - rows[i])


def steady_rate(progress: list[tuple[float, int]], lo: float = 0.2, hi: float = 0.9) -> float | None:
    """Objects/s while the scored rows went from ``lo`` to ``hi`` of an attempt's rows: the pipeline's rate
    with start-up (actors loading, the first batches) and the drain at the end left out."""
    window = steady_window(progress, lo, hi)
    return None if window is None else round(window[2] / (window[1] - window[0]), 2)


def rows_progress(output: str, *, s3: S3Config | None = None) -> list[tuple[float, int]]:
    """(epoch s, rows scored so far) of the reports under ``output``, from their rows' own times (``scanned_at``,
    one per scoring batch): finer than a pass's progress, which has one point per part file, too few for a run
    of a few hundred objects (``ood-audit plan``'s sample) or of one chunk (a benchmark at the defaults)."""
    from ood_audit.store.schema import open_reports

    ds = open_reports(output, s3=s3)
    if ds is None:
        return []
    times = sorted(x.timestamp() for x in ds.to_table(columns=["scanned_at"]).column("scanned_at").to_pylist()
                   if x is not None)
    return [(x, i + 1) for i, x in enumerate(times)]


def rows_steady_rate(output: str, *, s3: S3Config | None = None, lo: float = 0.2, hi: float = 0.9) -> float | None:
    """:func:`steady_rate` of :func:`rows_progress`."""
    return steady_rate(rows_progress(output, s3=s3), lo, hi)


def startup_phases(phases: dict[str, float], passes: list[PassStats]) -> StartupPhases:
    """Seconds per start-up phase: the driver's bundle load, planning (ledger, listing, plan) and Ray start, then
    for the first pass the actors' start (pool up and bundle loaded, until the first batch is scored) and the
    first batch (until its part file is written and reported to the driver)."""
    first = passes[0] if passes else None
    return StartupPhases(
        **{k: round(phases[k], 3) if k in phases else None for k in ("bundle_load", "planning", "ray_start")},
        actor_start=(round(first.first_scored - first.started_epoch, 3)
                     if first is not None and first.first_scored is not None else None),
        first_batch=(round(first.first_feed - first.started, 3)
                     if first is not None and first.first_feed is not None else None))


def build_summary(ctx: ScanContext, passes: list[PassStats], *, startup: StartupPhases,
                  duplicates: DuplicateStats | None) -> RunSummary:
    """The attempt's summary: the run's totals from its committed markers, this attempt's passes."""
    import ray

    cfg, plan, markers, bundle = ctx.cfg, ctx.plan, ctx.markers, ctx.bundle
    files = [f for m in markers.values() for f in m.files]
    busy = {k: round(sum(getattr(m.seconds, k) for m in markers.values()), 3) for k in STAGES}
    workers = sorted({w for m in markers.values() for w in m.workers})
    rows_now = sum(e.rows for e in passes)
    wall = sum(e.seconds for e in passes)
    first = next((e for e in passes if e.first_scored is not None), None)
    steady = max((steady_rate(e.progress()) for e in passes), default=None, key=lambda r: r or 0)
    identity = ctx.run_doc["identity"]
    return RunSummary(
        run_id=ctx.run_id,
        run_date=ctx.run_date,
        reports=ctx.partition,
        complete=len(markers) == len(plan.chunk_rows),
        bundle=BundleRef(id=bundle.id, uri=bundle.uri, flag_on=list(bundle.info.thresholds.flag_on),
                         precision=bundle.info.precision.activations),
        inputs=identity["inputs"],
        manifest=identity["manifest"],
        incremental=cfg.incremental,
        objects=plan.objects,
        chunks=ChunkCounts(total=len(plan.chunk_rows), committed=len(markers)),
        listing=plan.info,
        counts={s: sum(m.counts.get(s, 0) for m in markers.values()) for s in STATUSES},
        flagged=sum(m.flagged for m in markers.values()),
        rows_committed=sum(m.rows for m in markers.values()),
        rows_in_files=count_rows(ctx.partition, files, s3=cfg.s3) if files else 0,
        files=len(files),
        attempts=len(ctx.run_doc["attempts"]),
        executions=[ExecutionRecord(attempt=e.attempt, seconds=round(e.seconds, 2), rows=e.rows,
                                    chunks_committed=e.committed, error=e.error) for e in passes],
        throughput=Throughput(
            objects_per_s=round(rows_now / wall, 2) if wall > 0 else None,
            steady_objects_per_s=steady,
            startup_s=round(first.first_scored - first.started_epoch, 2) if first is not None else None),
        timings_s=Timings(listing=plan.info.listing_s, scan_wall=round(wall, 2),
                          stage_busy=StageBusy(read=busy["read_s"], score=busy["score_s"], write=busy["write_s"])),
        workers=WorkerCounts(scoring_actors=len(workers), nodes=len({w.split(":")[0] for w in workers})),
        config={**cfg.reported(), "slice_rows": plan.slice_rows},  # the effective one (the default is sized)
        quality_thresholds=ctx.quality.model_dump(),  # SPEC §14: every threshold the read task used
        software={**software_versions(), "ray": ray.__version__},
        created_at=ctx.run_doc.get("created_at"),
        started_at=ctx.started_at.isoformat(timespec="seconds"),
        ended_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        startup_s=startup,
        duplicates=duplicates)
