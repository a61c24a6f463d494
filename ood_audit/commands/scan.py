"""`ood-audit scan`: score every object under prefixes (or in a manifest) into Parquet reports, on Ray."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ood_audit.errors import ConfigError
from ood_audit.commands.common import add_input_args, add_ray_args, add_s3_args, start_ray

if TYPE_CHECKING:
    from ood_audit.store.records import RunSummary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan", help="score objects with an audit bundle into Parquet reports (resumable, incremental)",
        description="List the inputs, fetch and decode every object on Ray Data tasks, score it on an actor "
                    "pool with the bundle's model, banks and thresholds, and write one report row per object "
                    "to OUTPUT/reports/run_date=YYYY-MM-DD/. Re-running with the same --run-id finishes an "
                    "interrupted run; --incremental skips objects already scored by the same bundle.")
    add_input_args(p)
    p.add_argument("--output", required=True,
                   help="output root (local, s3://, gs:// or az://); reports go to OUTPUT/reports/")
    p.add_argument("--run-id", default=None, help="name of the run (default: start time + random); "
                                                  "re-use it to resume an interrupted run")
    p.add_argument("--incremental", action="store_true",
                   help="skip objects whose (uri, etag) earlier runs under OUTPUT scored with this bundle "
                        "(ok, decode_error and unsupported count as done; missing, too_large and refused are retried)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images whose header claims more pixels")
    p.add_argument("--max-bytes", type=int, default=None, help="refuse objects larger than this, stored or once inflated")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=None,
                   help="scoring actors (default: one per GPU, else one per CPU of the cluster)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: GPU when the cluster has one)")
    p.add_argument("--chunk-size", type=int, default=10_000, help="objects per resumable unit (default 10000)")
    p.add_argument("--read-threads", type=int, default=16, help="requests in flight per read task (default 16)")
    p.add_argument("--max-attempts", type=int, default=3, help="pipeline attempts before giving up (default 3)")
    p.add_argument("--storage-retry-s", type=float, default=120.0, metavar="SECONDS",
                   help="ride out a storage outage this long: every S3 request is retried with backoff (default "
                        "120); a longer outage stops the run resumable (exit 4): re-run with the same --run-id")
    p.add_argument("--json", action="store_true",
                   help="print the run's summary.json on stdout instead of the summary lines")
    add_s3_args(p)
    add_ray_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
    from ood_audit.io.fs import S3Config
    from ood_audit.scan import ScanConfig, run_scan

    if args.input and args.manifest:
        raise ConfigError("--input and --manifest are mutually exclusive")
    if args.storage_retry_s < 0:
        raise ConfigError(f"--storage-retry-s must be >= 0, got {args.storage_retry_s}")
    s3 = S3Config.from_env(args.s3_endpoint, retry_s=args.storage_retry_s)
    cfg = ScanConfig(
        bundle=args.bundle, output=args.output, inputs=tuple(args.input), manifest=args.manifest,
        run_id=args.run_id, incremental=args.incremental,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
        max_bytes=DEFAULT_MAX_BYTES if args.max_bytes is None else args.max_bytes,
        batch_size=args.batch_size, workers=args.workers, device=args.device, chunk_size=args.chunk_size,
        read_threads=args.read_threads, max_attempts=args.max_attempts, s3=s3)
    cfg.validate()
    res = run_scan(cfg, start_ray=lambda: start_ray(args, s3))
    if args.json:
        print(json.dumps(res.summary.to_json(), indent=2))
    else:
        print("\n".join(summary_lines(res.summary, res.summary_uri)))
    return 0


def summary_lines(summary: RunSummary, summary_uri: str) -> list[str]:
    """The run's summary for people: what was scanned, what it found, and where the rows are."""
    counts = summary.counts
    scored = int(counts.get("ok", 0))
    other = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "ok" and v)
    rate, wall = summary.throughput.objects_per_s, summary.timings_s.scan_wall
    flagged = summary.flagged
    flag_on = " or ".join(summary.bundle.flag_on)
    lines = [
        f"scan run {summary.run_id}: {'complete' if summary.complete else 'INCOMPLETE'}, "
        f"{summary.objects or 0:,} object(s)"
        + (f" in {wall:.0f} s ({rate:.1f} objects/s)" if wall and rate else ""),
        f"  scored {scored:,}" + (f"; not scored: {other}" if other else "; every object decoded"),
        f"  flagged {flagged:,}" + (f" ({flagged / scored:.1%} of scored)" if scored else "")
        + (f", low {flag_on}" if flag_on else ""),
    ]
    dup = summary.duplicates
    if dup:
        lines.append(f"  exact duplicates: {dup.rows:,} ({dup.within_run:,} of objects in this run, "
                     f"{dup.earlier_runs:,} of earlier runs' objects)")
    if summary.listing.skipped_done:
        lines.append(f"  skipped {summary.listing.skipped_done:,} object(s) already scanned with this bundle")
    lines += [f"  reports: {summary.reports}", f"  summary: {summary_uri}"]
    return lines
