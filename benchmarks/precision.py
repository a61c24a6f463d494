"""Benchmark: the precision policy. Why calibration and scan share one, and why float32 is the default.

    PYTHONPATH=. python benchmarks/precision.py [--epochs 6]

Real images (benchmarks/selection.py's digits ID set: scikit-learn digits at 32 px; OOD textures,
photos, faces, letters), a resnet18 trained with the product's own ``train``, and two in-process
calibrations of the same data: one under ``float32``, one under ``bfloat16`` (CPU autocast).

Printed, all measured in this one run (ratios, not absolute times):

1. scoring throughput bf16 / fp32 on this CPU (the same images, batch 64);
2. the old defect: a float32 bundle scanned with bf16 activations (what CUDA scans did before the
   policy): the share of ID-test flags that change and the realised ID flag rate against the target;
3. kernel sensitivity within each policy: the same images scored in batches of 64 and one by one
   (different kernels and accumulation orders, the CPU stand-in for "another device"): the share of
   flags and CSD views that change.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _timed(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _flags(scores: dict, info) -> np.ndarray:
    from ood_audit.flagging.thresholds import flags

    th = info.thresholds
    return flags({s: scores[s] for s in th.flag}, th.flag, th.flag_on)[0]


def _score(scorer, x: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    parts = [scorer(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.selection import build_id_set, trained_model, write_pngs
    from ood_audit.bundle.files import open_bundle
    from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
    from ood_audit.bundle.scorer import scorer_from_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="ood-audit-bench-precision-"))
    train, test, _, ood, _, _ = build_id_set("digits", args.seed)
    for c, imgs in train.items():
        write_pngs(work / "train" / c, imgs)
    model = trained_model("digits", work / "train", args)
    bundles = {}
    for precision in ("float32", "bfloat16"):
        res = calibrate(CalibrateConfig(data=str(work / "train"), model=str(model), output=str(work / "b"),
                                        workers=0, precision=precision, k_knn=20, seed=args.seed))
        bundles[precision] = open_bundle(res.bundle_uri)
    x_id = torch.from_numpy(np.stack(test)).permute(0, 3, 1, 2).contiguous()
    x_ood = torch.from_numpy(np.stack([a for v in ood.values() for a in v])).permute(0, 3, 1, 2).contiguous()
    x_all = torch.cat([x_id, x_ood])
    target = bundles["float32"].info.thresholds.target_id_flag_rate

    lines = [f"ID test {len(x_id)} digits, OOD {len(x_ood)} images ({', '.join(ood)}); target ID flag rate {target}"]
    scorers = {p: scorer_from_bundle(b) for p, b in bundles.items()}
    t = {p: _timed(lambda s=s: _score(s, x_all, 64)) for p, s in scorers.items()}
    lines.append(f"1. scoring throughput bf16 / fp32 (batch 64, {torch.get_num_threads()} threads): "
                 f"{t['float32'] / t['bfloat16']:.2f}x")

    fp32_bundle = bundles["float32"]
    matched = _score(scorers["float32"], x_id, 64)
    mixed_scorer = scorer_from_bundle(fp32_bundle)
    mixed_scorer.tap.precision = "bfloat16"  # the old CUDA path: fp32 thresholds, bf16 activations
    mixed = _score(mixed_scorer, x_id, 64)
    f_m, f_x = _flags(matched, fp32_bundle.info), _flags(mixed, fp32_bundle.info)
    lines.append(f"2. fp32 bundle scanned with bf16 activations: {np.mean(f_m != f_x):.2%} of ID flags change; "
                 f"ID flag rate {f_m.mean():.2%} (matched) vs {f_x.mean():.2%} (mixed)")
    th = fp32_bundle.info.thresholds
    for s in th.flag_on:
        d = np.abs(matched[s] - mixed[s])
        near = np.mean(np.abs(matched[s] - th.flag[s]) < d.max())
        lines.append(f"   {s}: bf16 moves scores by median {np.median(d):.2e}, max {d.max():.2e} "
                     f"({np.median(d / np.abs(matched[s])):.1e} relative); {near:.1%} of ID images lie within "
                     "that max of the flag threshold")

    for precision, scorer in scorers.items():
        info = bundles[precision].info
        a, b = _score(scorer, x_all, 64), _score(scorer, x_all, 1)
        lines.append(f"3. {precision}: batch 64 vs one by one on {len(x_all)} images: "
                     f"{np.mean(_flags(a, info) != _flags(b, info)):.2%} of flags and "
                     f"{np.mean(a['csd_view'] != b['csd_view']):.2%} of CSD views change; max |d featurenorm| "
                     f"relative {np.max(np.abs(a['featurenorm'] - b['featurenorm']) / np.abs(b['featurenorm'])):.1e}")
    lines.append(f"ID test flag rate {f_m.mean():.2%} against the target {target}: thresholds are order statistics of "
                 f"{fp32_bundle.info.thresholds.heldout_images} held-out images")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
