"""Report build on a large constructed run: streaming (`ood-audit report`) against a naive pandas pass.

    python benchmarks/report.py [--rows 1000000] [--workdir DIR]

Writes two nights of ``--rows`` report rows each (the scan's layout, written with pyarrow directly, with a
small constructed bundle), then measures in fresh subprocesses, one at a time:

- **streaming**: :func:`ood_audit.report.write_report` (one batch pass per run, streaming top-N);
- **naive**: read every column of the run into pandas, sort by anomaly for the top N, group by prefix and
  take histograms from the full columns (what a notebook would do), without rendering a page.

It prints wall time and peak RSS (``ru_maxrss``) of each, and their ratios, and the streaming build's time and
memory at a fifth of the rows (memory should stay nearly flat in the run's size). Only the ratios measured in
this one run mean anything: absolute figures depend on the machine and are not comparable across runs.
The grid's objects do not exist on disk, so thumbnails are placeholders (the read of 48 objects is not
what this measures).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_audit.bundle.write import bank_sources, write_bundle  # noqa: E402
from ood_audit.io.fs import write_bytes  # noqa: E402
from ood_audit.io.thumbs import thumbnail_jpeg  # noqa: E402
from ood_audit.io.uri import join_uri  # noqa: E402
from ood_audit.store.schema import SPEC_SCORES, part_name, partition_uri, report_schema, write_part  # noqa: E402
from ood_audit.store.runs import SUMMARY_JSON, run_dir  # noqa: E402

PREFIXES = 20
PART_ROWS = 100_000
TOP = 48

MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
mode, output, run_id, out = sys.argv[1:5]
if mode == "streaming":
    from ood_audit.report import ReportOptions, write_report
    data = write_report(output, out, run_id, options=ReportOptions(top={top}))
    result = {{"flagged": data.flagged, "top": [it.uri for it in data.grid[:5]]}}
else:
    import numpy as np, pandas as pd
    import pyarrow.dataset as pads
    from ood_audit.store.runs import find_run, previous_run, run_dataset
    run = find_run(output, run_id)
    df = run_dataset(run).to_table().to_pandas()
    df["anomaly"] = 1 - df[["pct_featurenorm", "pct_csd"]].min(axis=1) / 100
    top = df[df.status == "ok"].sort_values(["anomaly", "uri"], ascending=[False, True]).head({top})
    df["prefix"] = df.uri.str.split("/").str[3]
    by = df.groupby("prefix").agg(objects=("uri", "size"), flagged=("flagged", "sum"))
    hists = {{s: np.histogram(df[s].dropna(), bins=60) for s in ("featurenorm", "csd", "msp", "energy", "maxlogit", "knn")}}
    before = run_dataset(previous_run(output, run)).to_table().to_pandas()
    before["prefix"] = before.uri.str.split("/").str[3]
    prev = before.groupby("prefix").agg(flagged=("flagged", "sum"))
    result = {{"flagged": int(df.flagged.sum()), "top": top.uri.head(5).tolist()}}
result["seconds"] = time.perf_counter() - t0
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def write_night(output: str, run_id: str, n: int, day: int, bundle_id: str, bundle_uri: str,
                rng: np.random.Generator) -> None:
    """``n`` rows of run ``run_id`` in the scan's layout, plus its summary (no Python row loops)."""
    created = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc) + timedelta(days=day)
    schema = report_schema()
    partition = partition_uri(output, f"{created:%Y-%m-%d}")
    flagged_total, counts = 0, {"ok": 0, "decode_error": 0, "missing": 0, "too_large": 0, "unsupported": 0}
    for chunk, start in enumerate(range(0, n, PART_ROWS)):
        m = min(PART_ROWS, n - start)
        idx = np.arange(start, start + m)
        ok = rng.random(m) > 0.01
        pct = {s: np.where(ok, rng.uniform(0, 100, m), np.nan).astype(np.float32) for s in SPEC_SCORES}
        flagged = (pct["featurenorm"] < 3.5) | (pct["csd"] < 3.5)
        offsets = pa.array(np.arange(0, 3 * m + 1, 3, dtype=np.int32))
        cols = {
            "run_id": pa.array([run_id] * m), "bundle_id": pa.array([bundle_id] * m),
            "uri": pa.array([f"/bench/in/p{i % PREFIXES:02d}/{i:08d}.png" for i in idx]),
            "etag": pa.array([None] * m, pa.string()), "size_bytes": pa.array(np.full(m, 1000)),
            "status": pa.array(np.where(ok, "ok", "decode_error")),
            "error": pa.array([None if o else "decode_error: constructed" for o in ok], pa.string()),
            "width": pa.array(np.full(m, 64, np.int32)), "height": pa.array(np.full(m, 48, np.int32)),
            **{s: pa.array(np.where(ok, rng.normal(size=m), np.nan), mask=~ok) for s in SPEC_SCORES},
            "csd_view": pa.array(rng.integers(0, 6, m).astype(np.int8), mask=~ok),
            "pred_class": pa.array(rng.integers(0, 10, m).astype(np.int32), mask=~ok),
            "knn_nn": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 500, 3 * m).astype(np.int32))),
            "knn_nn_dist": pa.ListArray.from_arrays(offsets, pa.array(np.sort(rng.random((m, 3)), 1).ravel()
                                                                       .astype(np.float32))),
            **{f"pct_{s}": pa.array(v, mask=~ok) for s, v in pct.items()},
            "flagged": pa.array(flagged, mask=~ok),
            "flag_reasons": pa.array([["featurenorm"] if f else [] for f in flagged], pa.list_(pa.string())),
            "scanned_at": pa.array(np.full(m, np.datetime64(created.replace(tzinfo=None), "us")),
                                   pa.timestamp("us", tz="UTC")),
        }
        table = pa.table([cols[f.name].cast(f.type) for f in schema], schema=schema)
        write_part(table, join_uri(partition, part_name(run_id, chunk, 1, f"d{chunk}")))
        flagged_total += int(flagged[ok].sum())
        counts["ok"] += int(ok.sum())
        counts["decode_error"] += int((~ok).sum())
    doc = {"run_id": run_id, "run_date": f"{created:%Y-%m-%d}", "complete": True,
           "bundle": {"id": bundle_id, "uri": bundle_uri, "flag_on": ["featurenorm", "csd"]},
           "inputs": ["/bench/in"], "objects": n, "counts": counts, "flagged": flagged_total,
           "throughput": {"objects_per_s": None, "steady_objects_per_s": None, "startup_s": None},
           "timings_s": {}, "created_at": created.isoformat()}
    write_bytes(join_uri(run_dir(output, run_id), SUMMARY_JSON), json.dumps(doc).encode())


