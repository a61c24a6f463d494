"""Benchmark: `ood-audit plan`'s estimate against the real scan it estimates, on this machine.

    PYTHONPATH=. python benchmarks/sizing.py                 # 2000 objects at 32 px, sample 500, a few minutes
    PYTHONPATH=. python benchmarks/sizing.py --n 4000 --sample 300 --rounds 2

Everything runs here: an embedded SeaweedFS, a tiny ResNet18 bundle calibrated here (32 px, small_input) and
``--n`` stripe PNGs. Each round runs, each in a freshly started local Ray as a night would, the planner
(``ood-audit plan`` through the command line: it lists the inputs, scans ``--sample`` of them, estimates)
and then the full scan of the same inputs, timed from the call to its return (listing included, as in the
estimate). Printed per round: the estimate, the measured wall time, and estimate ÷ measured; the target
is within ±25 %. The machine's load average is printed: a busy machine slows both alike, not their ratio.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from benchmarks.scan import loadavg, make_bundle, start_ray
from ood_audit.cli import main as cli
from ood_audit.embedded.s3 import EmbeddedS3
from ood_audit.models import ModelSpec
from ood_audit.scan import ScanConfig, run_scan
from ood_audit.scan.sizing import NightPlan
from ood_audit.scan.summary import rows_steady_rate

from tests.datagen import stripe_set, upload

log = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="objects in the input (default 2000)")
    ap.add_argument("--sample", type=int, default=500, help="the planner's sample (default 500)")
    ap.add_argument("--rounds", type=int, default=1, help="plan + scan rounds (default 1)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("faiss.loader", "botocore", "urllib3", "ood_audit"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedS3() as s3srv:
        work = Path(tmp)
        client, s3 = s3srv.client(), s3srv.s3_config()
        os.environ.update(s3srv.env())
        client.create_bucket(Bucket="bench")
        bundle = make_bundle(work, ModelSpec("resnet18", 2, small_input=True, image_size=32), 120, "PNG")
        prefix = upload(client, "bench", "in", stripe_set(args.n, 32, "PNG", seed=2))
        log.info("%d objects under %s; load average %s", args.n, prefix, loadavg())
        rows = []
        for r in range(args.rounds):
            start_ray(s3srv.env())
            out = work / f"plan{r}.json"
            rc = cli(["plan", "--bundle", bundle, "--input", prefix, "--sample", str(args.sample),
                      "--json", str(out), "--s3-endpoint", s3.endpoint_url])
            assert rc == 0, rc
            plan = NightPlan.model_validate(json.loads(out.read_text()))
            est = plan.estimates[0]
            start_ray(s3srv.env())
            t = time.perf_counter()
            summary = run_scan(ScanConfig(bundle=bundle, output=f"s3://bench/out{r}", inputs=(prefix,), s3=s3),
                               start_ray=lambda: None).summary
            wall = time.perf_counter() - t
            assert summary.objects == args.n, summary.objects
            rows.append((est.wall_s, wall))
            steady = rows_steady_rate(f"s3://bench/out{r}", s3=s3)
            log.info("the full scan: steady %.1f obj/s (the sample's %.1f), so fixed %.1f s (the sample's %.1f)",
                     steady, plan.sample.rate(), wall - args.n / steady, plan.sample.fixed_s())
            log.info("round %d: estimate %.1f s (listing %.1f, fixed %.1f, scanning %.1f at %.1f obj/s; busiest "
                     "stage %s), measured %.1f s: estimate / measured %.2f; load average %s", r + 1, est.wall_s,
                     est.listing_s, est.fixed_s, est.scan_s, est.objects_per_s, plan.busiest_stage, wall,
                     est.wall_s / wall, loadavg())
    print(f"\nplanner estimate vs measured, {args.n} objects at 32 px, sample {args.sample}:")
    for i, (e, w) in enumerate(rows, 1):
        ok = "within" if abs(e / w - 1) <= 0.25 else "OUTSIDE"
        print(f"  round {i}: estimate {e:.1f} s, measured {w:.1f} s, ratio {e / w:.2f} ({ok} ±25 %)")


if __name__ == "__main__":
    main()
