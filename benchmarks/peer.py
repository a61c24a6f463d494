"""Benchmark: `ood-audit scan` side by side with the pipeline a Ray user would write from Ray Data's
batch-inference docs, on the same objects in the embedded S3, with the same weights, in one run.

    PYTHONPATH=. python benchmarks/peer.py                       # 32 px x 3000 and 224 px x 1000, A B A B
    PYTHONPATH=. python benchmarks/peer.py --sizes 32 --n32 3000 --rounds 3

The recipe (:func:`recipe`), as plainly as the docs write it: read the objects' bytes
(``read_binary_files``), decode + resize + centre-crop + normalise in a task stage, the model as a class
in an actor pool, and ``write_parquet`` of MSP and energy. It is given the resources that let it run on
this 2-core machine: one model actor of 1 CPU with torch's default threads. Two such actors (the docs'
``concurrency=2``) take both CPUs and leave none for the read and decode tasks: the run deadlocks.

The scan does everything it does in production on the same objects: SHA-256 and quality checks per object,
every score of the bundle, thresholds, the chunk ledger and its commits, the summary. Runs alternate
(scan, recipe, scan, recipe, ...) in one warm local Ray, so drift in the machine's load falls on both.
Printed per size: median whole-run img/s, steady img/s (rows 20-90 %, from the per-batch times each
writes), CPU ms per image of every process but the S3 server, and scan ÷ recipe for each.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scan import CpuMeter, loadavg, make_bundle, start_ray
from ood_audit.embedded.s3 import EmbeddedS3
from ood_audit.models import ModelSpec
from ood_audit.scan import ScanConfig, run_scan
from ood_audit.scan.summary import rows_steady_rate, steady_rate

from tests.datagen import photo_set, photo_sources, stripe_set, upload

log = logging.getLogger("bench")


def recipe(prefix: str, output: str, weights: str, spec: ModelSpec, pre: dict, s3) -> int:
    """The docs' batch-inference pipeline; returns the rows written. Each batch's time goes in column ``t``."""
    import ray

    fs = _fs(s3)

    def preprocess(batch: dict) -> dict:
        import io

        from PIL import Image

        size, crop = pre["resize"], pre["crop"]
        images = []
        for data in batch["bytes"]:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.BILINEAR)
            left, top = (img.width - crop) // 2, (img.height - crop) // 2
            arr = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
            images.append(((arr - pre["mean"]) / pre["std"]).transpose(2, 0, 1))
        return {"path": batch["path"], "image": np.stack(images)}

    class Classifier:
        def __init__(self) -> None:
            import torch

            from ood_audit import build_model
            from safetensors.torch import load_file

            self.torch = torch
            self.model = build_model(spec.arch, spec.num_classes, small_input=spec.small_input).eval()
            self.model.load_state_dict(load_file(weights))

        def __call__(self, batch: dict) -> dict:
            torch = self.torch
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(batch["image"]))
            msp = torch.softmax(logits, dim=1).max(dim=1).values
            energy = torch.logsumexp(logits, dim=1)
            return {"path": batch["path"], "msp": msp.numpy(), "energy": energy.numpy(),
                    "t": np.full(len(msp), time.time())}

    ds = ray.data.read_binary_files(prefix.removeprefix("s3://"), filesystem=fs, include_paths=True)
    ds = ds.map_batches(preprocess, batch_size=64)
    ds = ds.map_batches(Classifier, concurrency=1, num_cpus=1, batch_size=64)
    ds.write_parquet(output.removeprefix("s3://"), filesystem=fs)
    return _rows(output, fs)


def _fs(s3):
    """pyarrow's S3 filesystem for the embedded server, as a Ray user would configure it."""
    import pyarrow.fs as pafs

    scheme, host = s3.endpoint_url.split("://", 1)
    return pafs.S3FileSystem(endpoint_override=host, scheme=scheme, access_key=s3.access_key,
                             secret_key=s3.secret_key, region="us-east-1")


def _rows(output: str, fs) -> int:
    import pyarrow.dataset as pads

    return pads.dataset(output.removeprefix("s3://"), filesystem=fs, format="parquet").count_rows()


