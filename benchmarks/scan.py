"""Benchmark: the scan pipeline against an in-process ceiling, memory against N, and the listing rate.

    PYTHONPATH=. python benchmarks/scan.py --quick     # a few minutes
    PYTHONPATH=. python benchmarks/scan.py             # full sizes

Everything runs on this machine: an embedded SeaweedFS (S3), a local Ray, tiny ResNet18 bundles
calibrated here on generated stripe images (small_input at 32 px; the ImageNet stem at 224 px).

- **P1 pipeline efficiency**: the scan's steady-state throughput (S3 → fetch + decode tasks → scoring
  actors → Parquet part files, after the first file is written) divided by the in-process ceiling:
  decode + forward + scores + report rows of the same images already in memory as bytes, in one process
  on the same cores (the better of 1 and 2 torch threads, measured before and after the scan and
  averaged). Start-up (Ray Data planning, actor start,
  bundle load, until the first batch is scored) is reported separately, with the end-to-end ratio. A
  second ceiling also fetches the objects from S3 (16 threads), so that the ratio against it shows what
  the Ray pipeline itself costs; the S3 server shares the same cores here, which a real bucket would not.
- **CPU efficiency** (the same comparison in CPU seconds per image, which other load on a shared machine
  barely moves): the in-process ceiling's CPU time against the CPU time of every process of the scan
  (driver, Ray's GCS and raylet, read and write tasks, actors), start-up included; the S3 server is left out.
- **Memory flat in N**: peak memory summed over the driver and every process under it (the local Ray's
  GCS, raylet, workers; sampled from /proc every 0.25 s) while scanning N tiny local images, at two N.
  Both RSS (counts shared object-store pages once per process) and PSS (shares them out) are printed.
- **Listing rate**: keys/s of the paginated S3 listing.

Every ratio comes from timings taken in the same run. The machine's load average is printed: other
processes on a shared box change the absolute numbers far more than the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ood_audit import build_model, save_weights
from ood_audit.calibration.bundle import open_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.embedded_s3 import EmbeddedS3
from ood_audit.io.decode import Preprocess, decode_image
from ood_audit.io.listing import iter_listing_pages
from ood_audit.io.reader import read_object
from ood_audit.models import ModelSpec
from ood_audit.scan.rows import CHUNK, READ_S, SEQ, RowBuilder
from ood_audit.scan.run import ScanConfig, run_scan, steady_rate
from ood_audit.calibration.scoring import scorer_from_bundle

log = logging.getLogger("bench")
CEILING_IMAGES = 2000  # the in-process ceiling is measured on at most this many of the images


# -- data --------------------------------------------------------------------------------------------

def stripes(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    a = np.zeros((size, size, 3), np.uint8)
    period = max(2, size // 8) + int(rng.integers(0, 3))
    if cls == 0:
        a[:, ::period] = 200
    else:
        a[::period, :] = 200
    return np.clip(a.astype(int) + rng.integers(0, 40, a.shape), 0, 255).astype(np.uint8)


def encode(a: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def image_set(n: int, size: int, fmt: str, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    ext = "jpg" if fmt == "JPEG" else "png"
    return {f"class{i % 2}/{i // 1000:03d}/{i:06d}.{ext}": encode(stripes(i % 2, rng, size), fmt) for i in range(n)}


def write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def make_bundle(work: Path, spec: ModelSpec, n_id: int, fmt: str) -> str:
    torch.manual_seed(0)
    mdir = work / f"model{spec.image_size}"
    mdir.mkdir(parents=True)
    save_weights(build_model(spec.arch, spec.num_classes, small_input=spec.small_input), mdir / "model.safetensors")
    (mdir / "model.json").write_text(json.dumps(spec.to_dict()))
    size = spec.image_size if spec.small_input else spec.image_size + 32
    data = write_dir(work / f"id{spec.image_size}", image_set(n_id, size, fmt, seed=1))
    res = calibrate(CalibrateConfig(data=str(data), model=str(mdir / "model.safetensors"),
                                    output=str(work / "bundles"), heldout_fraction=0.25, workers=0, k_knn=10,
                                    min_heldout=10, batch_size=32))
    return res.bundle_uri


def upload(client, bucket: str, prefix: str, files: dict[str, bytes], threads: int = 8) -> str:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=f"{prefix}/{kv[0]}", Body=kv[1]),
                      files.items()))
    return f"s3://{bucket}/{prefix}"


# -- measurements ------------------------------------------------------------------------------------

def ceiling(bundle_uri: str, blobs: list, batch: int, threads: int, s3=None) -> float:
    """img/s of decode + forward + scores + rows on bytes in memory, one process, ``threads`` torch threads.

    With ``s3``, ``blobs`` are URIs, fetched first on 16 threads (the in-process equivalent of the scan's
    read stage), so only what Ray adds stays between this and the scan.
    """
    torch.set_num_threads(threads)
    bundle = open_bundle(bundle_uri)
    scorer = scorer_from_bundle(bundle)
    rows = RowBuilder(bundle.info, bundle.id, "bench", scorer.score_names)
    pre = Preprocess.from_dict(dict(bundle.info.preprocess))
    pool = ThreadPoolExecutor(16 if s3 is not None else 2)

    def load(item):
        data = read_object(item, s3=s3)[0] if s3 is not None else item
        return decode_image(data, size=pre)

    def one(chunk: list) -> None:
        results = list(pool.map(load, chunk))
        pixels = np.stack([r.array for r in results])
        scores = scorer(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        n = len(results)
        rows.build({"uri": np.array(["u"] * n, dtype=object), "etag": np.array(["e"] * n, dtype=object),
                    "size": np.zeros(n, np.int64), "status": np.array(["ok"] * n, dtype=object),
                    "error": np.array([None] * n, dtype=object), "width": np.full(n, 32, np.int32),
                    "height": np.full(n, 32, np.int32), CHUNK: np.zeros(n, np.int32),
                    SEQ: np.arange(n, dtype=np.int32), READ_S: np.zeros(n, np.float32)}, scores)

    one(blobs[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(blobs), batch):
        one(blobs[i:i + batch])
    pool.shutdown()
    return len(blobs) / (time.perf_counter() - start)


class MemorySampler:
    """Peak of the summed RSS and PSS of this process and all its descendants."""

    def __init__(self, exclude: set[int] = frozenset(), period: float = 0.25) -> None:
        self.exclude, self.period = set(exclude), period
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            for pid in descendants(os.getpid()) - self.exclude:
                r, p = _mem(pid)
                rss, pss = rss + r, pss + p
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self.period)


class CpuMeter:
    """CPU seconds used by this process and all its descendants (minus ``exclude``) while in the block.

    Processes are sampled every 0.25 s, so one that starts and ends between two samples is missed.
    """

    def __init__(self, exclude: set[int] = frozenset(), period: float = 0.25) -> None:
        self.exclude, self.period = set(exclude), period
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.series: list[tuple[float, float]] = []  # (epoch seconds, CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuMeter:
        self._sample(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(t - self.first.get(pid, 0.0) for pid, t in self.last.items())

    def _sample(self, initial: bool = False) -> None:
        for pid in descendants(os.getpid()) - self.exclude:
            t = _cpu(pid)
            if t is None:
                continue
            if initial:
                self.first[pid] = t
            self.last[pid] = max(t, self.last.get(pid, 0.0))
        self.series.append((time.time(), self.seconds))

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds used between two epoch times (interpolated between samples)."""
        ts, cs = zip(*self.series)
        return float(np.interp(t1, ts, cs) - np.interp(t0, ts, cs))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()


