"""Benchmark: training throughput with 1 vs 2 Ray Train workers on this machine (and calibration time).

    PYTHONPATH=. python benchmarks/train.py                         # 512 images, 32 px, resnet18 CIFAR stem
    PYTHONPATH=. python benchmarks/train.py --images 2048 --epochs 3 --batch-size 64

All runs use the same generated labelled set (two classes of PNG stripes on local disk) and the same
per-worker batch. Three configurations: 1 worker on 1 CPU, 1 worker on every core (torch uses them all),
and 2 workers sharing the cores out (the default sizing). Throughput is images (not views) per second over
the epochs after the first, which also pays for start-up and warm-up; wall time is the whole ``train``
call, Ray Train start-up included. All numbers come from this one run.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_dataset(root: Path, n_images: int, size: int, seed: int = 0) -> Path:
    """``root/class0/*.png`` (vertical stripes) and ``root/class1/*.png`` (horizontal), with noise."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        cls = i % 2
        a = np.zeros((size, size, 3), np.uint8)
        period = 4 + int(rng.integers(0, 3))
        if cls == 0:
            a[:, ::period] = 200
        else:
            a[::period, :] = 200
        a = np.clip(a.astype(int) + rng.integers(0, 40, a.shape), 0, 255).astype(np.uint8)
        path = root / f"class{cls}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
    return root


def bench_training(data: Path, work: Path, workers: int, cpus: float | None, args: argparse.Namespace):
    from ood_audit.training import TrainConfig, train

    name = f"bench-{workers}w-{cpus or 'auto'}cpu"
    start = time.perf_counter()
    res = train(TrainConfig(data=str(data), output=str(work / f"{name}.safetensors"), arch=args.arch,
                            small_input=args.image_size <= 64, image_size=args.image_size, epochs=args.epochs,
                            batch_size=args.batch_size, workers=workers, cpus_per_worker=cpus, lr=0.02,
                            run_name=name, storage=str(work / "runs"), log_every_s=60.0))
    wall = time.perf_counter() - start
    steady = [h["images_per_second"] for h in res.history[1:]] or [res.history[-1]["images_per_second"]]
    return res, statistics.mean(steady), wall


# --------------------------------------------------------------------------------------------------
# Calibration time per 1k images (stub: filled in once the calibration benchmark settings are fixed).
# Inputs ready for it: ``model`` (weights with <stem>.json beside them, from the 1-worker run) and
# ``data`` (the same labelled set). Return seconds per 1,000 images, or None when not measured.
# --------------------------------------------------------------------------------------------------
def bench_calibration(model: Path, data: Path, work: Path, args: argparse.Namespace) -> float | None:
    """Seconds per 1,000 ID images for a full calibration (both phases, 2 Ray Data actors), and in-process."""
    from ood_audit.calibration.calibrate import CalibrateConfig, calibrate

    per_1k = None
    for workers in (0, 2):
        cfg = CalibrateConfig(data=str(data), model=str(model), output=str(work / f"bundles-{workers}"),
                              workers=workers, batch_size=64, k_knn=min(50, args.images // 4))
        t = time.perf_counter()
        res = calibrate(cfg)
        wall = time.perf_counter() - t
        n = res.meta["data"]["listed_images"]
        print(f"calibration with workers={workers} ({'in-process' if workers == 0 else 'Ray Data actors'}): "
              f"{n} images in {wall:.1f} s = {1000 * wall / n:.1f} s per 1,000 images "
              f"(bank phase {res.summary['seconds']['bank_phase']} s, held-out phase "
              f"{res.summary['seconds']['heldout_phase']} s)")
        if workers == 2:
            per_1k = 1000 * wall / n
    return per_1k


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="images per worker per step")
    parser.add_argument("--skip-calibration", action="store_true")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from ood_audit.ray_setup import init_ray

    cores = os.cpu_count() or 1
    init_ray(num_cpus=cores, object_store_memory=256 * 2**20)
    with tempfile.TemporaryDirectory(prefix="ood-audit-bench-") as tmp:
        work = Path(tmp)
        data = write_dataset(work / "data", args.images, args.image_size)
        rows = []
        for workers, cpus in ((1, 1.0), (1, float(cores)), (2, None)):
            res, ips, wall = bench_training(data, work, workers, cpus, args)
            rows.append((workers, cpus or cores / workers, ips, wall, res))
        import ray
        import torch

        print(f"\ntraining throughput: {args.arch}, {args.images} images at {args.image_size} px, "
              f"{args.epochs} epochs, batch {args.batch_size}/worker, CPU, {cores} cores, "
              f"torch {torch.__version__}, ray {ray.__version__}")
        print(f"{'workers':>7} {'CPUs/worker':>11} {'img/s (epochs 2+)':>18} {'wall s':>8} {'final loss':>11}")
        for workers, cpus, ips, wall, res in rows:
            print(f"{workers:>7} {cpus:>11g} {ips:>18.1f} {wall:>8.1f} {res.final_loss:>11.4f}")
        two = rows[2][2]
        print(f"throughput ratio, 2 workers / 1 worker: {two / rows[0][2]:.2f}x against 1 worker on 1 CPU, "
              f"{two / rows[1][2]:.2f}x against 1 worker on all {cores} cores")
        if not args.skip_calibration:
            per_1k = bench_calibration(Path(rows[0][4].output), data, work, args)
            if per_1k is not None:
                print(f"calibration: {per_1k:.1f} s per 1,000 images")
        ray.shutdown()


if __name__ == "__main__":
    main()
