"""`ood-audit demo`: train -> calibrate -> scan end to end on an embedded S3 server and a local Ray."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on generated data, an embedded S3 and a local Ray")
    p.add_argument("--workdir", default=None, help="where the embedded S3 keeps its data (default: a temp dir)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers and calibration actors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from .common import positive

    positive("epochs", args.epochs)
    positive("workers", args.workers)
    run_demo(args.workdir, epochs=args.epochs, workers=args.workers)
    return 0
