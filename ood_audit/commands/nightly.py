"""`ood-audit nightly --config nightly.yaml`: the scheduled job (scan -> exports -> report) under a lease."""
from __future__ import annotations

import argparse
import json

from ood_audit.commands.common import add_ray_args, start_ray


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nightly", help="the scheduled job: incremental scan, exports and report, one run at a time",
        description="Run one nightly audit from a YAML config: an incremental scan of the configured prefixes "
                    "with the configured bundle, then each export, then the HTML report with drift against the "
                    "previous run. A lease under the output root keeps two runs from overlapping. Each export "
                    "catches up: it sends every committed row of the bundle not yet sent to its destination, from "
                    "tonight's run or any earlier one, so a night whose scan stopped (its committed chunks are "
                    "not scanned again) or whose export failed is delivered by the next night. Exit status: "
                    "0 done (whatever was found), 2 bad configuration or input, 3/6/7/8 storage unreachable, "
                    "credentials refused, no bucket, access denied, 4 scan incomplete (the next "
                    "run scans the rest and exports what was committed), 5 an export or the report failed (the "
                    "next night sends what is missing; or re-run), 75 another "
                    "run holds the lease, 1 unexpected error.")
    p.add_argument("--config", required=True, help="the job's YAML file (see the README for an example)")
    p.add_argument("--run-id", default=None, help="name of the run (default: start time + random)")
    p.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_ray_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.io.fs import S3Config
    from ood_audit.nightly.config import load_config
    from ood_audit.nightly.run import run_nightly

    cfg = load_config(args.config)
    if args.check:
        print(json.dumps(cfg.model_dump(), indent=2))
        return 0
    res = run_nightly(cfg, run_id=args.run_id,
                      start_ray=lambda: start_ray(args, S3Config.from_env(cfg.s3.endpoint_url)))
    if args.json:
        print(json.dumps({"run_id": res.run_id, "status": res.status, "errors": res.errors,
                          "scan": res.scan.to_json() if res.scan is not None else {},
                          "exports": res.exports, "report": res.report, "seconds": res.seconds}, indent=2))
    else:
        print("\n".join(res.lines()))
    return res.status
