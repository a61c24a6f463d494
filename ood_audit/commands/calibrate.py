"""`ood-audit calibrate`: block selection, CSD/kNN banks, thresholds -> audit bundle."""
from __future__ import annotations

import argparse
import json

from ood_audit.commands.common import (DEFAULT_PRECISION, DEFAULT_PROBES, PRECISIONS, DEFAULT_SELECTOR, SELECTORS, add_deprecated_alias, add_model_args, add_ray_args,
                     add_s3_args, positive, s3_from_args, spec_from_args, start_ray)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="build a versioned audit bundle from ID data and a trained model",
                       description="Split the ID data deterministically into bank and held-out parts, select the "
                                   "FeatureNorm block (the paper's NormRatio, or the robust / validated selectors, "
                                   "with the evidence of pseudo-OOD probes recorded either way), build the CSD and "
                                   "kNN banks, set thresholds at the target ID false-flag rate on held-out data, "
                                   "and write an immutable bundle.")
    p.add_argument("--data", required=True,
                   help="ID images: prefix (local, s3://, gs:// or az://) or manifest (.parquet/.csv); "
                        "class folders or a label "
                        "column make a labelled calibration, anything else an unlabelled one (with a notice)")
    p.add_argument("--unlabelled", action="store_true",
                   help="calibrate without labels (SPEC §16): the model's head is not one of these images' classes "
                        "(e.g. a backbone trained on other data). Only featurenorm, featurenorm2, csd and knn are "
                        "fitted, no class is predicted; --per-class-thresholds and logit scores are refused")
    p.add_argument("--model", required=True, help="safetensors weights (local, s3://, gs:// or az://)")
    p.add_argument("--output", required=True, help="bundle root; the bundle goes to OUTPUT/bundles/<id>/")
    add_model_args(p)
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    rate = p.add_argument("--id-flag-rate", type=float, default=0.05,
                          help="target ID false-flag rate: the share of held-out ID images the thresholds flag "
                               "(not a false positive rate, ID being the positive class; default 0.05)")
    add_deprecated_alias(p, "--target-fpr", rate)
    p.add_argument("--flag-on", default=None,
                   help="scores whose union decides `flagged` (default featurenorm,csd; when FeatureNorm looks "
                        "inverted at every candidate block, featurenorm2 replaces featurenorm and the bundle "
                        "records why). featurenorm2 flags unusually high norms too")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                   help="activations of every forward pass, in calibration and in every scan of the bundle "
                        f"(recorded in it; default {DEFAULT_PRECISION})")
    p.add_argument("--max-select", type=int, default=None, help="NormRatio on a deterministic subsample")
    p.add_argument("--block", default=None, help="force this block instead of the selector's choice")
    p.add_argument("--selector", default=DEFAULT_SELECTOR, choices=SELECTORS,
                   help="normratio: the paper's rule (argmax NormRatio); robust: the block whose worst pseudo-OOD "
                        "probe is separated best, never one where FeatureNorm looks inverted; validated: the "
                        f"lowest FPR95 on --outliers (default {DEFAULT_SELECTOR})")
    p.add_argument("--outliers", default=None, metavar="URI",
                   help="a few dozen known outliers from your own data (prefix or manifest); needed by "
                        "--selector validated, recorded as evidence otherwise")
    p.add_argument("--probes", default=",".join(DEFAULT_PROBES),
                   help=f"pseudo-OOD probes for the evidence (default {','.join(DEFAULT_PROBES)})")
    p.add_argument("--max-probe", type=int, default=2000, help="images for the probe evidence (default 2000)")
    p.add_argument("--k-csd", type=int, default=10)
    p.add_argument("--k-knn", type=int, default=50)
    p.add_argument("--bank-dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--per-class-thresholds", action="store_true",
                   help="also set thresholds per predicted class on its held-out images; a row is then flagged "
                        "against its predicted class's thresholds (classes with too few held-out images use the "
                        "global ones, and the bundle records which did)")
    p.add_argument("--per-class-min-images", type=int, default=100, metavar="N",
                   help="held-out images a class needs for its own thresholds (>= 50; default 100)")
    p.add_argument("--workers", type=int, default=2, help="Ray Data actors (0 = in-process, no Ray)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    add_s3_args(p)
    add_ray_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
    from ood_audit.runtime import resolve_device

    for name in ("k_csd", "k_knn", "batch_size", "max_select", "max_probe"):
        positive(name.replace("_", "-"), getattr(args, name))
    s3 = s3_from_args(args)
    cfg = CalibrateConfig(data=args.data, model=args.model, output=args.output, spec=spec_from_args(args),
                          heldout_fraction=args.heldout_fraction, id_flag_rate=args.id_flag_rate,
                          flag_on=None if args.flag_on is None else tuple(s for s in args.flag_on.split(",") if s),
                          precision=args.precision, seed=args.seed,
                          max_select=args.max_select, block=args.block, selector=args.selector,
                          outliers=args.outliers, probes=tuple(p for p in args.probes.split(",") if p),
                          max_probe=args.max_probe, k_csd=args.k_csd, k_knn=args.k_knn,
                          bank_dtype=args.bank_dtype, workers=args.workers, batch_size=args.batch_size,
                          device=resolve_device(args.device), s3=s3,
                          per_class_thresholds=args.per_class_thresholds,
                          per_class_min_images=args.per_class_min_images,
                          labelled=False if args.unlabelled else None)
    cfg.validate()
    if cfg.workers > 0:
        start_ray(args, s3)
    res = calibrate(cfg)
    print(json.dumps(res.summary, indent=2))
    print(res.bundle_uri)
    return 0
