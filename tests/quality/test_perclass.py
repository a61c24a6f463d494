"""Per-class thresholds: each class's held-out ID flag rate stays at the target; small classes fall back."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ood_audit.flagging.perclass import (
    PerClassThresholds,
    per_class_flags,
    per_class_thresholds,
    row_thresholds,
)
from ood_audit.flagging.thresholds import flags, threshold_at, union_thresholds
from ood_audit.errors import ConfigError

ALPHA = 0.05
SIZES = {0: 3000, 1: 2000, 2: 1200, 3: 30}  # class 3 is under the minimum
SHIFT = {0: 0.0, 1: -1.0, 2: 1.5, 3: -2.0}   # classes the model scores lower or higher as a whole


def _heldout(seed: int, scale: float = 1.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    pred = np.concatenate([np.full(int(n * scale), c) for c, n in SIZES.items()])
    shift = np.array([SHIFT[c] for c in pred])
    base = rng.normal(size=pred.size)
    scores = {"energy": shift + base,
              "knn": 0.5 * shift + 0.6 * base + 0.8 * rng.normal(size=pred.size)}  # correlated second score
    return scores, pred


def _z_tolerance(n_cal: int, n_test: int, z: float = 4.0) -> float:
    """|rate − α| allowed on a fresh sample: the calibrated threshold is an order statistic, so its true
    rate has variance ≈ α(1−α)/n_cal (plus a floor bias ≤ 1/n_cal), and the fresh sample adds a binomial
    α(1−α)/n_test. z = 4: a false failure has probability ≈ 6e-5 per class."""
    return z * math.sqrt(ALPHA * (1 - ALPHA) * (1 / n_cal + 1 / n_test)) + 1 / n_cal


def test_each_class_keeps_the_target_rate_on_fresh_heldout_data():
    cal_scores, cal_pred = _heldout(0)
    table = per_class_thresholds(cal_scores, cal_pred, ["energy"], ALPHA, min_images=50)
    test_scores, test_pred = _heldout(1, scale=2.0)
    glob = {s: threshold_at(v, ALPHA) for s, v in cal_scores.items()}
    flag_glob, _ = union_thresholds(cal_scores, ["energy"], ALPHA)
    flagged, _ = per_class_flags(test_scores, test_pred, table, glob, flag_glob)
    global_flagged, _ = flags(test_scores, flag_glob, ["energy"])
    off_globally = 0
    for c in (0, 1, 2):
        rows = test_pred == c
        tol = _z_tolerance(SIZES[c], int(rows.sum()))
        assert abs(flagged[rows].mean() - ALPHA) <= tol, c
        off_globally += abs(global_flagged[rows].mean() - ALPHA) > tol
    assert off_globally >= 2  # the global thresholds miss the target for the shifted classes: the test can fail


def test_on_the_calibration_data_each_class_is_at_most_the_target_and_within_one_sample():
    scores, pred = _heldout(2)
    table = per_class_thresholds(scores, pred, ["energy", "knn"], ALPHA, min_images=50)
    for c, th in table.classes.items():
        rows = pred == c
        for s in ("energy", "knn"):
            rate = float(np.mean(scores[s][rows] < th.per_score[s]))
            assert ALPHA - 1 / th.images <= rate <= ALPHA
        union = np.mean((scores["energy"][rows] < th.flag["energy"]) | (scores["knn"][rows] < th.flag["knn"]))
        assert union <= ALPHA and th.flag_alpha <= ALPHA
        assert union >= ALPHA - 3 / th.images  # the union is calibrated up to the target, not far under it


def test_same_order_statistic_as_the_global_thresholds():
    scores, pred = _heldout(3)
    table = per_class_thresholds(scores, pred, ["energy"], ALPHA, min_images=50)
    for c, th in table.classes.items():
        mine = {s: v[pred == c] for s, v in scores.items()}
        assert th.per_score == {s: threshold_at(v, ALPHA) for s, v in mine.items()}
        assert (th.flag, th.flag_alpha) == union_thresholds(mine, ["energy"], ALPHA)


def test_small_and_unseen_classes_fall_back_to_global_and_are_recorded():
    scores, pred = _heldout(4)
    table = per_class_thresholds(scores, pred, ["energy"], ALPHA, min_images=50, num_classes=5)
    assert set(table.classes) == {0, 1, 2}
    assert table.fallback == {3: 30, 4: 0}
    glob = {s: threshold_at(v, ALPHA) for s, v in scores.items()}
    th = row_thresholds(table, np.array([3, 4, 0]), glob)
    assert th["energy"][0] == th["energy"][1] == glob["energy"]
    assert th["energy"][2] == table.classes[0].per_score["energy"] != glob["energy"]
    # With a higher minimum, class 2 (1200 images) falls back too.
    assert 2 in per_class_thresholds(scores, pred, ["energy"], ALPHA, min_images=1500).fallback


def test_all_fallback_flags_equal_the_global_flags():
    scores, pred = _heldout(5)
    table = per_class_thresholds(scores, pred, ["energy", "knn"], ALPHA, min_images=5000)
    assert not table.classes
    per = {s: threshold_at(v, ALPHA) for s, v in scores.items()}
    flag_th, _ = union_thresholds(scores, ["energy", "knn"], ALPHA)
    got = per_class_flags(scores, pred, table, per, flag_th)
    assert np.array_equal(got[0], flags(scores, flag_th, ["energy", "knn"])[0])
    assert got[1] == flags(scores, per, [])[1]


def test_minimum_below_50_is_refused_and_the_table_round_trips_as_json():
    scores, pred = _heldout(6)
    with pytest.raises(ConfigError):
        per_class_thresholds(scores, pred, ["energy"], ALPHA, min_images=49)
    with pytest.raises(ConfigError):
        per_class_thresholds(scores, pred, ["msp"], ALPHA, min_images=50)
    table = per_class_thresholds(scores, pred, ["energy"], ALPHA, min_images=50)
    assert PerClassThresholds.model_validate_json(table.model_dump_json()) == table
