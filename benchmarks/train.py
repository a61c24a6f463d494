"""Benchmark: does training with the default settings learn, across dataset sizes, worker counts and
architectures; and what do 2 Ray Train workers give over 1.

    PYTHONPATH=. python benchmarks/train.py                  # 1437 and 10k real digits, 1 and 2 workers
    PYTHONPATH=. python benchmarks/train.py --quick          # 1437 images only, resnet18 only
    PYTHONPATH=. python benchmarks/train.py --calibration    # also: calibration seconds per 1k images

The data are real handwritten digits (scikit-learn's ``load_digits``, 32 px, 10 classes): 1437 of the
originals, and a 10k set of the 1797 originals plus shifted, rotated and scaled copies. Every run uses
only the defaults (learning rate scaled to the global batch, one epoch of warm-up, batch 64 per worker,
10% validation split); only ``--epochs`` is set. It prints validation accuracy after each epoch, and
throughput in images per second over the epochs after the first (the first also pays for start-up).
Ratios compare runs made in this one process, on this machine, one after the other.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path


def run(data: Path, work: Path, arch: str, workers: int, epochs: int) -> dict:
    from ood_audit.training import TrainConfig, train

    name = f"{data.name}-{arch}-{workers}w"
    start = time.perf_counter()
    res = train(TrainConfig(data=str(data), output=str(work / f"{name}.safetensors"), arch=arch, small_input=True,
                            epochs=epochs, workers=workers, run_name=name, storage=str(work / "runs"),
                            log_every_s=600.0))
    steady = [h["images_per_second"] for h in res.history[1:]] or [res.history[-1]["images_per_second"]]
    return {"name": name, "arch": arch, "workers": workers, "images": data.name, "lr": res.history and
            res.history[0]["lr"], "acc": [h["val_accuracy"] for h in res.history], "val_images": res.val_images,
            "ips": statistics.mean(steady), "wall": time.perf_counter() - start, "warning": res.warning,
            "model": res.output}


def bench_calibration(model: str, data: Path, work: Path) -> None:
    """Seconds per 1,000 ID images for a full calibration (both phases), in-process and on 2 Ray Data actors."""
    from ood_audit.calibration.calibrate import CalibrateConfig, calibrate

    for workers in (0, 2):
        t = time.perf_counter()
        res = calibrate(CalibrateConfig(data=str(data), model=model, output=str(work / f"bundles-{workers}"),
                                        workers=workers, batch_size=64, k_knn=50))
        wall = time.perf_counter() - t
        n = res.info.data.listed_images
        print(f"calibration, workers={workers} ({'in-process' if workers == 0 else 'Ray Data actors'}): "
              f"{n} images in {wall:.1f} s = {1000 * wall / n:.1f} s per 1,000 images")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1437 images and resnet18 only")
    parser.add_argument("--epochs", type=int, default=10, help="epochs at 1437 images (default 10)")
    parser.add_argument("--large-epochs", type=int, default=4, help="epochs at 10k images (default 4)")
    parser.add_argument("--other-arch", default="mobilenet_v2", help="the second architecture (default mobilenet_v2)")
    parser.add_argument("--calibration", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from ood_audit.demo import write_digit_folders
    from ood_audit.ray_setup import init_ray

    init_ray(num_cpus=os.cpu_count() or 2, object_store_memory=256 * 2**20)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ood-audit-bench-") as tmp:
        work = Path(tmp)
        small = write_digit_folders(work / "1437", 1437, seed=0)
        plan = [(small, "resnet18", w, args.epochs) for w in (1, 2)]
        if not args.quick:
            large = write_digit_folders(work / "10000", 10_000, seed=0)
            plan += [(small, args.other_arch, w, args.epochs) for w in (1, 2)]
            plan += [(large, "resnet18", w, args.large_epochs) for w in (1, 2)]
            plan += [(large, args.other_arch, 2, args.large_epochs)]
        for data, arch, workers, epochs in plan:
            rows.append(run(data, work, arch, workers, epochs))
            r = rows[-1]
            print(f"done: {r['name']}: val acc {r['acc'][-1]:.3f}, {r['ips']:.1f} img/s, {r['wall']:.0f} s", flush=True)
        if args.calibration:
            bench_calibration(rows[0]["model"], small, work)

    print("\nvalidation accuracy after each epoch, default settings (real digits, 32 px, small-input stem, CPU):")
    width = max(len(r["acc"]) for r in rows)
    print(f"{'images':>6} {'arch':>13} {'workers':>7} {'lr':>7} {'val n':>6} "
          + " ".join(f"{'ep' + str(i + 1):>5}" for i in range(width)) + f" {'img/s':>7} {'learned':>8}")
    for r in rows:
        accs = " ".join(f"{a:>5.3f}" for a in r["acc"]) + "      " * (width - len(r["acc"]))
        print(f"{r['images']:>6} {r['arch']:>13} {r['workers']:>7} {r['lr']:>7.4f} {r['val_images']:>6} {accs} "
              f"{r['ips']:>7.1f} {'no' if r['warning'] else 'yes':>8}")
    print("(lr: the peak, reached at the end of the one-epoch warm-up)")
    for (images, arch) in sorted({(r["images"], r["arch"]) for r in rows}):
        pair = {r["workers"]: r for r in rows if r["images"] == images and r["arch"] == arch}
        if 1 in pair and 2 in pair:
            print(f"throughput, 2 workers / 1 worker ({arch}, {images} images): "
                  f"{pair[2]['ips'] / pair[1]['ips']:.2f}x ({pair[2]['ips']:.1f} vs {pair[1]['ips']:.1f} img/s)")
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
