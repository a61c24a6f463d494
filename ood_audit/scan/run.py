"""``ood-audit scan``: stream objects from S3 (or local folders) through scoring actors into Parquet reports.

Data path (one Ray Data pipeline per attempt)::

    plan slices ──read tasks──▶ fetch + decode (CPU tasks, threads) ──▶ ScoreActor pool ──▶ write_parts tasks
         (PlanDatasource)           read.fetch_decode                    score.ScoreActor      write.write_parts
                                                                                                    │ feed rows
    driver: ChunkTracker ◀──────────────────────────────────────────────────────────────────────────┘
            └─▶ commit markers (ledger)

1. **Plan.** The listing (prefixes or a manifest; for ``--incremental`` minus what is already done, see
   :mod:`ood_audit.scan.plan`) streams page by page into fixed chunks of ``chunk_size`` objects, each
   stored as a plan file under ``runs/<run_id>/plan/``; ``plan.json`` marks the plan complete. Listing
   is done once, before scoring: it costs one request per thousand keys against one per object to read.
2. **Scan.** Read tasks take slices (row groups) of the plan files; every other stage is streaming, and
   the driver holds slice descriptors only.
3. **Commit.** The writer emits one feed row per part file (chunk, positions, counts). The driver marks a
   chunk done by writing ``runs/<run_id>/chunks/c<n>.json`` once the positions of its files cover
   ``[0, n)`` exactly once. Summary counts come from the markers.
4. **Finish.** Part files no marker names are deleted, the row count is checked against the footers,
   ``duplicate_of`` is set from the committed run's content digests (:mod:`ood_audit.scan.duplicates`),
   and ``runs/<run_id>/summary.json`` is written.

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
  whose holder is dead (its process gone on this host, or not renewed for its TTL) is taken over.

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

import numpy as np
import pyarrow as pa

from ood_audit.bundle.files import open_bundle, software_versions
from ood_audit.errors import EXIT_INCOMPLETE, ConfigError, OodAuditError, StorageError
from ood_audit.io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, STATUSES, Preprocess
from ood_audit.io.quality import QualityConfig
from ood_audit.io.fs import S3Config, check_writable, storage_error
from ood_audit.io.lease import Lease
from ood_audit.scan.duplicates import STAGING_DIR, prefix_chars_for, resolve_duplicates
from ood_audit.store.run_ledger import ChunkTracker, RunLedger, Plan, RunLayout, check_run_id, new_run_id
from ood_audit.scan.plan import DoneSet, Skipped, check_inputs, listing_pages, rechunk, skip_done
from ood_audit.store.schema import count_rows, partition_uri

log = logging.getLogger(__name__)


class ScanIncomplete(OodAuditError):
    """A run stopped before every chunk was committed; re-running with its ``--run-id`` finishes it."""

    exit_code = EXIT_INCOMPLETE


LEASE_NAME = "lease.json"


@dataclass
class ScanConfig:
    """One scan. Field names match the CLI flags (``batch_size`` is ``--batch-size``)."""

    bundle: str
    output: str
    inputs: tuple[str, ...] = ()
    manifest: str | None = None
    run_id: str | None = None
    incremental: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    batch_size: int = 64            # images per forward pass
    workers: int | None = None      # scoring actors; None: one per GPU, else one per 2 CPUs
    device: str = "auto"            # decided on the workers' nodes for "auto"
    knn_backend: str = "auto"
    chunk_size: int = 10_000        # objects per commit unit
    slice_rows: int = 256           # objects per read task
    read_threads: int = 16          # requests in flight per read task
    rows_per_file: int = 8192       # upper bound on rows per part file
    max_attempts: int = 3           # pipeline attempts within this process
    actor_cpus: float = 0.5         # CPU actors: fractional, so read tasks always find a CPU
    read_cpus: float = 0.25
    write_cpus: float = 0.25
    torch_threads: int | None = None
    progress_bars: bool = False
    lease_ttl_s: float = 60.0       # the run's lease (one driver per run id); renewed every third of it
    s3: S3Config | None = None

    def validate(self, *, need_source: bool = True) -> None:
        if need_source and not self.inputs and not self.manifest:
            raise ConfigError("give --input PREFIX (repeatable) or --manifest URI")
        if self.inputs and self.manifest:
            raise ConfigError("--input and --manifest are mutually exclusive")
        for name in ("max_pixels", "max_bytes", "batch_size", "chunk_size", "slice_rows", "read_threads",
                     "rows_per_file", "max_attempts", "workers", "torch_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.run_id is not None:
            check_run_id(self.run_id)


_REPORTED_CONFIG = ("max_pixels", "max_bytes", "batch_size", "workers", "device", "knn_backend", "chunk_size",
                    "slice_rows", "read_threads", "rows_per_file", "max_attempts")


@dataclass
class ScanResult:
    run_id: str
    summary: dict[str, Any]
    summary_uri: str
    reports: str
    progress: list[list[tuple[float, int]]] = field(default_factory=list)  # per pass: (epoch s, rows scored)


@dataclass
class _Execution:
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
    pre = Preprocess.from_dict(dict(bundle.info.preprocess))
    if pre.output_hw is None:
        raise ConfigError(f"--bundle {bundle.uri}: its preprocess has no fixed size; calibrate it again")

    layout = RunLayout(cfg.output, run_id)
    lease = Lease(layout.file(LEASE_NAME), cfg.lease_ttl_s, run=run_id, s3=cfg.s3, dead_holder_is_stale=True)
    try:
        lease.acquire()
    except OodAuditError:
        raise
    except Exception as exc:  # noqa: BLE001 - boto3's errors are not OSErrors
        raise storage_error(exc, s3=s3, uri=lease.uri) or exc
    try:
        return _run_leased(cfg, listing, start_ray, layout, lease, bundle, pre, inputs, started_at, phases)
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


def _run_leased(cfg: ScanConfig, listing: Iterable[pa.Table] | None, start_ray: Callable[[], None] | None,
                layout: RunLayout, lease: Lease, bundle: Any, pre: Preprocess, inputs: list[str],
                started_at: datetime, phases: dict[str, float]) -> ScanResult:
    run_id = layout.run_id
    t = time.perf_counter()
    ledger = RunLedger(layout, cfg.s3)
    identity = {"bundle_id": bundle.id, "inputs": inputs, "manifest": cfg.manifest, "incremental": cfg.incremental,
                "max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels}
    run_doc = ledger.open(identity, now=started_at)
    run_date = run_doc["run_date"]
    partition = partition_uri(cfg.output, run_date)
    log.info("scan run %s (attempt %d), reports in %s", run_id, len(run_doc["attempts"]), partition)

    plan = ledger.plan()
    if plan is None:
        plan = _make_plan(cfg, ledger, bundle.id, run_id, listing)
    else:
        log.info("resuming: plan of %d objects in %d chunks", plan.objects, len(plan.chunk_rows))

    markers = ledger.markers()
    ledger.drop_broken(run_date, markers)
    phases["planning"] = time.perf_counter() - t
    executions: list[_Execution] = []
    if len(markers) < len(plan.chunk_rows):
        t = time.perf_counter()
        (start_ray or _start_local_ray)()
        phases["ray_start"] = time.perf_counter() - t
        executions = _scan_until_done(cfg, ledger, plan, markers, bundle.uri, run_id, run_date, pre, run_doc, lease,
                                      quality_config(bundle))

    ledger.sweep(run_date, markers)
    ledger.check_parts(run_date, markers)
    done = len(markers) == len(plan.chunk_rows)
    duplicates = None
    if done:  # duplicate_of is a function of the whole committed run (scan.duplicates)
        lease.check()
        duplicates = resolve_duplicates(cfg.output, run_id, layout.run_dir, partition,
                                        sorted(f for m in markers.values() for f in m["files"]),
                                        prefix_chars=prefix_chars_for(plan.objects), s3=cfg.s3)
        log.info("exact duplicates: %d row(s), %d of this run's objects and %d of earlier runs' (%.1f s)",
                 duplicates.rows, duplicates.within_run, duplicates.earlier_runs, duplicates.seconds)
    startup = _startup(phases, executions)
    if startup:
        log.info("start-up: %s", ", ".join(f"{k.replace('_', ' ')} {v:.1f} s"
                                           for k, v in startup.items() if v is not None))
    summary = _summary(cfg, run_id, run_date, partition, bundle, plan, markers, executions, run_doc, started_at)
    summary["startup_s"] = startup
    summary["duplicates"] = duplicates.as_dict() if duplicates is not None else None
    uri = ledger.write_summary(summary)
    if not done:
        last = next((e.error for e in reversed(executions) if e.error), "chunks left unfinished")
        raise ScanIncomplete(
            f"run {run_id}: {len(plan.chunk_rows) - len(markers)} of {len(plan.chunk_rows)} chunks unfinished after "
            f"{len(executions)} attempt(s) ({last}); re-run with --run-id {run_id} to finish it")
    return ScanResult(run_id, summary, uri, partition, [e.progress() for e in executions])


def _startup(phases: dict[str, float], executions: list[_Execution]) -> dict[str, float | None]:
    """Seconds per start-up phase: the driver's bundle load, planning (ledger, listing, plan) and Ray start, then
    for the first pass the actors' start (pool up and bundle loaded, until the first batch is scored) and the
    first batch (until its part file is written and reported to the driver)."""
    first = executions[0] if executions else None
    out: dict[str, float | None] = {k: round(phases[k], 3) if k in phases else None
                                    for k in ("bundle_load", "planning", "ray_start")}
    out["actor_start"] = (round(first.first_scored - first.started_epoch, 3)
                          if first is not None and first.first_scored is not None else None)
    out["first_batch"] = (round(first.first_feed - first.started, 3)
                          if first is not None and first.first_feed is not None else None)
    return out


def _make_plan(cfg: ScanConfig, ledger: RunLedger, bundle_id: str, run_id: str,
               listing: Iterable[pa.Table] | None) -> Plan:
    t0 = time.perf_counter()
    done = DoneSet.from_reports(cfg.output, bundle_id, s3=cfg.s3, exclude_run=run_id) if cfg.incremental else None
    t_done = time.perf_counter() - t0
    pages = listing if listing is not None else listing_pages(cfg.inputs, cfg.manifest, s3=cfg.s3)
    counter = Skipped()
    t1 = time.perf_counter()

    def info() -> dict[str, Any]:
        seconds = time.perf_counter() - t1
        return {"listed": counter.listed, "skipped_done": counter.skipped,
                "done_set": len(done) if done is not None else None, "done_set_s": round(t_done, 3),
                "listing_s": round(seconds, 3), "keys_per_s": round(counter.listed / max(seconds, 1e-9), 1),
                "chunk_size": cfg.chunk_size}

    plan = ledger.write_plan(rechunk(skip_done(pages, done, counter), cfg.chunk_size), slice_rows=cfg.slice_rows,
                             info=info)
    log.info("planned %d objects in %d chunks (%d listed, %d already done) in %.1f s", plan.objects,
             len(plan.chunk_rows), counter.listed, counter.skipped, time.perf_counter() - t0)
    return plan


def _start_local_ray() -> None:
    import ray

    if not ray.is_initialized():
        from ood_audit.ray_setup import init_ray

        init_ray()


def quality_config(bundle: Any) -> QualityConfig:
    """The SPEC §14 thresholds of a scan with ``bundle``: the bundle's calibrated ones (``blurry``) when it
    has them, else the defaults, where ``blurry`` is never reported."""
    part = bundle.info.quality
    if part is not None and not part.comparable:
        log.warning("bundle %s set its blurry threshold on %s, not on the working copies the scan measures; "
                    "blur is not checked (calibrate again to check it)", bundle.id, part.measured_on)
    return part.config() if part is not None else QualityConfig()


def _scan_until_done(cfg: ScanConfig, ledger: RunLedger, plan: Plan, markers: dict[int, dict], bundle_uri: str,
                     run_id: str, run_date: str, pre: Preprocess, run_doc: dict, lease: Lease,
                     quality: QualityConfig) -> list[_Execution]:
    executions: list[_Execution] = []
    resources, device, workers = _actor_resources(cfg)
    for _ in range(cfg.max_attempts):
        todo = [c for c in range(len(plan.chunk_rows)) if c not in markers]
        if not todo:
            break
        run_doc["executions"] = attempt = int(run_doc.get("executions", 0)) + 1
        ledger.save_run(run_doc)
        ledger.sweep(run_date, markers)
        ex = _Execution(attempt)
        executions.append(ex)
        log.info("pipeline pass %d: %d chunk(s), %d object(s), %d %s scoring actor(s)", attempt, len(todo),
                 sum(plan.chunk_rows[c] for c in todo), workers, device)
        tracker = ChunkTracker(plan, attempt)
        try:
            ds = _pipeline(cfg, ledger, plan, todo, bundle_uri, run_id, run_date, pre, attempt, resources, device,
                           workers, quality)
            _consume(ds, tracker, ledger, markers, ex, plan, lease)
        except OodAuditError:
            raise
        except Exception as exc:  # noqa: BLE001 - any Ray failure: keep committed chunks, try the rest again
            err = storage_error(exc, s3=cfg.s3)
            if err is not None:  # retried for the outage window already: another pass would fail the same way
                ex.seconds = time.perf_counter() - ex.started
                raise err from None
            ex.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            log.warning("pipeline pass %d failed after %d committed chunk(s): %s", attempt, ex.committed, ex.error)
        else:
            if tracker.pending or tracker.conflicted:
                ex.error = f"{tracker.pending} chunk(s) incomplete, {len(tracker.conflicted)} with rows written twice"
                log.warning("pipeline pass %d ended with %s; scanning them again", attempt, ex.error)
        ex.seconds = time.perf_counter() - ex.started
    return executions


def _actor_resources(cfg: ScanConfig) -> tuple[dict[str, float], str, int]:
    """Ray resources per scoring actor, the actor device, and the pool size."""
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 0))
    # An explicit --device cuda --workers N is a request: an autoscaling cluster that has no GPU node up
    # yet adds them for the N actors. Without --workers the pool is sized from the GPUs present.
    if cfg.device.startswith("cuda") and gpus < 1 and not cfg.workers:
        raise ConfigError(f"--device {cfg.device}: the Ray cluster has no GPU now; give --workers N to let an "
                          "autoscaling cluster add GPU nodes, or use --device cpu or auto")
    use_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus >= 1)
    if use_gpu:
        return {"num_gpus": 1, "num_cpus": 1}, (cfg.device if cfg.device != "auto" else "cuda"), cfg.workers or int(gpus)
    workers = cfg.workers or max(1, int(cpus // 2))
    if workers * cfg.actor_cpus >= cpus:
        raise ConfigError(f"--workers {workers} scoring actors need {workers * cfg.actor_cpus:g} of the cluster's "
                          f"{cpus:g} CPUs, leaving none for reading; use fewer workers")
    return {"num_cpus": cfg.actor_cpus}, "cpu", workers


def _pipeline(cfg: ScanConfig, ledger: RunLedger, plan: Plan, todo: list[int], bundle_uri: str, run_id: str,
              run_date: str, pre: Preprocess, attempt: int, resources: dict[str, float], device: str,
              workers: int, quality: QualityConfig) -> Any:
    import ray

    from ood_audit.scan.read import PlanDatasource, fetch_decode
    from ood_audit.scan.score import ScoreActor
    from ood_audit.scan.write import write_parts

    ray.data.DataContext.get_current().enable_progress_bars = cfg.progress_bars
    # Ray Data fuses a task stage into the next actor stage when their resources are identical; fetch +
    # decode must stay separate CPU tasks (many in flight, next to the actors), so they differ.
    read_cpus = cfg.read_cpus if resources.get("num_cpus") != cfg.read_cpus or resources.get("num_gpus") else (
        cfg.read_cpus * 0.99)
    slices = ledger.slices(plan, todo)
    # Same resources and one block per slice: the read fuses with fetch + decode into one task.
    ds = ray.data.read_datasource(PlanDatasource(slices, cfg.s3), num_cpus=read_cpus,
                                  override_num_blocks=len(slices))
    ds = ds.map_batches(
        fetch_decode, batch_size=None, batch_format="numpy",  # a whole slice per call: slice_rows in flight
        num_cpus=read_cpus,
        fn_kwargs={"preprocess": pre.to_dict(), "s3": cfg.s3, "max_bytes": cfg.max_bytes,
                   "max_pixels": cfg.max_pixels, "threads": cfg.read_threads,
                   "quality": quality.model_dump()})
    ds = ds.map_batches(
        ScoreActor, batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(slices)))), **resources,
        fn_constructor_kwargs={"bundle_uri": bundle_uri, "run_id": run_id, "s3": cfg.s3, "device": device,
                               "knn_backend": cfg.knn_backend, "torch_threads": cfg.torch_threads})
    return ds.map_batches(
        write_parts, batch_size=min(cfg.rows_per_file, max(plan.chunk_rows)), batch_format="pyarrow",
        num_cpus=cfg.write_cpus,
        fn_kwargs={"partition": partition_uri(cfg.output, run_date), "run_id": run_id, "attempt": attempt,
                   "staging": ledger.layout.file(STAGING_DIR), "prefix_chars": prefix_chars_for(plan.objects),
                   "s3": cfg.s3})


def _consume(ds: Any, tracker: ChunkTracker, ledger: RunLedger, markers: dict[int, dict], ex: _Execution,
             plan: Plan, lease: Lease) -> None:
    last_log = time.perf_counter()
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for feed in block.to_pylist():
            ex.rows += int(feed["rows"])
            ex.first_feed = ex.first_feed or time.perf_counter()
            ex.first_scored = min(ex.first_scored or feed["scanned_min"], feed["scanned_min"])
            ex.scored.append((feed["scanned_max"], int(feed["rows"])))
            marker = tracker.add(feed)
            if marker is not None:
                lease.check()  # taken over (this driver was presumed dead): commit nothing more
                ledger.commit(marker)
                markers[marker["chunk"]] = marker
                ex.committed += 1
        now = time.perf_counter()
        if now - last_log >= 10.0:
            last_log = now
            log.info("%d/%d chunks committed, %d objects this attempt (%.1f obj/s)", len(markers),
                     len(plan.chunk_rows), ex.rows, ex.rows / max(now - ex.started, 1e-9))


def steady_rate(progress: list[tuple[float, int]], lo: float = 0.2, hi: float = 0.9) -> float | None:
    """Objects/s while the scored rows went from ``lo`` to ``hi`` of an attempt's rows: the pipeline's rate
    with start-up (actors loading, the first batches) and the drain at the end left out."""
    if len(progress) < 3 or progress[-1][1] == 0:
        return None
    t = np.array([p[0] for p in progress])
    rows = np.array([p[1] for p in progress])
    i, j = int(np.searchsorted(rows, lo * rows[-1])), int(np.searchsorted(rows, hi * rows[-1]))
    if j <= i or t[j] <= t[i]:
        return None
    return round(float((rows[j] - rows[i]) / (t[j] - t[i])), 2)


def _summary(cfg: ScanConfig, run_id: str, run_date: str, partition: str, bundle: Any, plan: Plan,
             markers: dict[int, dict], executions: list[_Execution], run_doc: dict,
             started_at: datetime) -> dict[str, Any]:
    files = [f for m in markers.values() for f in m["files"]]
    counts = {s: sum(m["counts"][s] for m in markers.values()) for s in STATUSES}
    busy = {k: round(sum(m["seconds"][k] for m in markers.values()), 3) for k in ("read_s", "score_s", "write_s")}
    workers = sorted({w for m in markers.values() for w in m["workers"]})
    rows_now = sum(e.rows for e in executions)
    wall = sum(e.seconds for e in executions)
    first = next((e for e in executions if e.first_scored is not None), None)
    steady = max((steady_rate(e.progress()) for e in executions), default=None, key=lambda r: r or 0)
    import ray

    return {
        "run_id": run_id,
        "run_date": run_date,
        "reports": partition,
        "complete": len(markers) == len(plan.chunk_rows),
        "bundle": {"id": bundle.id, "uri": bundle.uri,
                   "flag_on": list(bundle.info.thresholds.flag_on),
                   "precision": bundle.info.precision.activations},
        "inputs": run_doc["identity"]["inputs"],
        "manifest": run_doc["identity"]["manifest"],
        "incremental": cfg.incremental,
        "objects": plan.objects,
        "chunks": {"total": len(plan.chunk_rows), "committed": len(markers)},
        "listing": plan.info,
        "counts": counts,
        "flagged": sum(m["flagged"] for m in markers.values()),
        "rows_committed": sum(m["rows"] for m in markers.values()),
        "rows_in_files": count_rows(partition, files, s3=cfg.s3) if files else 0,
        "files": len(files),
        "attempts": len(run_doc["attempts"]),
        "executions": [{"attempt": e.attempt, "seconds": round(e.seconds, 2), "rows": e.rows,
                        "chunks_committed": e.committed, "error": e.error} for e in executions],
        "throughput": {
            "objects_per_s": round(rows_now / wall, 2) if wall > 0 else None,
            "steady_objects_per_s": steady,
            "startup_s": round(first.first_scored - first.started_epoch, 2) if first is not None else None,
        },
        "timings_s": {"listing": plan.info.get("listing_s"), "scan_wall": round(wall, 2),
                      "stage_busy": {"read": busy["read_s"], "score": busy["score_s"], "write": busy["write_s"]}},
        "workers": {"scoring_actors": len(workers), "nodes": len({w.split(":")[0] for w in workers})},
        "config": {k: getattr(cfg, k) for k in _REPORTED_CONFIG},
        "quality_thresholds": quality_config(bundle).model_dump(),  # SPEC §14: every threshold the read task used
        "software": {**software_versions(), "ray": ray.__version__},
        "created_at": run_doc.get("created_at"),
        "started_at": started_at.isoformat(timespec="seconds"),
        "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
