"""The demo's per-kind table and quality verdict, against sklearn on the same arrays."""
import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from ood_audit.demo.data import demo_files, kind_of
from ood_audit.demo.summary import (ID_KIND, TARGET_ID_RATE, TARGET_OUTLIER_RATE, format_kinds, per_kind,
                                    quality, wilson_interval)


def _rows(rng, kind, n, loc, flag_rate, prefix="s3://b/in"):
    out = []
    for i in range(n):
        s = float(rng.normal(loc))
        out.append({"uri": f"{prefix}/{kind}/{i:03d}.png", "status": "ok", "flagged": i < flag_rate * n,
                    "featurenorm": s, "csd": s - 1, "knn": -abs(s)})
    return out


def test_per_kind_metrics_match_sklearn_and_the_target():
    rng = np.random.default_rng(0)
    rows = _rows(rng, "digits", 100, 2.0, 0.05) + _rows(rng, "faces", 40, -1.0, 0.9)
    rows += [{"uri": "s3://b/in/digits/face-000.png", "status": "ok", "flagged": True, "featurenorm": -3.0,
              "csd": -4.0, "knn": -3.0},
             {"uri": "s3://b/in/broken/x.png", "status": "decode_error", "flagged": None, "featurenorm": None,
              "csd": None, "knn": None}]
    kinds = per_kind(rows, "s3://b/in/")
    assert kinds["faces"]["objects"] == 41  # the face planted under digits/ counts as a face
    assert kinds["broken"]["bad_input"] == 1 and kinds["broken"]["flag_rate"] is None
    ids = [r for r in rows if kind_of(r["uri"].split("in/", 1)[1]) == "digits"]
    faces = [r for r in rows if kind_of(r["uri"].split("in/", 1)[1]) == "faces"]
    for s in ("featurenorm", "csd", "knn"):
        y = [1] * len(ids) + [0] * len(faces)
        want = roc_auc_score(y, [r[s] for r in ids] + [r[s] for r in faces])
        assert abs(kinds["faces"][s]["auroc"] - want) < 1e-9
        thr = np.percentile([r[s] for r in ids], 5)  # 95% of ID at or above
        fpr = np.mean([r[s] >= thr for r in faces])
        assert abs(kinds["faces"][s]["fpr95"] - fpr) <= 1 / len(faces) + 1e-9
    verdict, misses = quality(kinds)
    assert verdict == "MISSED" and "letters: nothing scored" in misses  # absent kinds are misses, not passes
    assert any("faces" in line and "(bad input)" not in line for line in format_kinds(kinds))


def test_demo_data_is_real_and_night_two_plants_faces_in_digits():
    id_files, night1, night2 = demo_files(n_incoming_digits=20, per_kind=5, night2_digits=6, night2_faces=4)
    assert {k.split("/")[0] for k in night1} == {"digits", "letters", "photos", "textures", "faces", "noise",
                                                 "broken"}
    assert not set(id_files) & set(night1) and not set(night1) & set(night2)
    assert sum(kind_of(k) == "faces" for k in night2) == 4 and all(k.startswith("digits/") for k in night2)
    assert len(id_files) == 1797 - 20 - 6
    _, with_copies, night2_copies = demo_files(n_incoming_digits=20, per_kind=5, night2_digits=6, night2_faces=4,
                                               copies=3)
    reuploads = [k for k in with_copies if kind_of(k) == "reuploads"]
    assert len(reuploads) == 3 and all(with_copies[k] in id_files.values() for k in reuploads)
    copies = [k for k in with_copies if k.startswith("faces/copy-")]
    assert len(copies) == 3 and all(with_copies[k] in {v for j, v in night1.items() if j.startswith("faces/")}
                                    for k in copies)
    again = [k for k in night2_copies if k.startswith("digits/again-")]
    assert len(again) == 3 and all(night2_copies[k] in night1.values() for k in again)


@pytest.mark.parametrize("k,n", [(0, 40), (13, 150), (34, 40), (40, 40), (1, 3)])
def test_wilson_interval_is_scipys(k, n):
    want = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((want.low, want.high), abs=2e-4)  # z = 1.96 vs 1.95996...


def _kinds(id_flagged, id_n=150, outlier_flagged=40, outlier_n=40):
    from ood_audit.demo.data import OUTLIER_KINDS
    kinds = {k: {"flagged": outlier_flagged, "scored": outlier_n} for k in OUTLIER_KINDS}
    kinds[ID_KIND] = {"flagged": id_flagged, "scored": id_n}
    return kinds


def test_verdict_tells_a_miss_from_sampling_scatter():
    assert quality(_kinds(12)) == ("MET", [])                        # 12/150 = 0.08: on the target
    # 13/150 = 0.087 is over 0.08, but 0.08 lies inside its 95% interval: no evidence of a miss.
    assert binomtest(13, 150).proportion_ci(method="wilson").low < TARGET_ID_RATE
    verdict, misses = quality(_kinds(13))
    assert verdict == "consistent with the target" and misses == [
        "unseen digits flagged 13/150 = 0.087 > 0.08, but the 95% interval of that count (0.051-0.143) contains 0.08"]
    # 25/150 = 0.167: the interval's low end is above 0.08.
    assert binomtest(25, 150).proportion_ci(method="wilson").low > TARGET_ID_RATE
    assert quality(_kinds(25))[0] == "MISSED"
    # An outlier kind at 30/40 = 0.75: its interval (0.60-0.86) still reaches 0.85; at 25/40 it does not.
    assert quality(_kinds(6, outlier_flagged=30))[0] == "consistent with the target"
    assert binomtest(25, 40).proportion_ci(method="wilson").high < TARGET_OUTLIER_RATE
    verdict, misses = quality(_kinds(6, outlier_flagged=25))
    ci = binomtest(25, 40).proportion_ci(method="wilson")
    assert verdict == "MISSED" and len(misses) == 5  # each of the five outlier kinds
    assert misses[0].endswith(f"({ci.low:.3f}-{ci.high:.3f}) is clear of 0.85"), misses[0]
