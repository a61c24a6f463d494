"""Per-class thresholds (``calibrate --per-class-thresholds``; SPEC §10–11 applied per predicted class).

For each predicted class c with at least ``min_images`` held-out ID images, the thresholds are computed
on that class's held-out scores exactly as the global ones are on all of them
(:mod:`ood_audit.flagging.thresholds`): per score t_s(c) = s_(⌊αn_c⌋+1) of the class's sorted scores
(:func:`threshold_at`), and the flag thresholds for ``flag_on`` at a common rate α'(c) ≤ α
(:func:`union_thresholds`). So a class's held-out ID flag rate is ≤ α and ≥ α − 1/n_c, like the global
one, and classes that the model scores lower as a whole are not flagged more often for it.

A class with fewer held-out images (or none) uses the global thresholds; its count is recorded in
``fallback`` so the bundle says which classes did. At scan time a row uses its *predicted* class's
thresholds (:func:`row_thresholds`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from ood_audit.errors import ConfigError, DataError
from ood_audit.bundle.schema import ClassThresholds, PerClassThresholds
from ood_audit.flagging.thresholds import threshold_at, union_thresholds

MIN_CLASS_IMAGES_FLOOR = 50   # below this a class's 1 − α quantile is too noisy to be worth its own threshold
DEFAULT_MIN_CLASS_IMAGES = 100

__all__ = ["ClassThresholds", "PerClassThresholds", "check_min_images", "per_class_flags",
           "per_class_thresholds", "row_thresholds"]


def check_min_images(min_images: int) -> int:
    if min_images < MIN_CLASS_IMAGES_FLOOR:
        raise ConfigError(f"--per-class-min-images must be >= {MIN_CLASS_IMAGES_FLOOR}, got {min_images}")
    return int(min_images)


def per_class_thresholds(scores: Mapping[str, np.ndarray], pred_class: np.ndarray, flag_on: Sequence[str],
                         id_flag_rate: float, *, min_images: int = DEFAULT_MIN_CLASS_IMAGES,
                         num_classes: int | None = None) -> PerClassThresholds:
    """Thresholds per predicted class from held-out ID ``scores`` (one array per score, aligned with
    ``pred_class``). Classes under ``min_images``, and with ``num_classes`` those never predicted, fall back."""
    min_images = check_min_images(min_images)
    pred = np.asarray(pred_class, dtype=np.int64)
    arrs = {s: np.asarray(v, dtype=np.float64) for s, v in scores.items()}
    if any(a.shape != pred.shape for a in arrs.values()):
        raise DataError("per-class thresholds: every score array must have one value per pred_class entry")
    missing = [s for s in flag_on if s not in arrs]
    if missing:
        raise ConfigError(f"flag_on names scores without held-out values: {missing}")
    labels, counts = np.unique(pred, return_counts=True)
    classes: dict[int, ClassThresholds] = {}
    fallback: dict[int, int] = {}
    for c, n in zip(labels.tolist(), counts.tolist()):
        if n < min_images:
            fallback[c] = n
            continue
        mine = {s: a[pred == c] for s, a in arrs.items()}
        flag, alpha = union_thresholds(mine, list(flag_on), id_flag_rate)
        classes[c] = ClassThresholds(images=n, per_score={s: threshold_at(v, id_flag_rate) for s, v in mine.items()},
                                     flag=flag, flag_alpha=alpha)
    if num_classes is not None:
        for c in range(num_classes):
            if c not in classes:
                fallback.setdefault(c, 0)
    return PerClassThresholds(target_id_flag_rate=id_flag_rate, min_images=min_images, flag_on=list(flag_on),
                              classes=classes, fallback=dict(sorted(fallback.items())))


def row_thresholds(table: PerClassThresholds, pred_class: np.ndarray, global_thresholds: Mapping[str, float],
                   kind: str = "per_score") -> dict[str, np.ndarray]:
    """Per-row thresholds [N] for each score in ``global_thresholds``: the row's predicted class's when
    it has its own (``kind`` ``per_score`` or ``flag``), else the global value."""
    if kind not in ("per_score", "flag"):
        raise ConfigError(f"kind must be 'per_score' or 'flag', got {kind!r}")
    pred = np.asarray(pred_class, dtype=np.int64)
    out = {s: np.full(pred.shape, float(t)) for s, t in global_thresholds.items()}
    for c, th in table.classes.items():
        rows = pred == c
        if rows.any():
            for s, t in getattr(th, kind).items():
                if s in out:
                    out[s][rows] = t
    return out


def per_class_flags(scores: Mapping[str, np.ndarray], pred_class: np.ndarray, table: PerClassThresholds,
                    global_per_score: Mapping[str, float],
                    global_flag: Mapping[str, float]) -> tuple[np.ndarray, list[list[str]]]:
    """(flagged [N], reasons per row), as :func:`~ood_audit.flagging.thresholds.flags` with each row's
    predicted-class thresholds: reasons name every score under its ``per_score`` threshold, ``flagged``
    is any ``flag_on`` score under its ``flag`` threshold."""
    pred = np.asarray(pred_class, dtype=np.int64)
    per = row_thresholds(table, pred, global_per_score, "per_score")
    flag = row_thresholds(table, pred, global_flag, "flag")
    names = [s for s in per if s in scores]
    below = {s: np.asarray(scores[s], dtype=np.float64) < per[s] for s in names}
    reasons = [[s for s in names if below[s][i]] for i in range(pred.size)]
    flagged = np.zeros(pred.size, dtype=bool)
    for s in table.flag_on:
        if s in scores and s in flag:
            flagged |= np.asarray(scores[s], dtype=np.float64) < flag[s]
    return flagged, reasons
