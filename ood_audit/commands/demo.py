"""`ood-audit demo`: the product tour (train, calibrate, two nightly scans, exports, report) on an embedded default."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on generated data, an embedded S3 and a local Ray")
    p.add_argument("--workdir", default=None, help="where the embedded S3 keeps its data (default: a temp dir)")
    p.add_argument("--quick", action="store_true",
                   help="the same stages on a smaller training set with fewer epochs (a few minutes)")
    p.add_argument("--epochs", type=int, default=None, help="cross-entropy epochs (default 10; 7 with --quick)")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="ALPA fine-tuning epochs after it (0: none; default 1)")
    p.add_argument("--keep-server", action="store_true", help="leave the embedded S3 running until Ctrl-C")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers and calibration actors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.demo import run_demo
    from ood_audit.demo.tour import FULL, QUICK
    from ood_audit.commands.common import positive

    positive("epochs", args.epochs)
    positive("workers", args.workers)
    if args.finetune_epochs is not None and args.finetune_epochs < 0:
        from ood_audit.errors import ConfigError

        raise ConfigError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    run_demo(args.workdir, epochs=args.epochs, finetune_epochs=args.finetune_epochs, workers=args.workers,
             keep_server=args.keep_server, size=QUICK if args.quick else FULL)
    return 0
