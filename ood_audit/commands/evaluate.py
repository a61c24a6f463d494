"""`ood-audit evaluate`: block selection + every score, with FPR95/AUROC/AUPR per OOD set."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ood_audit.errors import ConfigError
from ood_audit.commands.common import ARCHITECTURES, DEFAULT_PRECISION, DEFAULT_SELECTOR, PRECISIONS, SELECTORS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score ID test and OOD folders and print OOD metrics",
                       description="Select the FeatureNorm block on the ID train folder (--selector), "
                                   "build the CSD and kNN banks from it, then score the ID test folder and each "
                                   "OOD folder. "
                                   "Metrics treat ID as the positive class (FPR95 at 95%% ID kept).")
    p.add_argument("--arch", required=True, choices=ARCHITECTURES, metavar="ARCH",
                   help=f"architecture: {', '.join(ARCHITECTURES)}")
    p.add_argument("--weights", required=True, help="local safetensors checkpoint (strictly loaded)")
    p.add_argument("--small-input", action="store_true", help="CIFAR-style stem (for ~32 px images)")
    p.add_argument("--image-size", type=int, default=None, help="input size in px (default 32 with --small-input, else 224)")
    p.add_argument("--id-train", required=True, help="ID training images (plain folder or class folders)")
    p.add_argument("--id-test", required=True, help="held-out ID images")
    p.add_argument("--ood", action="append", required=True, metavar="[NAME=]DIR", help="an OOD folder; repeatable")
    p.add_argument("--block", default=None, help="use this block instead of the selector's choice")
    p.add_argument("--selector", default=DEFAULT_SELECTOR, choices=SELECTORS,
                   help=f"block selector (default {DEFAULT_SELECTOR}; see `ood-audit calibrate --help`)")
    p.add_argument("--outliers", default=None, metavar="DIR", help="known outliers (needed by --selector validated)")
    p.add_argument("--max-select", type=int, default=None, help="deterministic subsample size for NormRatio")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--k-csd", type=int, default=10)
    p.add_argument("--k-knn", type=int, default=50)
    p.add_argument("--knn-backend", default="auto", choices=("auto", "faiss", "torch", "faiss-gpu"))
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="share of --id-train held out for the thresholds, as in `ood-audit calibrate`")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                   help=f"activations of every forward pass (default {DEFAULT_PRECISION})")
    p.add_argument("--bundle-out", default=None, metavar="ROOT",
                   help="keep the bundle evaluate calibrates under ROOT/bundles/<id>/ (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", dest="json_out", default=None, help="also write the table as JSON to this path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.evaluate import evaluate, format_table, model_spec, parse_ood_arg
    from ood_audit.runtime import resolve_device

    for field in ("batch_size", "k_csd", "k_knn", "image_size", "max_select"):
        v = getattr(args, field)
        if v is not None and v < 1:
            raise ConfigError(f"--{field.replace('_', '-')} must be >= 1, got {v}")
    ood = dict(parse_ood_arg(v) for v in args.ood)
    size = args.image_size or (32 if args.small_input else 224)
    spec = model_spec(args.arch, args.weights, small_input=args.small_input, image_size=size)
    res = evaluate(spec, args.weights, args.id_train, args.id_test, ood, block=args.block,
                   batch_size=args.batch_size, seed=args.seed, k_csd=args.k_csd, k_knn=args.k_knn,
                   knn_backend=args.knn_backend, max_select=args.max_select, device=resolve_device(args.device),
                   selector=args.selector, outliers=args.outliers, heldout_fraction=args.heldout_fraction,
                   precision=args.precision, bundle_root=args.bundle_out)
    print(format_table(res))
    if res.bundle:
        print(res.bundle)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res.to_json(), indent=2))
    return 0
