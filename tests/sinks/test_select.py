"""Selection policies and the per-class budget on constructed runs with known answers."""
import pytest

from ood_audit.errors import ConfigError
from ood_audit.store.runs import find_run, run_dataset
from ood_audit.sinks.select import Selection, apply_budget, select_rows, split_budget

from tests.reports import row, write_run

FLAG_ON = ["featurenorm", "csd"]


def _select(out, **kw):
    run = find_run(out)
    return select_rows(run_dataset(run), run.flag_on, Selection(**kw)).column("uri").to_pylist()


@pytest.fixture
def run(tmp_path):
    """10 ok rows with pct i*10 (i=0..9) in classes i % 3, flagged below 25; one broken row; disagreements."""
    rows = [row(f"/d/{i}.png", pct=float(i * 10), pred_class=i % 3, flagged=i * 10 < 25) for i in range(10)]
    rows[0]["flag_reasons"] = ["featurenorm", "csd"]       # both detectors: not a disagreement
    rows[1]["flag_reasons"] = ["csd"]                      # one: disagreement
    rows[2]["flag_reasons"] = ["featurenorm", "msp"]       # one (msp does not count): disagreement
    rows[5]["flag_reasons"] = ["knn"]                      # neither
    rows[7].update(flagged=False, flag_reasons=["featurenorm"])  # below FeatureNorm's own threshold only
    rows.append(row("/d/broken.png", status="decode_error"))
    rows.append(row("/d/missing.png", status="missing"))
    write_run(str(tmp_path), "n1", rows, rows_per_file=4)
    return str(tmp_path)


def test_threshold_is_the_flags_ranked_by_anomaly(run):
    assert _select(run) == ["/d/0.png", "/d/1.png", "/d/2.png"]
    assert _select(run, budget=2) == ["/d/0.png", "/d/1.png"]


def test_top_k_is_the_lowest_percentiles_and_skips_non_ok(run):
    assert _select(run, policy="top-k", budget=4) == ["/d/0.png", "/d/1.png", "/d/2.png", "/d/3.png"]
    assert len(_select(run, policy="top-k", budget=100)) == 10  # broken and missing rows never go out


def test_disagreement_is_exactly_one_of_featurenorm_and_csd(run):
    assert _select(run, policy="disagreement") == ["/d/1.png", "/d/2.png", "/d/7.png"]


def test_per_class_top_k(run):
    # classes: 0 -> 0,3,6,9  1 -> 1,4,7  2 -> 2,5,8; budget 5 -> shares 2/2/1 (remainder to class 0, most rows)
    got = _select(run, policy="top-k", budget=5, per_class=True)
    assert sorted(got) == sorted(["/d/0.png", "/d/3.png", "/d/1.png", "/d/4.png", "/d/2.png"])
    assert got == ["/d/0.png", "/d/1.png", "/d/2.png", "/d/3.png", "/d/4.png"]  # still ranked


def test_per_class_threshold_and_disagreement(run):
    # flagged 0 (c0), 1 (c1), 2 (c2): budget 2 -> one each to the two classes first in order (ties: class id)
    assert _select(run, budget=2, per_class=True) == ["/d/0.png", "/d/1.png"]
    # disagreement 1 (c1), 2 (c2), 7 (c1): budget 2 over classes {1: 2, 2: 1} -> 1 each
    assert _select(run, policy="disagreement", budget=2, per_class=True) == ["/d/1.png", "/d/2.png"]


@pytest.mark.parametrize("counts,budget,want", [
    ({0: 10, 1: 10, 2: 10}, 9, {0: 3, 1: 3, 2: 3}),
    ({0: 10, 1: 20, 2: 5}, 10, {0: 3, 1: 4, 2: 3}),       # remainder to the class with the most candidates
    ({0: 1, 1: 100, 2: 2}, 12, {0: 1, 1: 9, 2: 2}),       # unused shares redistributed
    ({0: 1, 1: 2}, 50, {0: 1, 1: 2}),                     # not enough candidates: all of them
    ({0: 5, 1: 5}, 1, {0: 1, 1: 0}),                      # tie on count: lower class id first
    ({0: 0, 1: 4}, 3, {0: 0, 1: 3}),
])
def test_split_budget(counts, budget, want):
    got = split_budget(counts, budget)
    assert got == want
    assert sum(got.values()) == min(budget, sum(counts.values()))


def test_bad_flags_name_the_flag():
    for kw, flag in [({"budget": 0}, "--budget"), ({"policy": "top-k"}, "--budget"),
                     ({"policy": "nope"}, "--policy"), ({"per_class": True}, "--per-class")]:
        with pytest.raises(ConfigError, match=flag):
            Selection(**kw)


def test_apply_budget_without_per_class_is_a_prefix():
    import pyarrow as pa
    t = pa.table({"uri": list("abcd"), "pred_class": [0, 0, 1, 1], "anomaly": [0.9, 0.8, 0.7, 0.6]})
    assert apply_budget(t, 3, False).column("uri").to_pylist() == ["a", "b", "c"]
    assert apply_budget(t, 2, True).column("uri").to_pylist() == ["a", "c"]


def test_disagreement_follows_the_bundles_flag_rule(tmp_path):
    """A bundle that replaced an inverted FeatureNorm flags on featurenorm2 and CSD: the split votes are those
    two's, and a bundle flagging on one score has no vote to split (one line)."""
    from ood_audit.sinks.items import items_from_table

    out = str(tmp_path / "fn2")
    rows = [row(f"/e/{i}.png", pct=float(10 + i), flagged=True) for i in range(4)]
    rows[0]["flag_reasons"] = ["featurenorm2", "csd"]  # both of the pair: not a disagreement
    rows[1]["flag_reasons"] = ["featurenorm2"]         # one
    rows[2]["flag_reasons"] = ["csd"]                  # the other
    rows[3]["flag_reasons"] = ["featurenorm"]          # not one of this bundle's pair
    bundle = {"id": "b" * 32, "uri": "", "flag_on": ["featurenorm2", "csd"]}
    write_run(out, "n1", rows, summary={"bundle": bundle})
    run = find_run(out)
    table = select_rows(run_dataset(run), run.flag_on, Selection(policy="disagreement"))
    assert table.column("uri").to_pylist() == ["/e/1.png", "/e/2.png"]
    assert [i.flagged_by for i in items_from_table(table, "disagreement", run.flag_on)] == ["featurenorm2", "csd"]
    one = str(tmp_path / "csd-only")
    write_run(one, "n1", rows, summary={"bundle": {**bundle, "flag_on": ["csd"]}})
    with pytest.raises(ConfigError, match="^--policy disagreement compares the two scores a bundle flags on; "
                                          "this run's bundle flags on csd:"):
        _select(one, policy="disagreement")
