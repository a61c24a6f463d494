"""Benchmark: the same scan on S3, GCS and Azure. Prints rows = objects per store and time ratios from one run.

    PYTHONPATH=. python benchmarks/clouds.py                 # 500 objects, 2 rounds
    PYTHONPATH=. python benchmarks/clouds.py --objects 2000 --rounds 3

Each store runs on this machine as the tests run it: SeaweedFS for S3 (``ood_audit.embedded.s3``),
fake-gcs-server for GCS and Azurite for Azure (``tests.fixtures.clouds``; Azurite is installed from npm on
first use). The same ``--objects`` stripe PNGs (32 px) are uploaded to each, and a tiny calibrated ResNet18
bundle scans each with its output on the same store (listing, one read per object, Parquet part files,
chunk markers, the run's lease), on one local Ray started once. Rounds alternate the order of the stores
(S3, GCS, Azure, then reversed) so that drift in the machine's load falls on all of them; printed per store:
the median scan time, rows written and whether they equal the objects listed exactly once, the listing
time, and each time as a ratio of S3's. The emulators share the machine's cores with the scan, which real
services would not: the ratios compare the product's code paths per store, not the clouds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from ood_audit import build_model, save_weights
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.embedded.s3 import EmbeddedS3
from ood_audit.io.fs import resolve
from ood_audit.io.listing import list_objects
from ood_audit.models import ModelSpec
from ood_audit.scan import ScanConfig, run_scan
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images, stripe_set, write_local
from tests.fixtures.clouds import run_azurite, run_fake_gcs


def make_bundle(work: Path) -> str:
    torch.manual_seed(0)
    spec = ModelSpec("resnet18", 2, small_input=True, image_size=32)
    (work / "m").mkdir()
    save_weights(build_model("resnet18", 2, small_input=True), work / "m" / "model.safetensors")
    (work / "m" / "model.json").write_text(json.dumps(spec.to_dict()))
    data = write_local(work / "id", labelled_images(60, seed=2))
    return calibrate(CalibrateConfig(data=str(data), model=str(work / "m" / "model.safetensors"),
                                     output=str(work / "bundle"), heldout_fraction=0.3, workers=0, k_knn=5,
                                     min_heldout=10)).bundle_uri


def upload(root: str, config, files: dict[str, bytes]) -> float:
    fs, base = resolve(root, config)
    started = time.perf_counter()
    for key, data in files.items():
        with fs.open_output_stream(f"{base}/{key}") as out:
            out.write(data)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    files = stripe_set(args.objects, 32, "PNG", seed=3)
    with tempfile.TemporaryDirectory(prefix="clouds-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        s3 = stack.enter_context(EmbeddedS3(data_dir=str(work / "weed")))
        s3.s3_config().client().create_bucket(Bucket="bench")
        (work / "gcs").mkdir(), (work / "azure").mkdir()
        gcs = stack.enter_context(run_fake_gcs(work / "gcs"))
        azure = stack.enter_context(run_azurite(work / "azure"))
        stores = {"s3": ("s3://bench", s3.s3_config()), "gcs": ("gs://bench", gcs.config),
                  "azure": ("az://bench", azure.config)}
        for name in ("gcs", "azure"):
            fs, _ = resolve(stores[name][0], stores[name][1])
            fs.create_dir("bench")
        bundle = make_bundle(work)
        print(f"{args.objects} stripe PNGs (32 px), {args.rounds} rounds; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        uploads = {name: upload(f"{root}/in", config, files) for name, (root, config) in stores.items()}
        times: dict[str, list[float]] = {n: [] for n in stores}
        listing: dict[str, list[float]] = {n: [] for n in stores}
        checks: dict[str, tuple[int, bool]] = {}
        ray_started = False
        for r in range(args.rounds):
            for name in (list(stores) if r % 2 == 0 else list(reversed(stores))):
                root, config = stores[name]
                started = time.perf_counter()
                listed = list_objects(f"{root}/in", s3=config).column("uri").to_pylist()
                listing[name].append(time.perf_counter() - started)
                cfg = ScanConfig(bundle=bundle, output=f"{root}/out", inputs=(f"{root}/in",), run_id=f"r{r}",
                                 s3=config, workers=1, batch_size=64)
                if not ray_started:  # Ray's own start is not the store's cost: one warm-up scan, untimed
                    run_scan(ScanConfig(bundle=bundle, output=str(work / "warm"), inputs=(f"{root}/in",),
                                        run_id="warm", s3=config, workers=1, batch_size=64))
                    ray_started = True
                started = time.perf_counter()
                summary = run_scan(cfg).summary
                times[name].append(time.perf_counter() - started)
                rows = open_reports(f"{root}/out", s3=config).to_table().column("uri").to_pylist()
                rows = [u for u in rows if u.startswith(root)]
                run_rows = summary.rows_committed
                checks[name] = (run_rows, sorted(set(listed)) == sorted(set(rows)) and len(listed) == run_rows)
        base = statistics.median(times["s3"])
        base_list = statistics.median(listing["s3"])
        print(f"{'store':6} {'scan s':>8} {'vs S3':>6} {'rows':>6} {'rows = objects once':>20} {'list s':>7} "
              f"{'vs S3':>6} {'upload s':>9}")
        for name in stores:
            t, lst = statistics.median(times[name]), statistics.median(listing[name])
            rows, ok = checks[name]
            print(f"{name:6} {t:8.1f} {t / base:6.2f} {rows:6d} {str(ok):>20} {lst:7.2f} {lst / base_list:6.2f} "
                  f"{uploads[name]:9.1f}")


if __name__ == "__main__":
    main()
