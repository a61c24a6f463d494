"""Benchmark: cost of the SPEC §14 quality checks per image at 224 px. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/quality.py               # 7 photos, 300 rounds
    .venv/bin/python benchmarks/quality.py --rounds 1000

For each of scikit-image's / scikit-learn's sample photos, in the same process and interleaved round by
round: ``measure`` on the decoded 224 px array, and the product's ``decode_image`` of the same photo as a
224 px JPEG (quality 90) and of the full photo as a JPEG decoded to 224 px (what the scan usually does);
and ``content_sha256`` of the full photo's JPEG bytes (the duplicate check's cost in the same task).
Figures are medians over rounds, summed over photos; the ratios are what compares across machines. With
``--forward`` the CPU forward pass of ResNet-18 at 224 px (batch 32, per image) is timed too, for the
share of the whole per-image cost of a CPU scan.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _interleaved(fns: dict[str, object], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, calling each once per round so that load on a shared
    machine hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--forward", action="store_true", help="also time a ResNet-18 CPU forward pass per image")
    args = p.parse_args()

    from ood_audit.io.decode import decode_image
    from ood_audit.io.quality import measure
    from ood_audit.sinks.digests import content_sha256
    from tests.quality.photos import jpeg, photos, resized

    q = d224 = dfull = sha = 0.0
    for name, a in photos().items():
        small = resized(a)
        b224, bfull = jpeg(small), jpeg(a)
        arr = decode_image(b224, size=224).array
        t = _interleaved({"q": lambda: measure(arr, (a.shape[1], a.shape[0])),
                          "d224": lambda: decode_image(b224, size=224),
                          "dfull": lambda: decode_image(bfull, size=224),
                          "sha": lambda: content_sha256(bfull)}, args.rounds)
        tq, t224, tfull, tsha = t["q"], t["d224"], t["dfull"], t["sha"]
        q, d224, dfull, sha = q + tq, d224 + t224, dfull + tfull, sha + tsha
        print(f"{name:22s} {a.shape[1]}x{a.shape[0]}  quality {tq * 1e3:.3f} ms  decode 224 JPEG {t224 * 1e3:.3f} ms  "
              f"decode full JPEG to 224 {tfull * 1e3:.3f} ms  sha256 {tsha * 1e3:.3f} ms ({len(bfull) // 1024} KiB)")
    n = len(photos())
    print(f"\nper image (mean of {n} photos): quality {q / n * 1e3:.3f} ms, decode 224 JPEG {d224 / n * 1e3:.3f} ms, "
          f"decode full JPEG to 224 {dfull / n * 1e3:.3f} ms")
    print(f"quality / decode 224 JPEG       = {q / d224:.3f}")
    print(f"quality / decode full JPEG->224 = {q / dfull:.3f}")
    print(f"(quality + sha256) / decode full JPEG->224 = {(q + sha) / dfull:.3f}")
    if args.forward:
        import torch

        from ood_audit.models import build_model

        torch.manual_seed(0)
        model = build_model("resnet18", 10).eval()
        x = torch.rand(32, 3, 224, 224)
        with torch.inference_mode():
            tf = _interleaved({"f": lambda: model(x)}, 5)["f"] / 32
        print(f"ResNet-18 CPU forward {tf * 1e3:.2f} ms/image ({torch.get_num_threads()} threads)")
        print(f"(quality + sha256) / (decode full JPEG->224 + forward) = {(q + sha) / n / (dfull / n + tf):.4f}")


if __name__ == "__main__":
    main()
