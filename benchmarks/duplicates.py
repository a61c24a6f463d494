"""Benchmark: the ``duplicate_of`` pass after a scan (ood_audit.scan.duplicates). Prints figures, asserts nothing.

    PYTHONPATH=. .venv/bin/python benchmarks/duplicates.py
    PYTHONPATH=. .venv/bin/python benchmarks/duplicates.py --run 10000,40000 --index 10000,200000

On local disk, without Ray: part files are written the way the scan's write tasks write them
(``write_parts`` with digest staging, 8192 rows per part), 5% of each run's objects are copies of another
object of the run and 5% re-uploads of an earlier run's bytes. Then the pass runs. Printed, each measured in
this one process:

- the pass's time per object against decoding one photo to 224 px (``decode_image`` of scikit-image's
  astronaut as a JPEG, in this process), a small part of what the scan spends on each object;
- how the pass's time per object grows with the run's size, for one index size (linear is the goal);
- how it grows with the index that earlier runs built, for one run size: the pass reads only the index row
  groups whose digest range brackets one of the run's digests, so the growth shows how much of the index
  a run touches.

Every run's expected duplicate count is derived from how it was built and checked after the pass.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATE = "2026-12-01"
PART_ROWS = 8192


def _digests(tag: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{tag}:{i}".encode()).hexdigest() for i in range(n)]


def write_run(out: str, run_id: str, digests: list[str]) -> tuple[list[str], float]:
    """Write one run's parts (plan order = list order); returns the part names and the seconds it took."""
    from ood_audit.scan.duplicates import STAGING_DIR, prefix_chars_for
    from ood_audit.store.run_ledger import RunLayout
    from ood_audit.scan.rows import CHUNK, DIGEST, READ_S, SEQ, RowBuilder
    from ood_audit.scan.write import write_parts
    from ood_audit.store.schema import partition_uri

    layout, partition = RunLayout(out, run_id), partition_uri(out, DATE)
    builder = RowBuilder({}, "bid", run_id, ["featurenorm"])
    names: list[str] = []
    start = time.perf_counter()
    for c, lo in enumerate(range(0, len(digests), PART_ROWS)):
        chunk = digests[lo:lo + PART_ROWS]
        n = len(chunk)
        batch = {"uri": np.array([f"s3://b/{run_id}/{lo + i:08d}.jpg" for i in range(n)], dtype=object),
                 "etag": np.array(["e"] * n, dtype=object), "size": np.full(n, 1000, np.int64),
                 "status": np.array(["missing"] * n, dtype=object), "error": np.array(["-"] * n, dtype=object),
                 "width": np.full(n, -1, np.int32), "height": np.full(n, -1, np.int32),
                 DIGEST: np.array(chunk, dtype=object), CHUNK: np.full(n, c, np.int32),
                 SEQ: np.arange(n, dtype=np.int32), READ_S: np.zeros(n, np.float32)}
        feed = write_parts(builder.build(batch, None), partition=partition, run_id=run_id, attempt=1,
                           staging=layout.file(STAGING_DIR), prefix_chars=prefix_chars_for(len(digests)))
        names += feed.column("file").to_pylist()
    return sorted(names), time.perf_counter() - start


def one(work: Path, index_size: int, run_size: int) -> dict[str, float]:
    from ood_audit.scan.duplicates import prefix_chars_for, resolve_duplicates
    from ood_audit.store.run_ledger import RunLayout
    from ood_audit.store.schema import partition_uri

    out = str(work / f"out-{index_size}-{run_size}")
    earlier = _digests("earlier", index_size)
    names, _ = write_run(out, "night0", earlier)
    layout0 = RunLayout(out, "night0")
    resolve_duplicates(out, "night0", layout0.run_dir, partition_uri(out, DATE), names,
                       prefix_chars=prefix_chars_for(index_size))
    rng = np.random.default_rng(0)
    fresh = _digests("fresh", run_size)
    n_copy = n_reup = run_size // 20
    slots = rng.permutation(np.arange(1, run_size))[: n_copy + n_reup]
    for s in slots[:n_copy]:
        fresh[s] = fresh[int(rng.integers(0, s))]  # a copy of an object earlier in the plan
    for s in slots[n_copy:]:
        fresh[s] = earlier[int(rng.integers(0, index_size))]
    # Every row names a first URI but the first row of each digest new to the index (an earlier night's
    # digest: all of this run's rows name the earlier URI).
    expected = run_size - len(set(fresh) - set(earlier))
    names, write_s = write_run(out, "night1", fresh)
    layout = RunLayout(out, "night1")
    t = time.perf_counter()
    stats = resolve_duplicates(out, "night1", layout.run_dir, partition_uri(out, DATE), names,
                               prefix_chars=prefix_chars_for(run_size))
    pass_s = time.perf_counter() - t
    if stats.rows != expected:
        sys.exit(f"index {index_size}, run {run_size}: {stats.rows} duplicate rows, expected {expected}")
    shutil.rmtree(out, ignore_errors=True)
    return {"pass_s": pass_s, "write_s": write_s, "rows": stats.rows, "files": stats.files_rewritten}


def decode_s() -> float:
    """Median seconds of the product's decode of a 512 px photo JPEG to the 224 px model input."""
    import io
    import statistics

    from PIL import Image
    from skimage import data

    from ood_audit.io.decode import Preprocess, decode_image

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "JPEG", quality=90)
    jpeg, pre = buf.getvalue(), Preprocess(size=224, resize_shorter=256)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        decode_image(jpeg, size=pre)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="10000,40000", help="run sizes (smallest first), at the smallest index size")
    ap.add_argument("--index", default="10000,200000", help="earlier runs' digests (smallest first), at the "
                                                          "smallest run size")
    args = ap.parse_args()
    runs, indexes = [int(x) for x in args.run.split(",")], [int(x) for x in args.index.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dup-bench-"))
    try:
        base = one(work, indexes[0], runs[0])
        dec = decode_s()
        print(f"run {runs[0]} objects, index {indexes[0]}: pass {base['pass_s']:.2f} s, "
              f"{base['pass_s'] / runs[0] * 1e6:.0f} µs/object = {base['pass_s'] / runs[0] / dec:.3f}× decoding one "
              f"photo to 224 px ({dec * 1e3:.1f} ms); {base['rows']} duplicate rows in {base['files']} rewritten parts")
        for n in runs[1:]:
            r = one(work, indexes[0], n)
            print(f"run {n} objects, index {indexes[0]}: {r['pass_s'] / n * 1e6:.0f} µs/object "
                  f"({r['pass_s'] / n / dec:.3f}× a decode), ×{(r['pass_s'] / n) / (base['pass_s'] / runs[0]):.2f} per "
                  f"object against run {runs[0]}")
        for m in indexes[1:]:
            r = one(work, m, runs[0])
            print(f"run {runs[0]} objects, index {m}: pass ×{r['pass_s'] / base['pass_s']:.2f} the time with index "
                  f"{indexes[0]} (index ×{m / indexes[0]:.0f}); {r['pass_s'] / runs[0] / dec:.3f}× a decode per object")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
