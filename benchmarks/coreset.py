"""Benchmark: CSD and kNN with a greedy k-center coreset of the ID bank against the full bank.

    PYTHONPATH=. python benchmarks/coreset.py                      # digits ID set, seed 0, 1/4 and 1/10
    PYTHONPATH=. python benchmarks/coreset.py --fractions 0.5,0.25

The data, model and OOD sets are those of ``benchmarks/selection.py`` (real images only, nothing
downloaded; the model is the product's own Ray Train run, cached in the temp dir): ID = scikit-learn's
handwritten digits at 32 px, OOD = textures, photos, faces and letters. ``calibrate`` fits both bank
detectors on the ID training images; each fraction then keeps that share of every bank's rows, chosen
by :func:`~ood_audit.scores.detectors.banks.k_center_greedy` (the detectors' ``coreset`` option, applied
to the same bank), and the never-seen ID test images and every OOD set are scored through the bundle's
own Scorer. Printed: bank rows (reduction factor) and FPR95 per OOD set and on average (ID = positive,
Hendrycks/ODIN convention), full against reduced; the target is |ΔFPR95| ≤ 0.005 on average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import selection as S  # noqa: E402 - the selection benchmark's data and model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", default="0.5,0.25,0.1", help="coreset fractions of the bank rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.05)
    args = ap.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from ood_audit.bundle.files import open_bundle
    from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
    from ood_audit.bundle.scorer import scorer_from_bundle
    from ood_audit.metrics import fpr_at_tpr

    with tempfile.TemporaryDirectory(prefix="ood-audit-coreset-") as tmp:
        root = Path(tmp)
        train, test, _, ood, _, _ = S.build_id_set("digits", args.seed)
        for c, imgs in train.items():
            S.write_pngs(root / "train" / c, imgs)
        model = S.trained_model("digits", root / "train", args)
        res = calibrate(CalibrateConfig(data=str(root / "train"), model=str(model), output=str(root / "bundles"),
                                        workers=0, seed=args.seed, k_knn=20))
        scorer = scorer_from_bundle(open_bundle(res.bundle_uri))
        banks = {d.name: d for d in scorer.detectors if d.name in ("csd", "knn")}
        full = {name: det.bank.clone() for name, det in banks.items()}  # type: ignore[union-attr]
        full_k = {name: det.k for name, det in banks.items()}
        sets = {"id_test": test, **ood}
        pixels = {k: torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous() for k, v in sets.items()}

        def fpr95() -> dict[str, dict[str, float]]:
            with torch.no_grad():
                scores = {k: scorer(px) for k, px in pixels.items()}
            out = {}
            for name in banks:
                per = {k: fpr_at_tpr(np.asarray(scores["id_test"][name]), np.asarray(scores[k][name])) for k in ood}
                out[name] = {**per, "mean": float(np.mean(list(per.values())))}
            return out

        results = {"full": {"rows": {n: int(b.shape[0]) for n, b in full.items()}, "fpr95": fpr95()}}
        for f in fractions:
            t = time.perf_counter()
            for name, det in banks.items():
                det.coreset, det.k = f, full_k[name]
                det._set_bank(det._reduce(full[name].float()))
            reduce_s = time.perf_counter() - t
            results[f"coreset {f:g}"] = {"rows": {n: int(d.bank.shape[0]) for n, d in banks.items()},  # type: ignore[union-attr]
                                         "k": {n: d.k for n, d in banks.items()},
                                         "reduce_s": round(reduce_s, 2), "fpr95": fpr95()}
    base = results["full"]
    print(f"ID digits (seed {args.seed}), OOD {', '.join(ood)}; {len(test)} ID test images")
    for key, r in results.items():
        for name in banks:
            rows, fp = r["rows"][name], r["fpr95"][name]
            delta = fp["mean"] - base["fpr95"][name]["mean"]
            per = ", ".join(f"{k} {fp[k]:.4f}" for k in ood)
            print(f"{key:>14} {name}: {rows} bank rows (reduction x{base['rows'][name] / rows:.1f}); FPR95 mean "
                  f"{fp['mean']:.4f} (delta {delta:+.4f}; target |delta| <= 0.005); {per}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
