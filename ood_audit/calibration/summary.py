"""Human-readable summary of an audit bundle (`ood-audit bundle show`)."""
from __future__ import annotations

from typing import Any


def format_bundle(b: Any) -> str:
    m = b.meta
    mod, sel, th = m.get("model", {}), m.get("selection", {}), m.get("thresholds", {})
    lines = [f"bundle {b.id}", f"  uri: {b.uri}",
             f"  created: {b.provenance.get('created_at', '?')}",
             f"  model: {mod.get('arch')} ({mod.get('num_classes')} classes, {mod.get('image_size')} px"
             f"{', small input' if mod.get('small_input') else ''})", ""]
    ratios = sel.get("ratios", {})
    lines.append(f"block selection: {sel.get('selector')} over {sel.get('images')} images, seed {sel.get('seed')}")
    best = max(ratios.values()) if ratios else 1.0
    for blk, r in ratios.items():
        mark = " <- selected" if blk == sel.get("selected") else ""
        mark += " (NormRatio choice)" if blk == sel.get("normratio_choice") and blk != sel.get("selected") else ""
        bar = "#" * max(1, int(30 * r / best)) if best > 0 else ""
        lines.append(f"  {blk:<28} R={r:8.4f} {bar}{mark}")
    lines += ["", f"thresholds at target ID false-flag rate {th.get('target_fpr')} "
                  f"(held-out {th.get('heldout_images')} images; flagged = any of {th.get('flag_on')} below its "
                  f"flag threshold, union calibrated at alpha {th.get('flag_alpha', 0):.4f})"]
    flag = th.get("flag", {})
    for s, t in th.get("per_score", {}).items():
        extra = f"   flag threshold {flag[s]:.6g}" if s in flag else ""
        lines.append(f"  {s:<11} {t:>14.6g}{extra}")
    csd, knn = m.get("csd", {}), m.get("knn", {})
    lines += ["", f"CSD bank: {csd.get('bank_size')} x {csd.get('dim')} ({csd.get('dtype')}, k={csd.get('k')}, "
                  f"{csd.get('index', {}).get('type')})",
              f"kNN bank: {knn.get('bank_size')} x {knn.get('dim')} ({knn.get('dtype')}, k={knn.get('k')}, "
              f"{knn.get('index', {}).get('type')})",
              "files: " + ", ".join(f"{n} ({f['bytes']} B)" for n, f in sorted(b.files.items()))]
    return "\n".join(lines)
