"""`ood-audit bundle show URI`: a human summary of an audit bundle."""
from __future__ import annotations

import argparse
import json

from .common import add_s3_args, s3_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="inspect audit bundles")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    show = bsub.add_parser("show", help="print blocks and ratios, selected block, thresholds, sizes")
    show.add_argument("uri", help="bundle directory (local or s3://.../bundles/<id>)")
    show.add_argument("--json", action="store_true", help="print bundle.json's metadata as JSON")
    add_s3_args(show)
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from ..calibration.bundle import load_bundle
    from ..calibration.summary import format_bundle

    b = load_bundle(args.uri, s3=s3_from_args(args))
    print(json.dumps(b.meta, indent=2) if args.json else format_bundle(b))
    return 0
