"""The demo's printed summary: per incoming kind, the flag rate and how well each score separates it from
the unseen digits (FPR95 and AUROC, SPEC §9: ID is the positive class), against the quality target."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ood_audit.metrics import ood_metrics
from ood_audit.demo.data import OUTLIER_KINDS, REUPLOADS, kind_of

SCORES = ("featurenorm", "csd", "knn")
ID_KIND = "digits"
TARGET_OUTLIER_RATE = 0.85   # every outlier kind flagged at least this often
TARGET_ID_RATE = 0.08        # unseen digits flagged at most this often


def per_kind(rows: list[Mapping[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    """Counts, flag rate and per-score metrics for each kind; ``rows`` have uri, status, flagged, scores."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(kind_of(r["uri"].split(prefix.rstrip("/") + "/", 1)[-1]), []).append(r)
    id_ok = [r for r in groups.get(ID_KIND, []) if r["status"] == "ok"]
    out: dict[str, dict[str, Any]] = {}
    for kind, rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        d: dict[str, Any] = {"objects": len(rs), "scored": len(ok), "bad_input": len(rs) - len(ok),
                             "flagged": sum(bool(r["flagged"]) for r in ok),
                             "flag_rate": (sum(bool(r["flagged"]) for r in ok) / len(ok)) if ok else None}
        if kind not in (ID_KIND, REUPLOADS) and ok and len(id_ok) >= 2:
            for s in SCORES:
                i = np.array([r[s] for r in id_ok if r[s] is not None], dtype=np.float64)
                o = np.array([r[s] for r in ok if r[s] is not None], dtype=np.float64)
                if i.size and o.size:
                    m = ood_metrics(i, o)
                    d[s] = {"fpr95": m["fpr95"], "auroc": m["auroc"]}
        out[kind] = d
    return out


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% at the default ``z``) of a rate observed as ``k`` of ``n``."""
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def quality(kinds: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[str]]:
    """The verdict on the targets, and a line per target a rate did not reach.

    A night has a few dozen objects per kind, so a measured rate scatters around the true one: a rate on the
    wrong side of its target whose 95% interval (:func:`wilson_interval`) still contains the target is
    ``consistent`` with it, not evidence of a miss. ``MISSED``: some rate is clear of its target, or a kind
    had nothing scored; ``MET``: every rate is on the right side."""
    misses, clear = [], False
    targets = [(kind, TARGET_OUTLIER_RATE, ">=") for kind in OUTLIER_KINDS] + [(ID_KIND, TARGET_ID_RATE, "<=")]
    for kind, target, side in targets:
        d = kinds.get(kind) or {}
        k, n = d.get("flagged", 0), d.get("scored", 0)
        name = "unseen digits" if kind == ID_KIND else kind
        if not n:
            misses.append(f"{name}: nothing scored")
            clear = True
            continue
        rate = k / n
        if (rate >= target) if side == ">=" else (rate <= target):
            continue
        low, high = wilson_interval(k, n)
        inside = low <= target <= high
        clear = clear or not inside
        wrong_side = "<" if side == ">=" else ">"
        misses.append(f"{name} flagged {k}/{n} = {rate:.3f} {wrong_side} {target:.2f}, "
                      + (f"but the 95% interval of that count ({low:.3f}-{high:.3f}) contains {target:.2f}" if inside
                         else f"and the 95% interval of that count ({low:.3f}-{high:.3f}) is clear of {target:.2f}"))
    return ("MISSED" if clear else "consistent with the target" if misses else "MET"), misses


def format_kinds(kinds: Mapping[str, Mapping[str, Any]]) -> list[str]:
    head = f"  {'kind':<10} {'objects':>7} {'scored':>6} {'flagged':>7} {'rate':>5}   " + \
        "   ".join(f"{s + ' FPR95/AUROC':>22}" for s in SCORES)
    lines = [head]
    for kind, d in kinds.items():
        rate = "  -  " if d["flag_rate"] is None else f"{d['flag_rate']:.2f}"
        cells = []
        for s in SCORES:
            m = d.get(s)
            cells.append(f"{'':>12}" + (f"{m['fpr95']:.2f} / {m['auroc']:.3f}" if m else f"{'-':>10}"))
        role = {ID_KIND: "  (ID)", "broken": "  (bad input)", REUPLOADS: "  (training images uploaded again)"}.get(kind, "")
        lines.append(f"  {kind:<10} {d['objects']:>7} {d['scored']:>6} {d['flagged']:>7} {rate:>5}   "
                     + "   ".join(f"{c:>22}" for c in cells) + role)
    return lines


def format_summary(s: Mapping[str, Any]) -> str:
    """The whole printed summary (``s`` is :func:`~ood_audit.demo.tour.run_demo`'s result)."""
    verdict, misses = quality(s["kinds"])
    lines = ["", "ood-audit demo: summary", "", "Where everything is:"]
    lines += [f"  {name:<22} {where}" for name, where in s["where"].items()]
    val = s.get("val_accuracy")
    lines += ["", f"Model: validation accuracy {'n/a' if val is None else f'{val:.3f}'} "
                  f"({s.get('val_images')} held-out digits); fine-tuned with ALPA: {s.get('finetuned')}", "",
              "Night 1, per incoming kind (flag rate; FPR95 = share of the kind scoring above the 95%-of-ID "
              "threshold, ID positive; AUROC ID vs kind):"]
    lines += format_kinds(s["kinds"])
    lines += ["", f"Quality target: every outlier kind flagged >= {TARGET_OUTLIER_RATE:.2f}, unseen digits "
                  f"<= {TARGET_ID_RATE:.2f}: {verdict}"] + [f"  {line}" for line in misses]
    if s.get("duplicates"):
        d = s["duplicates"]
        lines += ["", f"Duplicates: night 1 has {d['exact_night1']} exact copies of its own objects and "
                      f"{d['near_id']} of {d['reuploads']} re-uploaded training images marked as near-duplicates "
                      f"of the calibration set (and {d['near_other']} other object(s)); night 2 has "
                      f"{d['exact_earlier']} exact copies of night 1's objects."]
    if s.get("night2"):
        n2 = s["night2"]
        lines += ["", f"Night 2 (incremental): {n2['objects']} new object(s) scanned, {n2['skipped']} already "
                      f"scanned skipped; {n2['flagged']} flagged."]
        lines += [f"  drift: {line}" for line in n2.get("drift", [])]
    if s.get("exports"):
        lines += ["", "Exports (deduplicated across nights):"]
        lines += [f"  {line}" for line in s["exports"]]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["stages"].items()),
              f"Total {s['seconds']:.0f} s"]
    return "\n".join(lines)
