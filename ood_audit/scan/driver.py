"""``ood-audit scan``'s driver: stream objects from S3 (or local folders) through scoring actors into Parquet
reports, and commit them exactly once.

Data path (one Ray Data pipeline per attempt)::

    plan slices ──read tasks──▶ fetch + decode (CPU tasks, threads) ──▶ ScoreActor pool ──▶ write_parts tasks
         (PlanDatasource)           read.fetch_decode                    score.ScoreActor      write.write_parts
                                                                                                    │ FeedRow
    driver: ChunkTracker ◀──────────────────────────────────────────────────────────────────────────┘
            └─▶ ChunkMarker (RunLedger.commit) ─▶ RunSummary (summary.json)

Modules: :mod:`~ood_audit.scan.config` (ScanConfig), :mod:`~ood_audit.scan.pipeline` (the Ray Data graph,
actor resources), this one (the passes, commits and storage failures, around one :class:`ScanContext`),
:mod:`~ood_audit.scan.summary` (the RunSummary); the records are typed in :mod:`ood_audit.store.records`.

1. **Plan.** The listing (prefixes or a manifest; for ``--incremental`` minus what is already done, see
   :mod:`ood_audit.scan.plan`) streams page by page into fixed chunks of ``chunk_size`` objects, each
   stored as a plan file under ``runs/<run_id>/plan/``; ``plan.json`` marks the plan complete. Listing
   is done once, before scoring: it costs one request per thousand keys against one per object to read.
2. **Scan.** Read tasks take slices (row groups) of the plan files; every other stage is streaming, and
   the driver holds slice descriptors only.
3. **Commit.** The writer emits one feed row (``FeedRow``) per part file (chunk, positions, counts). The
   driver marks a chunk done by writing its ``ChunkMarker`` to ``runs/<run_id>/chunks/c<n>.json`` once the
   positions of its files cover ``[0, n)`` exactly once. Summary counts come from the markers.
4. **Finish.** Part files no marker names are deleted, the row count is checked against the footers,
   ``duplicate_of`` is set from the committed run's content digests (:mod:`ood_audit.scan.duplicates`),
   and the ``RunSummary`` is written to ``runs/<run_id>/summary.json``.

Why exactly one row per listed object, whatever fails:

- *Task retries* (a worker or node lost): Ray re-runs the same write task on the same rows; the part
  file name is a digest of those rows' positions, so the retry overwrites the file rather than adding one.
  Scoring actors are restarted by Ray Data and their tasks retried the same way.
- *A pipeline pass that fails* (Ray gives up, or the driver dies): chunks with a marker are kept.
  Everything else of the run is deleted before the next pass scans the unmarked chunks again: in the
  same process (up to ``max_attempts`` passes), or by re-running with the same ``--run-id``.
- *Duplicates that a retry could still cause* (rows written twice under different groupings) are
  caught by the position check: such a chunk is never marked, so it is deleted and scanned again.
- *Late writes by tasks that outlived their driver* are not named by any marker and are removed by the
  sweep at the end of the run.
- The plan never changes after it is written, so a resumed run covers the same objects.

When storage itself fails (``ood_audit.errors.StorageError``):

- *Before anything is written* the run refuses to start, in one line naming the endpoint, bucket and key:
  the bundle is read first, then a write probe (put and delete a small object) checks the output root,
  so a read-only or missing output fails before the listing, not after an hour of scoring.
- *An outage* (the server restarts) is ridden out by pyarrow's and boto3's own retries, with backoff, for
  ``S3Config.retry_s`` (``--storage-retry-s``). Reads of a down store never become ``missing`` rows.
- *Longer than that, or credentials revoked, or the output refusing writes* mid-run: the pass fails, no
  further pass is tried (it would fail the same way), nothing more is committed, and the run ends with
  :class:`ScanIncomplete` (exit 4). Committed chunks are kept; re-running with the same ``--run-id`` scans
  the rest exactly once, as after any failed pass.
- *Two drivers on one run id* would race on the ledger: a lease (:mod:`ood_audit.io.lease`) at
  ``runs/<run_id>/lease.json`` lets only one run; the second stops with ``LeaseHeld`` (exit 75). A lease
  whose holder is dead (its process gone on this host, or not renewed for its TTL) is taken over. The
  ledger calls the lease's fence before each commit marker, so a driver frozen or cut off past 2/3 of the
  TTL commits nothing more.

Ray Data's own checkpointing (``DataContext.checkpoint_config``, beta in 2.60) was not used: it filters
rows only at ``read_*`` datasources by an id column whose values it loads into memory and broadcasts to
every read task, and it does not cover incremental scans across runs. The chunk ledger needs neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from ood_audit.bundle.files import open_bundle
from ood_audit.io.quality import quality_notices
from ood_audit.errors import EXIT_INCOMPLETE, ConfigError, OodAuditError, StorageError
from ood_audit.io.decode import STATUSES, Preprocess
from ood_audit.io.fs import S3Config, check_writable, storage_error
from ood_audit.io.lease import Lease
from ood_audit.io.quality import QualityConfig
from ood_audit.progress import Progress, status_counts
from ood_audit.ray_setup import release_failed_pipeline
from ood_audit.scan.config import ScanConfig
from ood_audit.scan.duplicates import prefix_chars_for, resolve_duplicates
from ood_audit.scan.pipeline import Actors, actor_resources, build_pipeline
from ood_audit.scan.plan import DoneSet, Skipped, check_inputs, listing_pages, rechunk, skip_done
from ood_audit.scan.summary import PassStats, build_summary, startup_phases
from ood_audit.store.records import ChunkMarker, ListingInfo, RunSummary, feed_rows
from ood_audit.store.run_ledger import ChunkTracker, LEASE_NAME, Plan, RunLayout, RunLedger, new_run_id, sweep_output
from ood_audit.store.schema import partition_uri

log = logging.getLogger(__name__)



class ScanIncomplete(OodAuditError):
    """A run stopped before every chunk was committed; re-running with its ``--run-id`` finishes it."""

    exit_code = EXIT_INCOMPLETE


@dataclass
class ScanResult:
    """What :func:`run_scan` returns: the summary it wrote (and where), the reports' partition, and per pass
    the scoring progress (for :func:`~ood_audit.scan.summary.steady_rate`)."""

    run_id: str
    summary: RunSummary
    summary_uri: str
    reports: str
    progress: list[list[tuple[float, int]]] = field(default_factory=list)  # per pass: (epoch s, rows scored)


@dataclass
class ScanContext:
    """What one attempt's steps share: set up by :func:`run_scan` (bundle, lease, ledger), completed when the
    run is opened (``run_doc``, ``plan``, ``markers``), then read by the passes, the pipeline and the summary."""

    cfg: ScanConfig
    s3: S3Config                   # cfg.s3, or the environment's: what storage errors are reported against
    layout: RunLayout
    ledger: RunLedger
    lease: Lease
    bundle: Any                    # ood_audit.bundle.files.Bundle
    preprocess: Preprocess
    quality: QualityConfig         # SPEC §14 thresholds of this scan (quality_config, once)
    inputs: list[str]
    started_at: datetime
    phases: dict[str, float] = field(default_factory=dict)          # start-up seconds (summary.startup_phases)
    run_doc: dict[str, Any] = field(default_factory=dict)           # run.json with this attempt (RunLedger.open)
    plan: Plan = field(default_factory=lambda: Plan([], 1))         # the run's plan, once made or read
    markers: dict[int, ChunkMarker] = field(default_factory=dict)   # committed chunks

    @property
    def run_id(self) -> str:
        return self.layout.run_id

    @property
    def run_date(self) -> str:
        return str(self.run_doc["run_date"])

    @property
    def partition(self) -> str:
        return partition_uri(self.cfg.output, self.run_date)


def run_scan(cfg: ScanConfig, *, listing: Iterable[pa.Table] | None = None,
             start_ray: Callable[[], None] | None = None) -> ScanResult:
    """Run (or resume) one scan; returns its summary.

    ``listing`` replaces the listing of ``cfg.inputs`` with ready pages (``uri``, ``etag``, ``size``), e.g.
    pages listed earlier; it is only used when the run has no stored plan yet. ``start_ray`` is called
    once Ray is needed (after the bundle and the plan are ready); by default a local Ray is started
    unless one is already connected.
    """
    cfg.validate(need_source=listing is None)
    phases: dict[str, float] = {}
    started_at = datetime.now(timezone.utc)
    inputs = check_inputs(cfg.inputs, cfg.output) if cfg.inputs else []
    run_id = cfg.run_id or new_run_id(started_at)
    s3 = cfg.s3 or S3Config.from_env()
    try:
        t = time.perf_counter()
        bundle = open_bundle(cfg.bundle, s3=cfg.s3)
        phases["bundle_load"] = time.perf_counter() - t
        check_writable(cfg.output, s3=cfg.s3)  # before listing: a read-only output fails now, not after scoring
    except OSError as exc:
        raise storage_error(exc, s3=s3, uri=cfg.bundle) or exc
    pre = bundle.info.preprocess
    if pre.output_hw is None:
        raise ConfigError(f"--bundle {bundle.uri}: its preprocess has no fixed size; calibrate it again")

    layout = RunLayout(cfg.output, run_id)
    lease = Lease(layout.file(LEASE_NAME), cfg.lease_ttl(), run=run_id, s3=cfg.s3, dead_holder_is_stale=True)
    ledger = RunLedger(layout, cfg.s3, fence=lease.check)  # each commit marker is written only while we hold it
    ctx = ScanContext(cfg=cfg, s3=s3, layout=layout, ledger=ledger, lease=lease, bundle=bundle,
                      preprocess=pre, quality=quality_config(bundle), inputs=inputs, started_at=started_at,
                      phases=phases)
    try:
        lease.acquire()
    except OodAuditError:
        raise
    except Exception as exc:  # noqa: BLE001 - boto3's errors are not OSErrors
        raise storage_error(exc, s3=s3, uri=lease.uri) or exc
    try:
        return _run_leased(ctx, listing, start_ray)
    except Exception as exc:  # noqa: BLE001 - only storage failures are translated
        err = storage_error(exc, s3=s3) if not isinstance(exc, OodAuditError) or isinstance(exc, StorageError) else None
        if err is None:
            raise
        if "planning" not in phases:  # nothing scanned yet (e.g. the listing failed): the failure's own status
            raise err from None
        raise ScanIncomplete(f"run {run_id} stopped: {err}; the chunks committed so far are kept; once storage "
                             f"works again, re-run with --run-id {run_id} to finish it") from None
    finally:
        try:
            lease.release()
        except Exception as exc:  # noqa: BLE001 - storage may be down; the lease then goes stale by itself
            log.warning("could not release the lease %s (%s); it becomes stale on its own",
                        lease.uri, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)


def quality_config(bundle: Any) -> QualityConfig:
    """The SPEC §14 thresholds of a scan with ``bundle``: the bundle's calibrated ones (``blurry``) when it
    has them, else the defaults, where ``blurry`` is never reported. Called once per scan (it may warn)."""
    part = bundle.info.quality
    for line in quality_notices(part, bundle.id):
        log.warning("%s", line)
    return part.config() if part is not None else QualityConfig()


def _run_leased(ctx: ScanContext, listing: Iterable[pa.Table] | None,
                start_ray: Callable[[], None] | None) -> ScanResult:
    cfg, ledger, run_id = ctx.cfg, ctx.ledger, ctx.run_id
    t = time.perf_counter()
    identity = {"bundle_id": ctx.bundle.id, "inputs": ctx.inputs, "manifest": cfg.manifest,
                "incremental": cfg.incremental, "max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels}
    ctx.run_doc = ledger.open(identity, now=ctx.started_at)
    log.info("scan run %s (attempt %d), reports in %s", run_id, len(ctx.run_doc["attempts"]), ctx.partition)

    sweep_output(cfg.output, s3=cfg.s3, skip_run=run_id)  # other runs' strays; our own are swept below
    plan = ledger.plan()
    if plan is None:
        plan = _make_plan(ctx, listing)
    else:
        log.info("resuming: plan of %d objects in %d chunks", plan.objects, len(plan.chunk_rows))
    ctx.plan = plan

    ctx.markers = markers = ledger.markers()
    ledger.drop_broken(ctx.run_date, markers)
    ctx.phases["planning"] = time.perf_counter() - t
    passes: list[PassStats] = []
    if len(markers) < len(plan.chunk_rows):
        t = time.perf_counter()
        (start_ray or _start_local_ray)()
        ctx.phases["ray_start"] = time.perf_counter() - t
        passes = _scan_until_done(ctx)

    ledger.sweep(ctx.run_date, markers)
    ledger.check_parts(ctx.run_date, markers)
    done = len(markers) == len(plan.chunk_rows)
    duplicates = None
    if done:  # duplicate_of is a function of the whole committed run (scan.duplicates)
        ctx.lease.check()
        duplicates = resolve_duplicates(cfg.output, run_id, ctx.layout.run_dir, ctx.partition,
                                        sorted(f for m in markers.values() for f in m.files),
                                        prefix_chars=prefix_chars_for(plan.objects), s3=cfg.s3)
        log.info("exact duplicates: %d row(s), %d of this run's objects and %d of earlier runs' (%.1f s)",
                 duplicates.rows, duplicates.within_run, duplicates.earlier_runs, duplicates.seconds)
    startup = startup_phases(ctx.phases, passes)
    if any(v is not None for v in startup.to_json().values()):
        log.info("start-up: %s", ", ".join(f"{k.replace('_', ' ')} {v:.1f} s"
                                           for k, v in startup.to_json().items() if v is not None))
    summary = build_summary(ctx, passes, startup=startup, duplicates=duplicates)
    uri = ledger.write_summary(summary)
    if not done:
        last = next((e.error for e in reversed(passes) if e.error), "chunks left unfinished")
        raise ScanIncomplete(
            f"run {run_id}: {len(plan.chunk_rows) - len(markers)} of {len(plan.chunk_rows)} chunks unfinished after "
            f"{len(passes)} attempt(s) ({last}); re-run with --run-id {run_id} to finish it")
    return ScanResult(run_id, summary, uri, ctx.partition, [e.progress() for e in passes])


def _make_plan(ctx: ScanContext, listing: Iterable[pa.Table] | None) -> Plan:
    cfg = ctx.cfg
    t0 = time.perf_counter()
    done = (DoneSet.from_reports(cfg.output, ctx.bundle.id, s3=cfg.s3, exclude_run=ctx.run_id)
            if cfg.incremental else None)
    t_done = time.perf_counter() - t0
    pages = listing if listing is not None else listing_pages(cfg.inputs, cfg.manifest, s3=cfg.s3)
    counter = Skipped()
    t1 = time.perf_counter()

    def info() -> ListingInfo:
        seconds = time.perf_counter() - t1
        return ListingInfo(listed=counter.listed, skipped_done=counter.skipped,
                           done_set=len(done) if done is not None else None, done_set_s=round(t_done, 3),
                           listing_s=round(seconds, 3), keys_per_s=round(counter.listed / max(seconds, 1e-9), 1),
                           chunk_size=cfg.chunk_size)

    plan = ctx.ledger.write_plan(rechunk(skip_done(pages, done, counter), cfg.chunk_size),
                                 slice_rows=cfg.read_slice_rows(ctx.preprocess.output_hw), info=info)
    log.info("planned %d objects in %d chunks (%d listed, %d already done) in %.1f s", plan.objects,
             len(plan.chunk_rows), counter.listed, counter.skipped, time.perf_counter() - t0)
    return plan


def _start_local_ray() -> None:
    import ray

    if not ray.is_initialized():
        from ood_audit.ray_setup import init_ray

        init_ray()


def _scan_until_done(ctx: ScanContext) -> list[PassStats]:
    """Pipeline passes over the uncommitted chunks, up to ``max_attempts``; a storage failure stops them."""
    cfg, ledger, plan, markers = ctx.cfg, ctx.ledger, ctx.plan, ctx.markers
    passes: list[PassStats] = []
    actors = actor_resources(cfg)
    progress = Progress(f"scan {ctx.run_id}", plan.objects, done=sum(m.rows for m in markers.values()))
    try:
        for _ in range(cfg.max_attempts):
            todo = [c for c in range(len(plan.chunk_rows)) if c not in markers]
            if not todo:
                break
            ctx.run_doc["executions"] = attempt = int(ctx.run_doc.get("executions", 0)) + 1
            ledger.save_run(ctx.run_doc)
            ledger.sweep(ctx.run_date, markers)
            ex = PassStats(attempt)
            passes.append(ex)
            _one_pass(ctx, todo, actors, ex, progress)
    finally:
        progress.finish()  # how far it got, also when it stops
    return passes


def _one_pass(ctx: ScanContext, todo: list[int], actors: Actors, ex: PassStats, progress: Progress) -> None:
    """One pipeline pass over chunks ``todo``: a failure of Ray is recorded in ``ex`` (the next pass retries);
    a storage failure or a lost lease is raised."""
    tracker = ChunkTracker(ctx.plan, ex.attempt)
    try:
        _consume(ctx, build_pipeline(ctx, todo, ex.attempt, actors), tracker, ex, progress)
    except OodAuditError as exc:  # a lost lease, a refused commit: this driver stops
        release_failed_pipeline(exc)
        raise
    except Exception as exc:  # noqa: BLE001 - any Ray failure: keep committed chunks, try the rest again
        release_failed_pipeline(exc)
        err = storage_error(exc, s3=ctx.cfg.s3)
        if err is not None:  # retried for the outage window already: another pass would fail the same way
            ex.seconds = time.perf_counter() - ex.started
            raise err from None
        ex.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        log.warning("pipeline pass %d failed after %d committed chunk(s): %s", ex.attempt, ex.committed, ex.error)
    else:
        if tracker.pending or tracker.conflicted:
            ex.error = f"{tracker.pending} chunk(s) incomplete, {len(tracker.conflicted)} with rows written twice"
            log.warning("pipeline pass %d ended with %s; scanning them again", ex.attempt, ex.error)
    ex.seconds = time.perf_counter() - ex.started


def _consume(ctx: ScanContext, ds: Any, tracker: ChunkTracker, ex: PassStats, progress: Progress) -> None:
    """Read the pass's feed rows; commit each chunk as soon as its files cover it exactly once.

    Progress counts the committed chunks' objects plus what this pass has scored since (so a pass that
    starts again does not count its predecessor's uncommitted rows twice)."""
    markers = ctx.markers
    before = list(markers.values())
    done0 = sum(m.rows for m in before)
    counts = {s: sum(m.counts.get(s, 0) for m in before) for s in STATUSES}
    flagged = sum(m.flagged for m in before)
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for feed in feed_rows(block):
            ex.rows += feed.rows
            ex.first_feed = ex.first_feed or time.perf_counter()
            ex.first_scored = min(ex.first_scored or feed.scanned_min, feed.scanned_min)
            ex.scored.append((feed.scanned_max, feed.rows))
            marker = tracker.add(feed)
            if marker is not None:
                ctx.ledger.commit(marker)  # fenced: raises LeaseLost once this driver may have been taken over
                markers[marker.chunk] = marker
                ex.committed += 1
            for s, n in feed.counts.items():
                counts[s] = counts.get(s, 0) + n
            flagged += feed.flagged
        progress.update(min(ctx.plan.objects, done0 + ex.rows), status_counts(counts, flagged))


__all__ = ["ScanConfig", "ScanContext", "ScanIncomplete", "ScanResult", "quality_config", "run_scan"]