def write_fake_bundle(root: str, rng: np.random.Generator) -> tuple[str, str]:
    """A bundle with thresholds, held-out quantiles and 500 bank sources (no usable model: not needed)."""
    q = np.quantile(rng.normal(size=20_000), np.linspace(0, 1, 1001)).tolist()
    meta = {"schema_version": 2,
            "model": {"arch": "resnet18", "num_classes": 10, "small_input": True, "image_size": 32,
                      "mean": [0.5] * 3, "std": [0.25] * 3},
            "preprocess": {}, "selection": {"ratios": {"layer3.1": 1.5}, "selected": "layer3.1"},
            "thresholds": {"target_id_flag_rate": 0.05, "heldout_images": 20_000, "flag_on": ["featurenorm", "csd"],
                           "per_score": {s: q[50] for s in SPEC_SCORES}, "flag": {"featurenorm": q[35], "csd": q[35]}},
            "heldout_quantiles": {s: q for s in SPEC_SCORES},
            "knn": {"k": 50, "bank_size": 500, "dim": 512, "file": "knn_bank.safetensors",
                    "sources": "knn_sources.parquet"}}
    thumbs = [thumbnail_jpeg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(500)]
    sources = bank_sources([f"/bench/id/{i}.png" for i in range(500)], thumbs)
    uri = write_bundle(root, meta, files={"model.safetensors": b"not a model", "knn_sources.parquet": sources})
    return uri.rsplit("/", 1)[1], uri


def measure(mode: str, output: str, out: str) -> dict:
    code = MEASURE.format(root=str(ROOT), top=TOP)
    res = subprocess.run([sys.executable, "-c", code, mode, output, "night-2", out], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per night (default 1,000,000)")
    ap.add_argument("--workdir", default=None, help="where to write the runs (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ood-audit-bench-report-"))
    output = str(work / "out")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    bundle_id, bundle_uri = write_fake_bundle(str(work), rng)
    write_night(output, "night-1", args.rows, 0, bundle_id, bundle_uri, rng)
    write_night(output, "night-2", args.rows, 1, bundle_id, bundle_uri, rng)
    small_output, small_rows = str(work / "small"), max(1, args.rows // 5)
    write_night(small_output, "night-1", small_rows, 0, bundle_id, bundle_uri, rng)
    write_night(small_output, "night-2", small_rows, 1, bundle_id, bundle_uri, rng)
    print(f"wrote 2 nights x {args.rows:,} rows (and 2 x {small_rows:,}) in {time.perf_counter() - t0:.1f} s "
          f"under {work}")
    base = measure_baseline()
    small = measure("streaming", small_output, str(work / "small.html"))
    s = measure("streaming", output, str(work / "report.html"))
    n = measure("naive", output, "")
    assert s["top"] == n["top"], "the streaming top-N must equal the full sort"
    size = (work / "report.html").stat().st_size
    print(f"interpreter baseline peak RSS: {base:.0f} MB")
    print(f"streaming report: {s['seconds']:.1f} s, peak RSS {s['peak_rss_mb']:.0f} MB (page {size / 1e6:.2f} MB)")
    print(f"naive pandas:     {n['seconds']:.1f} s, peak RSS {n['peak_rss_mb']:.0f} MB (no page rendered)")
    print(f"ratios (naive / streaming): time {n['seconds'] / s['seconds']:.2f}x, peak RSS "
          f"{n['peak_rss_mb'] / s['peak_rss_mb']:.2f}x, RSS above baseline "
          f"{(n['peak_rss_mb'] - base) / max(s['peak_rss_mb'] - base, 1):.2f}x")
    print(f"streaming at {args.rows:,} vs {small_rows:,} rows: time {s['seconds'] / small['seconds']:.2f}x, RSS above "
          f"baseline {(s['peak_rss_mb'] - base) / max(small['peak_rss_mb'] - base, 1):.2f}x (5x the rows)")


def measure_baseline() -> float:
    code = ("import resource, sys; sys.path.insert(0, %r); import pandas, pyarrow.dataset, ood_audit.report; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)" % str(ROOT))
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main()