def _recipe_steady(output: str, s3) -> float | None:
    import pyarrow.dataset as pads

    t = np.sort(pads.dataset(output.removeprefix("s3://"), filesystem=_fs(s3)).to_table(columns=["t"])
                .column("t").to_numpy())
    return steady_rate([(float(x), i + 1) for i, x in enumerate(t)])


def one_size(px: int, n: int, rounds: int, work: Path, s3srv, client) -> dict:
    from ood_audit.bundle.files import open_bundle

    s3 = s3srv.s3_config()
    if px == 32:
        spec = ModelSpec("resnet18", 2, small_input=True, image_size=32)
        bundle = make_bundle(work / "b32", spec, 120, "PNG")
        files = stripe_set(n, 32, "PNG", seed=2)
    else:
        spec = ModelSpec("resnet18", 2, small_input=False, image_size=224)
        sources = photo_sources()
        bundle = make_bundle(work / "b224", spec, 80, "JPEG", id_files=photo_set(80, 1, sources))
        files = photo_set(n, 2, sources)
    prefix = upload(client, "bench", f"in{px}", files)
    b = open_bundle(bundle)
    p = b.info.preprocess
    crop = p.size[0]
    pre = {"resize": p.resize_shorter or crop, "crop": crop, "mean": np.array(p.mean, np.float32),
           "std": np.array(p.std, np.float32)}
    weights = str(Path(bundle) / "model.safetensors")  # the bundle's own copy: the same weights
    res: dict[str, list] = {"scan": [], "recipe": []}
    for r in range(rounds):
        for who in ("scan", "recipe"):
            out = f"s3://bench/out{px}-{who}-{r}"
            with CpuMeter(exclude={s3srv._proc.pid}) as cpu:
                t = time.perf_counter()
                if who == "scan":
                    result = run_scan(ScanConfig(bundle=bundle, output=out, inputs=(prefix,), s3=s3),
                                      start_ray=lambda: None)
                    rows = result.summary.rows_in_files
                else:
                    rows = recipe(prefix, out, weights, spec, pre, s3)
                wall = time.perf_counter() - t
            # both from per-batch times in the rows: the scan's scanned_at, the recipe's t
            steady = rows_steady_rate(out, s3=s3) if who == "scan" else _recipe_steady(out, s3)
            assert rows == n, (who, rows, n)
            res[who].append({"img_s": n / wall, "steady": steady, "cpu_ms": 1000 * cpu.seconds / n})
            log.info("%d px round %d %s: %.1f img/s whole run, %s steady, %.1f CPU ms/img; load %s", px, r + 1, who,
                     n / wall, f"{steady:.1f}" if steady else "-", 1000 * cpu.seconds / n, loadavg())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="32,224", help="comma list of 32 and 224")
    ap.add_argument("--n32", type=int, default=3000)
    ap.add_argument("--n224", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2, help="scan/recipe pairs per size (default 2)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("faiss.loader", "botocore", "urllib3", "ood_audit", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedS3() as s3srv:
        client = s3srv.client()
        client.create_bucket(Bucket="bench")
        os.environ.update(s3srv.env())
        start_ray(s3srv.env())
        for px in (int(x) for x in args.sizes.split(",")):
            n = args.n32 if px == 32 else args.n224
            results[px] = one_size(px, n, args.rounds, Path(tmp), s3srv, client)
    print(f"\nscan vs the Ray Data batch-inference recipe, medians of {args.rounds} alternating runs each "
          f"(load average now {loadavg()}):")
    for px, res in results.items():
        parts = []
        for key, what in (("img_s", "whole run img/s"), ("steady", "steady img/s"), ("cpu_ms", "CPU ms/img")):
            a, b = (_median([x[key] for x in res[who]]) for who in ("scan", "recipe"))
            ratio = f"{a / b:.2f}" if a and b else "-"
            parts.append(f"{what} {_fmt(a)} vs {_fmt(b)} (scan / recipe {ratio})")
        print(f"  {px} px: " + "; ".join(parts))


def _median(values: list) -> float | None:
    values = [v for v in values if v]
    return statistics.median(values) if values else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    main()
