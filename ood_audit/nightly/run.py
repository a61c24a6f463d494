"""``ood-audit nightly``: one scheduled audit (an incremental scan, the exports, the report), under a lease.

Order, and what each failure leaves behind:

1. **Lease** at ``<output>/nightly/lease.json`` (:func:`nightly_lease_uri`; the protocol is
   :mod:`ood_audit.io.lease`'s). Held by a live run: stop at once with :data:`EXIT_LEASE_HELD`, having
   touched nothing. A scheduler that replays missed nights therefore runs at most one at a time.
2. **Scan**, incremental by default: only objects new or changed since earlier runs with this bundle.
   A scan that cannot finish (S3 down for longer than its retries) is a failure (:data:`EXIT_SCAN`); its
   committed chunks are kept, so the next night scans only the rest.
3. **Exports**, in the configured order, each a *catch-up* (:mod:`ood_audit.sinks.export`): every committed
   row of the bundle, from tonight's run or any earlier one, that the export's ledger has not sent. So a
   night whose scan stopped (its committed chunks count as done, and the next scan skips them) or whose
   export failed is delivered by the next night that gets this far, without anyone re-running it. Each is
   idempotent (its ledger) and takes its destination's export lease (a manual ``ood-audit export`` to the
   same place makes it fail for tonight, and the next night sends the rest). One that fails is reported
   and the others still run, then the job fails (:data:`EXIT_TRIAGE`).
4. **Report**, with drift against the previous run. A report failure is also :data:`EXIT_TRIAGE`.

Between stages the lease is checked: a run that was presumed dead and taken over stops instead of racing.
Finding outliers or bad images is the job working, never a failure: the exit status is 0.

Why a lease of our own: KubeRay's RayCronJob has no ``concurrencyPolicy``, and after operator downtime it
replays the runs it missed; a plain CronJob's ``Forbid`` holds only within one cluster, and a person may
start the job by hand. Two nights running at once would scan twice and race on the exports' ledgers.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ood_audit.errors import EXIT_CONFIG, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_OK, EXIT_TRIAGE, BundleError, ConfigError, \
    OodAuditError, ReportError, StorageError
from ood_audit.io.fs import S3Config
from ood_audit.nightly.config import Export, FiftyOneExport, LabelStudioExport, NightlyConfig, SqsExport, \
    WebhookExport
from ood_audit.errors import EXIT_LEASE_HELD
from ood_audit.io.lease import Lease
from ood_audit.io.uri import join_uri

if TYPE_CHECKING:
    from ood_audit.store.records import RunSummary

log = logging.getLogger(__name__)


def nightly_lease_uri(output: str) -> str:
    """The one lease of scheduled runs on ``output``: one night at a time per output root."""
    return join_uri(output, "nightly", "lease.json")

# The statuses are every command's (ood_audit.errors); a storage failure before the scan starts (endpoint
# down, credentials refused, no bucket, output not writable) keeps its own status.
EXIT_SCAN = EXIT_INCOMPLETE  # the scan did not finish; what it committed is kept, the next night does the rest
EXIT_STATUSES = {EXIT_OK: "done", EXIT_ERROR: "unexpected error", EXIT_CONFIG: "bad configuration or input",
                 EXIT_SCAN: "scan incomplete", EXIT_TRIAGE: "an export or the report failed",
                 EXIT_LEASE_HELD: "another run holds the lease"}


@dataclass
class NightlyResult:
    run_id: str
    status: int = EXIT_OK
    scan: RunSummary | None = None  # the scan's summary, once it ran
    exports: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None
    errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        s = self.scan
        out = [f"nightly run {self.run_id}: {EXIT_STATUSES.get(self.status, self.status)} (exit {self.status})"]
        if s is not None:
            counts = ", ".join(f"{k} {v}" for k, v in s.counts.items() if v)
            out.append(f"  scan: {s.objects or 0} object(s) scanned, {s.listing.skipped_done} unchanged skipped; "
                       f"{s.flagged} flagged; {counts or 'nothing new'}")
            if s.duplicates is not None and s.duplicates.rows:
                d = s.duplicates
                out.append(f"  exact duplicates: {d.rows} ({d.within_run} of objects in this run, "
                           f"{d.earlier_runs} of earlier runs' objects)")
        for e in self.exports:
            out.append(f"  export {e['sink']} ({e['policy']}): selected {e['selected']}, already sent "
                       f"{e['already_sent']}, sent now {e['sent_now']} ({e['from_earlier_runs']} from earlier "
                       "nights)")
        if self.report:
            out.append(f"  report: {self.report}")
        out += [f"  FAILED: {e}" for e in self.errors]
        out.append("  stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return out


def run_nightly(cfg: NightlyConfig, *, run_id: str | None = None,
                start_ray: Callable[[], None] | None = None, environ: dict[str, str] | None = None) -> NightlyResult:
    """Run the job (module docstring). Configuration errors raise; stage failures set ``status``."""
    from ood_audit.store.run_ledger import new_run_id

    s3 = S3Config.from_env(cfg.s3.endpoint_url, retry_s=cfg.s3.retry_s)
    run_id = run_id or new_run_id()
    res = NightlyResult(run_id)
    with Lease(nightly_lease_uri(cfg.output), cfg.lease.ttl_s, run=run_id, s3=s3) as lease:
        log.info("nightly run %s: lease %s taken", run_id, lease.uri)
        # A bad bundle, input or credential is a configuration error (exit 2), not an incomplete scan.
        if not _stage(res, "scan", lambda: _scan(cfg, run_id, s3, start_ray, res), EXIT_SCAN,
                      reraise=(ConfigError, BundleError, StorageError)):
            return res
        for i, e in enumerate(cfg.exports):
            lease.check()
            _stage(res, f"export {i + 1} ({e.sink})", lambda e=e: _export(cfg, e, run_id, s3, res, environ),
                   EXIT_TRIAGE)
        if cfg.report is not None:
            lease.check()
            _stage(res, "report", lambda: _report(cfg, run_id, s3, res), EXIT_TRIAGE)
        lease.check()
    return res


def _stage(res: NightlyResult, name: str, fn: Callable[[], None], status: int,
           reraise: tuple[type[Exception], ...] = ()) -> bool:
    start = time.perf_counter()
    try:
        fn()
        return True
    except reraise:
        raise
    except OodAuditError as exc:
        res.errors.append(f"{name}: {exc}")
        res.status = res.status or status
        log.error("%s failed: %s", name, exc)
        return False
    finally:
        res.seconds[name] = time.perf_counter() - start


def _scan(cfg: NightlyConfig, run_id: str, s3: S3Config, start_ray: Callable[[], None] | None,
          res: NightlyResult) -> None:
    from ood_audit.io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
    from ood_audit.scan import ScanConfig, run_scan

    sc = cfg.scan
    scan_cfg = ScanConfig(bundle=cfg.bundle, output=cfg.output, inputs=tuple(cfg.inputs), run_id=run_id,
                          incremental=cfg.incremental, batch_size=sc.batch_size, chunk_size=sc.chunk_size,
                          workers=sc.workers, device=sc.device, read_threads=sc.read_threads,
                          max_attempts=sc.max_attempts, max_bytes=sc.max_bytes or DEFAULT_MAX_BYTES,
                          max_pixels=sc.max_pixels or DEFAULT_MAX_PIXELS, s3=s3)
    scan_cfg.validate()
    result = run_scan(scan_cfg, start_ray=start_ray)
    res.scan = result.summary


def _export(cfg: NightlyConfig, e: Export, run_id: str, s3: S3Config, res: NightlyResult,
            environ: dict[str, str] | None) -> None:
    import os

    from ood_audit.sinks.export import export
    from ood_audit.sinks.select import Selection

    env = os.environ if environ is None else environ
    if isinstance(e, LabelStudioExport):
        from ood_audit.sinks.labelstudio import LabelStudioSink

        sink: Any = LabelStudioSink(url=e.url, token=env.get(e.token_env), project_id=e.project_id,
                                    create_project=e.create_project,
                                    tasks_file=e.tasks_file, s3=s3)
    elif isinstance(e, SqsExport):
        from ood_audit.sinks.sqs import SqsSink

        sink = SqsSink(e.queue, endpoint=e.endpoint_url)
    elif isinstance(e, WebhookExport):
        from ood_audit.sinks.webhook import WebhookSink

        sink = WebhookSink(e.url, secret_env=e.secret_env, environ=dict(env))
    elif isinstance(e, FiftyOneExport):
        from ood_audit.sinks.fiftyone import FiftyOneSink

        sink = FiftyOneSink(e.dataset, output=cfg.output, s3=s3)
    else:
        from ood_audit.sinks.manifest import ManifestSink

        sink = ManifestSink(e.prefix, s3=s3)
    selection = Selection(policy=e.policy, budget=e.budget, per_class=e.per_class, quality=tuple(e.quality),
                          exclude_quality=tuple(e.exclude_quality))
    summary = export(cfg.output, sink, selection, run_id=run_id, catch_up=True, s3=s3,
                     lease_ttl_s=cfg.lease.ttl_s)
    res.exports.append(summary.to_dict())


def _report(cfg: NightlyConfig, run_id: str, s3: S3Config, res: NightlyResult) -> None:
    from ood_audit.report import ReportOptions, write_report

    assert cfg.report is not None
    out = _fill(cfg.report.out, run_id)
    try:
        write_report(cfg.output, out, run_id, s3=s3,
                     options=ReportOptions(top=cfg.report.top, prefix_depth=cfg.report.prefix_depth))
    except OSError as exc:  # a report that cannot be written fails its stage (exit 5), not the whole job
        raise ReportError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    res.report = out


def _fill(template: str, run_id: str) -> str:
    """``{run_id}`` and ``{run_date}`` (today, UTC) in a configured path."""
    return template.replace("{run_id}", run_id).replace("{run_date}", f"{datetime.now(timezone.utc):%Y-%m-%d}")
