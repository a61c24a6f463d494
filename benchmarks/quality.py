"""Benchmark: cost of the SPEC §14 quality checks per image, in-process. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/quality.py               # 7 photos, 300 rounds
    .venv/bin/python benchmarks/quality.py --rounds 1000 --forward

For each of scikit-image's / scikit-learn's sample photos as a JPEG (quality 90; 300-640 px a side), in the
same process and interleaved round by round, what the scan's read task does per object:

- at 224 px (calibration's ``Preprocess(224)``): ``decode_image`` alone (checks off), and ``decode_image``
  with the working copy + ``quality_issues`` on it (checks on), as :func:`ood_audit.scan.read.load_one`;
- the same at 32 px (a small-input bundle), and the 32 px decode with the draft sized for the model alone
  (``jpeg_draft_longer=0``, bundles written before the working copy): what keeping the longer side ≥ 256
  in the draft costs there;
- ``content_sha256`` of the JPEG bytes (the duplicate check's cost in the same task).

Figures are medians over rounds, summed over photos; the ratios are what compares across machines. With
``--forward`` the CPU forward pass of ResNet-18 at 224 px (batch 32, per image) is timed too, for the
checks' share of a CPU scan's per-image cost (decode + checks + forward). ``benchmarks/scan.py`` (part
``q-224``) measures the same share on the whole scan, checks on and off.
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

    from ood_audit.io.decode import Preprocess, decode_image
    from ood_audit.io.quality import QualityConfig, quality_issues
    from ood_audit.store.digests import content_sha256
    from tests.quality.photos import jpeg, photos

    cfg = QualityConfig(blurry=100.0)  # every check runs, as with a calibrated bundle
    p224, p32, p32_legacy = Preprocess(224), Preprocess(32), Preprocess(32, jpeg_draft_longer=0)

    def checked(data: bytes, pre: Preprocess) -> list[str]:
        r = decode_image(data, size=pre, working_size=cfg.working_size)
        return quality_issues(r.working, (r.width, r.height), cfg)

    total = dict.fromkeys(("off224", "on224", "off32", "on32", "legacy32", "sha"), 0.0)
    shots = photos()
    for name, a in shots.items():
        data = jpeg(a)
        work = decode_image(data, size=p224, working_size=cfg.working_size).working
        t = _interleaved({"off224": lambda: decode_image(data, size=p224),
                          "on224": lambda: checked(data, p224),
                          "off32": lambda: decode_image(data, size=p32),
                          "on32": lambda: checked(data, p32),
                          "legacy32": lambda: decode_image(data, size=p32_legacy),
                          "sha": lambda: content_sha256(data)}, args.rounds)
        for k, v in t.items():
            total[k] += v
        print(f"{name:22s} {a.shape[1]}x{a.shape[0]} (working copy {work.shape[1]}x{work.shape[0]}): 224 px decode "
              f"{t['off224'] * 1e3:.3f} ms, + checks {(t['on224'] - t['off224']) * 1e3:.3f} ms; 32 px decode "
              f"{t['off32'] * 1e3:.3f} ms (model-size draft {t['legacy32'] * 1e3:.3f}), + checks "
              f"{(t['on32'] - t['off32']) * 1e3:.3f} ms; sha256 {t['sha'] * 1e3:.3f} ms ({len(data) // 1024} KiB)")
    n = len(shots)
    ms = {k: v / n * 1e3 for k, v in total.items()}
    print(f"\nper image (mean of {n} photos), 224 px: decode {ms['off224']:.3f} ms, decode + working copy + checks "
          f"{ms['on224']:.3f} ms; 32 px: {ms['off32']:.3f} ms and {ms['on32']:.3f} ms")
    print(f"checks at 224 px: (on - off) / off = {ms['on224'] / ms['off224'] - 1:+.3f} of the decode")
    print(f"checks at 32 px:  (on - off) / off = {ms['on32'] / ms['off32'] - 1:+.3f} of the decode")
    print(f"32 px draft keeping the longer side >= 256: {ms['off32'] / ms['legacy32'] - 1:+.3f} decode time "
          f"against the model-size draft")
    print(f"(checks + sha256) at 224 px / decode = {(ms['on224'] - ms['off224'] + ms['sha']) / ms['off224']:.3f}")
    if args.forward:
        import torch

        from ood_audit.models import build_model

        torch.manual_seed(0)
        model = build_model("resnet18", 10).eval()
        x = torch.rand(32, 3, 224, 224)
        with torch.inference_mode():
            tf = _interleaved({"f": lambda: model(x)}, 5)["f"] / 32 * 1e3
        off, on = ms["off224"] + tf, ms["on224"] + tf
        print(f"ResNet-18 CPU forward {tf:.2f} ms/image ({torch.get_num_threads()} threads)")
        print(f"decode + forward at 224 px: off {off:.2f} ms, on {on:.2f} ms: (on - off) / off = {on / off - 1:+.4f}")
        print(f"(checks + sha256) / (decode + forward) = {(ms['on224'] - ms['off224'] + ms['sha']) / off:.4f}")


if __name__ == "__main__":
    main()
