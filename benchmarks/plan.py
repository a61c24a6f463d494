"""Benchmark: planning a scan (and its read stage) for a million objects, against ten thousand.

    PYTHONPATH=. python benchmarks/plan.py                  # 10,000 and 1,000,000 objects, a few minutes
    PYTHONPATH=. python benchmarks/plan.py --n 10000,100000 # quicker

No GPU and no bucket of a million images is needed: the manifest lists N keys that point, in turn, at a
few small images on local disk. Each N runs in a fresh process (so that its peak RSS is its own), which

1. **plans** the run as the scan does (the manifest streams page by page through :func:`skip_done` and
   :func:`rechunk` into one plan file per chunk, then ``plan.json``), and
2. runs the **read stage** of the pipeline on a local Ray: :class:`~ood_audit.scan.read.PlanDatasource`
   read tasks over every slice of the plan, their rows counted in the tasks, so the driver holds what it
   holds during a real scan: slice descriptors and Ray Data's plan, never the keys.

Printed per N: planning time (and µs per object), the driver's peak RSS after planning and after the
read stage (``ru_maxrss`` of that process; Ray's own processes are not the driver), and the ratios of the
largest N to the smallest: RSS (flat in N means ≤ 1.2) and planning time per object (linear in N means
about 1). Scanning a million images end to end does not fit in minutes on two cores; the read stage
shows what the driver pays for N.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DISTINCT_IMAGES = 16


def make_manifest(root: Path, n: int) -> Path:
    """A Parquet manifest of ``n`` rows (uri, size) over :data:`DISTINCT_IMAGES` small PNGs in ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths, sizes = [], []
    for i in range(DISTINCT_IMAGES):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
        p = root / f"img{i:02d}.png"
        p.write_bytes(buf.getvalue())
        paths.append(str(p))
        sizes.append(len(buf.getvalue()))
    manifest = root / f"manifest-{n}.parquet"
    writer = pq.ParquetWriter(manifest, pa.schema([("uri", pa.string()), ("size", pa.int64())]))
    step = 100_000
    for start in range(0, n, step):
        idx = np.arange(start, min(n, start + step)) % DISTINCT_IMAGES
        writer.write_table(pa.table({"uri": pa.array(np.array(paths, dtype=object)[idx]),
                                     "size": pa.array(np.array(sizes, dtype=np.int64)[idx])}))
    writer.close()
    return manifest


def child(manifest: str, output: str, chunk_size: int, slice_rows: int) -> dict:
    """One N, in this (fresh) process: plan, then the read stage; returns timings and peak RSS."""
    from ood_audit.ray_setup import init_ray
    from ood_audit.store.run_ledger import RunLedger, RunLayout
    from ood_audit.scan.plan import Skipped, listing_pages, rechunk, skip_done
    from ood_audit.scan.read import PlanDatasource

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rss_start = peak_mib()
    t = time.perf_counter()
    ledger = RunLedger(RunLayout(output, "bench"))
    ledger.open({"manifest": manifest})
    counter = Skipped()
    pages = skip_done(listing_pages((), manifest), None, counter)
    plan = ledger.write_plan(rechunk(pages, chunk_size), slice_rows=slice_rows)
    plan_s = time.perf_counter() - t
    rss_plan = peak_mib()

    init_ray(num_cpus=2, object_store_memory=256 * 2**20)
    import ray

    t = time.perf_counter()
    slices = ledger.slices(plan, range(len(plan.chunk_rows)))
    ds = ray.data.read_datasource(PlanDatasource(slices), override_num_blocks=len(slices))
    ds = ds.map_batches(lambda b: {"rows": np.array([len(b["uri"])])}, batch_size=None, batch_format="numpy")
    rows = sum(int(b["rows"].sum()) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    read_s = time.perf_counter() - t
    ray.shutdown()
    assert rows == plan.objects == counter.listed, (rows, plan.objects, counter.listed)
    return {"objects": plan.objects, "chunks": len(plan.chunk_rows), "slices": len(slices),
            "plan_s": round(plan_s, 2), "plan_us_per_object": round(plan_s / plan.objects * 1e6, 2),
            "read_stage_s": round(read_s, 2), "rss_start_mib": round(rss_start), "rss_after_plan_mib": round(rss_plan),
            "rss_after_read_mib": round(peak_mib())}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="10000,1000000", help="comma list of manifest sizes (smallest first)")
    ap.add_argument("--chunk-size", type=int, default=10_000)
    ap.add_argument("--slice-rows", type=int, default=256)
    ap.add_argument("--child", nargs=2, metavar=("MANIFEST", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.child:
        print(json.dumps(child(*args.child, args.chunk_size, args.slice_rows)))
        return
    ns = [int(x) for x in args.n.split(",")]
    work = Path(tempfile.mkdtemp(prefix="plan-bench-"))
    print(f"plan benchmark: N = {ns}, chunk_size {args.chunk_size}, slice_rows {args.slice_rows}; "
          f"{os.cpu_count()} CPUs, load {loadavg()}")
    out: dict[int, dict] = {}
    try:
        for n in ns:
            manifest = make_manifest(work, n)
            proc = subprocess.run([sys.executable, __file__, "--child", str(manifest), str(work / f"out{n}"),
                                   "--chunk-size", str(args.chunk_size), "--slice-rows", str(args.slice_rows)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                sys.exit(f"N={n} failed:\n{proc.stderr[-3000:]}")
            out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = out[n]
            print(f"N={n}: planned in {r['plan_s']} s ({r['plan_us_per_object']} µs/object, {r['chunks']} chunks); "
                  f"read stage {r['read_stage_s']} s over {r['slices']} slices; driver peak RSS "
                  f"{r['rss_after_plan_mib']} MiB after planning, {r['rss_after_read_mib']} MiB after the read stage "
                  f"(imports alone {r['rss_start_mib']} MiB); load {loadavg()}")
            shutil.rmtree(work / f"out{n}", ignore_errors=True)
            manifest.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lo, hi = out[ns[0]], out[ns[-1]]
    ratios = {"objects": hi["objects"] / lo["objects"],
              "rss_after_plan": round(hi["rss_after_plan_mib"] / lo["rss_after_plan_mib"], 3),
              "rss_after_read": round(hi["rss_after_read_mib"] / lo["rss_after_read_mib"], 3),
              "plan_time": round(hi["plan_s"] / lo["plan_s"], 1),
              "plan_time_per_object": round(hi["plan_us_per_object"] / lo["plan_us_per_object"], 3)}
    print(f"N={ns[-1]} / N={ns[0]} ({ratios['objects']:.0f}x the objects): driver peak RSS x{ratios['rss_after_plan']} "
          f"after planning, x{ratios['rss_after_read']} after the read stage (target <= 1.2); planning time "
          f"x{ratios['plan_time']}, per object x{ratios['plan_time_per_object']} (linear in N: about 1)")
    print(json.dumps({"runs": out, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