def _cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes; zeros for a process that is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    vals = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
            vals[parts[0]] = int(parts[1]) * 1024
    return vals.get("Rss:", 0), vals.get("Pss:", 0)


def start_ray(env: dict[str, str] | None = None) -> None:
    import ray

    from ood_audit.ray_setup import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=4, object_store_memory=256 * 2**20, runtime_env={"env_vars": env} if env else None)


def scan(bundle_uri: str, inputs: str, output: str, s3, **kw):
    cfg = ScanConfig(bundle=bundle_uri, output=output, inputs=(inputs,), s3=s3, workers=2, torch_threads=1,
                     batch_size=64, **kw)
    return run_scan(cfg)


def steady_cpu_per_img(progress: list[tuple[float, int]], meter: CpuMeter, lo: float = 0.5,
                       hi: float = 0.9) -> float | None:
    """CPU seconds per image of all the scan's processes while its rows went from ``lo`` to ``hi``."""
    if len(progress) < 3:
        return None
    t = np.array([p[0] for p in progress])
    rows = np.array([p[1] for p in progress])
    i, j = int(np.searchsorted(rows, lo * rows[-1])), int(np.searchsorted(rows, hi * rows[-1]))
    if j <= i or t[j] <= t[i]:
        return None
    return meter.between(t[i], t[j]) / (rows[j] - rows[i])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- main --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sets (a few minutes)")
    ap.add_argument("--n32", type=int, default=None, help="images for P1 at 32 px")
    ap.add_argument("--n224", type=int, default=None, help="images for P1 at 224 px")
    ap.add_argument("--mem", default=None, help="two N for the memory test, e.g. 10000,50000")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: p1-32, p1-224, mem")
    args = ap.parse_args()
    n32 = args.n32 or (600 if args.quick else 3000)
    n224 = args.n224 or (100 if args.quick else 400)
    mem_ns = [int(x) for x in (args.mem or ("2000,10000" if args.quick else "10000,50000")).split(",")]
    skip = set(filter(None, args.skip.split(",")))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    work = Path(tempfile.mkdtemp(prefix="scan-bench-"))
    results: dict[str, object] = {"cpus": os.cpu_count(), "loadavg_start": loadavg()}
    print(f"scan benchmark ({'quick' if args.quick else 'full'}): {os.cpu_count()} CPUs, load {loadavg()}, "
          f"work dir {work}")
    try:
        with EmbeddedS3() as s3srv:
            client, s3 = s3srv.client(), s3srv.s3_config()
            client.create_bucket(Bucket="bench")
            for name, spec, n, size, fmt in (
                ("p1-32", ModelSpec("resnet18", 2, small_input=True, image_size=32), n32, 32, "PNG"),
                ("p1-224", ModelSpec("resnet18", 2, small_input=False, image_size=224), n224, 256, "JPEG"),
            ):
                if name in skip:
                    continue
                t = time.perf_counter()
                bundle = make_bundle(work / name, spec, 120 if spec.small_input else 80, fmt)
                files = image_set(n, size, fmt, seed=2)
                prefix = upload(client, "bench", name, files)
                setup_s = time.perf_counter() - t
                if name == "p1-32":
                    t = time.perf_counter()
                    listed = sum(p.num_rows for p in iter_listing_pages(prefix, s3=s3))
                    results["listing_keys_per_s"] = round(listed / (time.perf_counter() - t), 1)
                    print(f"listing: {listed} keys in {time.perf_counter() - t:.2f} s = "
                          f"{results['listing_keys_per_s']} keys/s")
                blobs = list(files.values())[:CEILING_IMAGES]
                with CpuMeter() as cpu1:
                    ceil = {1: ceiling(bundle, blobs, 64, 1)}
                ceil[2] = ceiling(bundle, blobs, 64, 2)
                best_threads = max(ceil, key=ceil.get)
                uris = [f"{prefix}/{k}" for k in list(files)[:CEILING_IMAGES]]
                ceil_fetch = ceiling(bundle, uris, 64, best_threads, s3=s3)
                start_ray(s3srv.env())
                chunk = max(8, n // 40)
                with CpuMeter(exclude={s3srv._proc.pid}) as cpu_scan:
                    res = scan(bundle, prefix, f"s3://bench/out-{name}", s3, chunk_size=chunk,
                               slice_rows=min(chunk, 256), rows_per_file=chunk)
                summ = res.summary
                # Both ceilings again after the scan: other load on a shared machine drifts; use the means.
                ceil = {th: (ceil[th] + ceiling(bundle, blobs, 64, th)) / 2 for th in ceil}
                best_threads = max(ceil, key=ceil.get)
                assert summ["rows_in_files"] == n, summ
                best, cores = ceil[best_threads], os.cpu_count() or 1
                steady = steady_rate(res.progress[0], 0.5, 0.9) or 0.0
                cpu_steady = steady_cpu_per_img(res.progress[0], cpu_scan)
                e2e = n / summ["timings_s"]["scan_wall"]
                # CPU seconds per image: the ceiling's (1 torch thread, warm-up batch included) against the
                # whole scan's (driver, GCS, raylet, read/write tasks, actors; the S3 server left out).
                cpu_ceiling = cpu1.seconds / (len(blobs) + 64)
                cpu_scan_img = cpu_scan.seconds / n
                results[name] = {
                    "images": n, "ceiling_img_s": {f"{k}_thread": round(v, 1) for k, v in ceil.items()},
                    "ceiling_with_s3_fetch_img_s": round(ceil_fetch, 1),
                    "scan_steady_img_s": round(steady, 1), "scan_e2e_img_s": round(e2e, 1),
                    "startup_s": summ["throughput"]["startup_s"], "P1_steady": round(steady / best, 3),
                    "P1_e2e": round(e2e / best, 3), "steady_vs_ceiling_with_fetch": round(steady / ceil_fetch, 3),
                    "cpu_ms_per_img": {"ceiling_1_thread": round(cpu_ceiling * 1e3, 2),
                                       "scan_all_processes": round(cpu_scan_img * 1e3, 2)},
                    "cpu_efficiency": round(cpu_ceiling / cpu_scan_img, 3),
                    "cpu_ms_per_img_scan_steady": round(cpu_steady * 1e3, 2) if cpu_steady else None,
                    "cpu_efficiency_steady": round(cpu_ceiling / cpu_steady, 3) if cpu_steady else None,
                    "stage_busy_s": summ["timings_s"]["stage_busy"], "setup_s": round(setup_s, 1), "load": loadavg()}
                print(f"{name}: {n} images; in-process ceiling {ceil[1]:.1f} img/s with 1 torch thread, {ceil[2]:.1f} "
                      f"with 2, {ceil_fetch:.1f} when it also fetches from S3; scan steady {steady:.1f} img/s "
                      f"(50-90% of rows), end-to-end {e2e:.1f} img/s, start-up {summ['throughput']['startup_s']:.1f} s")
                print(f"  P1 = steady / in-process ceiling = {steady / best:.3f} (end-to-end {e2e / best:.3f}); "
                      f"steady / ceiling-with-fetch = {steady / ceil_fetch:.3f}; CPU ms/img {cpu_ceiling * 1e3:.2f} "
                      f"in-process vs {cpu_scan_img * 1e3:.2f} for the whole scan (start-up included) -> CPU "
                      f"efficiency {cpu_ceiling / cpu_scan_img:.3f}; in the steady window "
                      f"{(cpu_steady or float('nan')) * 1e3:.2f} ms/img -> CPU efficiency "
                      f"{cpu_ceiling / cpu_steady if cpu_steady else float('nan'):.3f}; stage busy s "
                      f"{summ['timings_s']['stage_busy']}; load {loadavg()}")
        if "mem" not in skip:
            spec = ModelSpec("resnet18", 2, small_input=True, image_size=32)
            bundle = make_bundle(work / "mem", spec, 120, "PNG")
            peaks = {}
            for n in mem_ns:
                root = write_dir(work / f"tiny{n}", image_set(n, 8, "PNG", seed=3))
                start_ray()
                with MemorySampler() as mem:
                    t = time.perf_counter()
                    summ = scan(bundle, str(root), str(work / f"out-tiny{n}"), None, chunk_size=2000,
                                slice_rows=256).summary
                    secs = time.perf_counter() - t
                assert summ["rows_in_files"] == n, summ
                peaks[n] = (mem.peak_rss, mem.peak_pss)
                print(f"memory: N={n}: peak RSS {mem.peak_rss / 2**20:.0f} MiB, peak PSS {mem.peak_pss / 2**20:.0f} "
                      f"MiB (all processes), {secs:.0f} s, {n / secs:.0f} obj/s; load {loadavg()}")
                shutil.rmtree(root, ignore_errors=True)
            lo, hi = mem_ns[0], mem_ns[-1]
            results["memory"] = {"n": mem_ns, "peak_rss_mib": [round(peaks[n][0] / 2**20) for n in mem_ns],
                                 "peak_pss_mib": [round(peaks[n][1] / 2**20) for n in mem_ns],
                                 "ratio_rss": round(peaks[hi][0] / peaks[lo][0], 3),
                                 "ratio_pss": round(peaks[hi][1] / peaks[lo][1], 3)}
            print(f"memory ratio N={hi} / N={lo}: RSS {results['memory']['ratio_rss']}, "
                  f"PSS {results['memory']['ratio_pss']} (target <= 1.2)")
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = loadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
