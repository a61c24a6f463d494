"""`ood-audit bundle show URI`: a human summary of an audit bundle."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ood_audit.commands.common import add_s3_args, s3_from_args

MAX_CLASSES_LISTED = 20  # per line; a 1000-class bundle still prints a readable summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="inspect audit bundles")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    show = bsub.add_parser("show", help="print blocks and ratios, selected block, thresholds, findings, sizes, "
                                           "labels and where the weights came from")
    show.add_argument("uri", help="bundle directory (local or s3|gs|az://.../bundles/<id>)")
    show.add_argument("--json", action="store_true",
                      help="print bundle.json's metadata as JSON (with its quality, near_duplicates and "
                           "per_class parts when the bundle has them)")
    add_s3_args(show)
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from ood_audit.bundle.files import load_bundle
    from ood_audit.calibration.summary import format_bundle

    b = load_bundle(args.uri, s3=s3_from_args(args))
    if args.json:
        print(json.dumps(b.meta, indent=2))
    else:
        print(format_bundle(b) + "\n\n" + "\n".join(findings_lines(b.info)))
    return 0


def findings_lines(info: Any) -> list[str]:
    """The bundle's optional calibrated parts (:class:`~ood_audit.bundle.schema.BundleMeta` ``quality``,
    ``near_duplicates``, ``per_class``), each saying so when the bundle has none: a bundle written before a
    part existed, or calibrated without it, simply lacks that finding."""
    lines = ["findings calibrated in this bundle:"]
    q = info.quality
    if q is None:
        lines.append("  quality: no blurry threshold and no held-out grayscale share (the scan never reports "
                     "blurry or grayscale; the other checks use their fixed thresholds)")
    else:
        if q.grayscale_share is None:
            grey = "no held-out grayscale share (an older version): grayscale is not reported; calibrate again"
        else:
            grey = (f"{100 * q.grayscale_share:.1f}% of them grey, so grayscale is "
                    + ("reported" if q.config().reports_grayscale else "not reported: grey is normal here")
                    + " (SPEC §14: reported below 50%)")
        lines.append(f"  quality: blurry below Laplacian variance {q.blurry:.6g}, percentile {q.blurry_percentile:g} "
                     f"of {q.heldout_images} held-out ID images (working size {q.working_size} px); {grey}")
        if not q.comparable:
            lines.append(f"    measured on {q.measured_on} by an older version: scans do not check blur with it; "
                         "calibrate again")
    nd = info.near_duplicates
    if nd is None:
        lines.append("  near-duplicates: no tau (near_duplicate_of_id stays null)")
    else:
        lines.append(f"  near-duplicates: tau = {nd.threshold:.6g} (nearest kNN-bank distance), set so that "
                     f"at most {100 * nd.rate:g}% of {nd.heldout_images} held-out ID images fall under it")
    pc = info.per_class
    if pc is None:
        lines.append("  per-class thresholds: none (every class uses the global thresholds)")
        return lines
    n = info.model.num_classes
    names = info.model.class_names or []
    lines.append(f"  per-class thresholds: {len(pc.classes)} of {n} classes have their own, {len(pc.fallback)} "
                 "fall back to the global thresholds")
    lines.append(f"    (own thresholds need {pc.min_images} held-out images of the predicted class; target ID flag "
                 f"rate {pc.target_id_flag_rate:g}, flag_on {', '.join(pc.flag_on)})")
    own = {c: t.images for c, t in pc.classes.items()}
    for label, counts in (("own", own), ("fallback", pc.fallback)):
        if counts:
            lines.append(f"    {label} (class: held-out images): {_classes(counts, names)}")
    return lines


def _classes(counts: dict[int, int], names: list[str]) -> str:
    items = sorted(counts.items())
    shown = [f"{c}{f' {names[c]}' if 0 <= c < len(names) else ''}: {k}" for c, k in items[:MAX_CLASSES_LISTED]]
    more = len(items) - len(shown)
    return ", ".join(shown) + (f", ... and {more} more" if more else "")
