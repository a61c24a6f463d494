"""`ood-audit demo --quick` end to end: the full tour's stages on a smaller training set, and the summary's
quality targets held to what its set sizes allow.

The targets (``demo.summary``) are flag rates: every outlier kind flagged at least 0.85 of the time, unseen
digits at most 0.08. A night of a few dozen objects per kind realises such a rate with binomial scatter, so
each kind's flagged count must lie inside the range that a rate exactly at its target leaves with
probability 1 − α/6 (six targets: the five outlier kinds and the unseen digits; Bonferroni, α = 0.001 for
the whole test). A count outside that range is evidence, at level α, that the demo misses its target.
"""
from __future__ import annotations

import pytest
from scipy.stats import binom

from ood_audit.demo.data import OUTLIER_KINDS
from ood_audit.calibration.split import VALIDATION_SPLIT
from ood_audit.demo.summary import ID_KIND, TARGET_ID_RATE, TARGET_OUTLIER_RATE
from ood_audit.demo.tour import COPIES, QUICK

ALPHA = 1e-3
STAGES = {"train", "calibrate", "scan night 1", "export night 1", "report night 1", "scan night 2", "export night 2",
          "report night 2"}


def fewest_flagged(n: int, rate: float, alpha: float) -> int:
    """The smallest count of ``n`` that a flag rate of ``rate`` reaches with probability ≥ 1 − alpha."""
    return int(binom.ppf(alpha, n, rate))


def most_flagged(n: int, rate: float, alpha: float) -> int:
    """The largest count of ``n`` that a flag rate of ``rate`` exceeds with probability ≤ alpha."""
    return int(binom.isf(alpha, n, rate))


def test_binomial_bounds_are_the_tails():
    assert binom.cdf(fewest_flagged(40, 0.85, 1e-4) - 1, 40, 0.85) <= 1e-4 < binom.cdf(fewest_flagged(40, 0.85, 1e-4), 40, 0.85)
    assert binom.sf(most_flagged(150, 0.08, 1e-4), 150, 0.08) <= 1e-4 < binom.sf(most_flagged(150, 0.08, 1e-4) - 1, 150, 0.08)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_demo_sets_its_thresholds_on_digits_its_model_never_saw(quick_demo):
    """Calibration's held-out part is exactly the fine-tuned model's validation split (its training record
    says which images those are), and on the unseen digits of night 1 the flag rate stays within the binomial
    tolerance of the bundle's own target (not only of the demo's looser quality target)."""
    (cal,) = quick_demo.calibrations
    record = quick_demo.trainings[-1].record  # the weights that were calibrated
    split, thresholds = cal.info.split, cal.info.thresholds
    assert split.heldout_unseen is True and split.method == VALIDATION_SPLIT, split
    assert record["config"]["data"].rstrip("/") == cal.info.data.source.rstrip("/")
    val_images = record["validation"]["images"]  # held out of training by the same hash, over the same data
    assert val_images - cal.info.data.decode_failures <= split.heldout_images <= val_images
    digits = quick_demo.summary["kinds"][ID_KIND]
    assert digits["flagged"] <= most_flagged(digits["scored"], thresholds.target_id_flag_rate, ALPHA), digits


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_demo_runs_every_stage_and_meets_its_quality_targets(quick_demo):
    """The session's one quick demo (:mod:`tests.fixtures.demo_run`), run through the command line."""
    assert quick_demo.code == 0
    summary, out = quick_demo.summary, quick_demo.out
    assert "ood-audit demo: summary" in out and "Quality target" in out
    assert set(summary["stages"]) == STAGES and summary["finetuned"]
    kinds = summary["kinds"]
    alpha = ALPHA / (len(OUTLIER_KINDS) + 1)
    digits = kinds[ID_KIND]
    assert digits["scored"] == QUICK.incoming_digits
    assert digits["flagged"] <= most_flagged(digits["scored"], TARGET_ID_RATE, alpha), digits
    for kind in OUTLIER_KINDS:
        k = kinds[kind]
        assert k["scored"] == QUICK.per_kind + (COPIES if kind == "faces" else 0), (kind, k)
        assert k["flagged"] >= fewest_flagged(k["scored"], TARGET_OUTLIER_RATE, alpha), (kind, k)
    assert summary["night2"]["objects"] == QUICK.night2_digits + QUICK.night2_faces + COPIES
