import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ood_audit import ood_metrics


@pytest.mark.parametrize("seed", range(4))
def test_metrics_agree_with_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    i = np.round(rng.normal(1, 1, 257), 1)
    o = np.round(rng.normal(0, 1, 133), 1)
    m = ood_metrics(i, o)
    y = np.r_[np.ones(i.size), np.zeros(o.size)]
    s = np.r_[i, o]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)


def test_fpr95_hendrycks_convention():
    i = np.arange(1, 101, dtype=float)  # threshold keeping 95% of ID is 6 (scores 6..100)
    o = np.array([0.0, 5.9, 6.0, 50.0])
    assert ood_metrics(i, o)["fpr95"] == pytest.approx(0.5)
    # perfect separation, and fully inverted
    assert ood_metrics(i, i - 1000)["fpr95"] == 0.0
    assert ood_metrics(i, i + 1000)["fpr95"] == 1.0


def test_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([1.0, np.nan], [0.0])
