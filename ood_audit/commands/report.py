"""`ood-audit report`: one self-contained HTML page for a scan run (SPEC §13)."""
from __future__ import annotations

import argparse

from ood_audit.commands.common import DEFAULT_REPORT_TOP, add_s3_args, s3_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML audit report of a scan run (histograms, top anomalies, drift)",
        description="Read one scan run under REPORT (the scan's --output root) and write one HTML file with "
                    "everything inlined: the run's counts and timings, per-score histograms against held-out "
                    "ID, the most anomalous objects with their CSD deciding view and nearest ID neighbours, "
                    "a per-prefix table, drift of the flagged rate since the previous run, the data-quality "
                    "findings per issue (with a filter on the objects shown), and the objects that failed. It "
                    "opens offline.")
    p.add_argument("--report", required=True, metavar="URI",
                   help="the scan's output root (local, s3://, gs:// or az://), as given to `ood-audit scan --output`")
    p.add_argument("--run-id", default=None, help="the run to report on (default: the latest)")
    p.add_argument("--out", required=True, help="HTML file to write (local, s3://, gs:// or az://)")
    p.add_argument("--top", type=int, default=DEFAULT_REPORT_TOP,
                   help=f"most anomalous objects to show with thumbnails (default {DEFAULT_REPORT_TOP})")
    p.add_argument("--prefix-depth", type=int, default=1,
                   help="path components under the scanned input that make a prefix (default 1)")
    p.add_argument("--threads", type=int, default=16, help="parallel thumbnail reads (default 16)")
    add_s3_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.report import ReportOptions, write_report

    opts = ReportOptions(top=args.top, prefix_depth=args.prefix_depth, threads=args.threads)
    opts.validate()
    data = write_report(args.report, args.out, args.run_id, s3=s3_from_args(args), options=opts)
    rate = f"{100 * data.flag_rate:.1f}%" if data.flag_rate is not None else "n/a"
    changed = sum(r.significant for r in data.drift.rows)
    quality = f", {data.quality.with_issue:,} with a data-quality finding" if data.quality.present else ""
    print(f"wrote {args.out}: run {data.run.run_id}, {data.objects:,} objects, {data.flagged:,} flagged ({rate}){quality}, "
          f"{len(data.grid)} thumbnails, {changed} prefixes with a significant change")
    return 0
