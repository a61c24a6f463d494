"""Drift statistics (SPEC §13) against values derived by hand from the formulas, and through the report."""
import math
from html.parser import HTMLParser
from statistics import NormalDist

import pytest

from ood_audit.report import build_report, render_html
from ood_audit.report.drift import Rate, benjamini_hochberg, drift_rows, two_proportion_z

from tests.reports import row, write_run


def expected_z_p(x1, n1, x2, n2):
    """The textbook pooled two-proportion test, written out independently of the code under test."""
    p1, p2, pooled = x1 / n1, x2 / n2, (x1 + x2) / (n1 + n2)
    z = (p2 - p1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return z, 2 * (1 - NormalDist().cdf(abs(z)))


@pytest.mark.parametrize("x1,n1,x2,n2", [(20, 200, 60, 200), (10, 100, 12, 100), (30, 300, 52, 300),
                                         (5, 1000, 0, 40), (900, 1000, 80, 100)])
def test_two_proportion_z_matches_the_formula(x1, n1, x2, n2):
    z, p = two_proportion_z(x1, n1, x2, n2)
    ez, ep = expected_z_p(x1, n1, x2, n2)
    assert z == pytest.approx(ez, rel=1e-12)
    assert p == pytest.approx(ep, rel=1e-6, abs=1e-12)


def test_known_values_and_degenerate_rates():
    z, p = two_proportion_z(20, 200, 60, 200)  # 10% -> 30%: pooled 0.2, sd = sqrt(.16 * .01) = 0.04
    assert z == pytest.approx(5.0) and p == pytest.approx(5.733e-7, rel=1e-3)
    assert two_proportion_z(0, 50, 0, 80) == (0.0, 1.0)  # nothing flagged in either run: no evidence
    assert two_proportion_z(50, 50, 80, 80) == (0.0, 1.0)
    with pytest.raises(ValueError):
        two_proportion_z(0, 0, 1, 10)


def test_benjamini_hochberg_by_hand():
    # sorted p: .005 (x4/1 = .02), .01 (x4/2 = .02), .03 (x4/3 = .04), .04 (x4/4 = .04); step-up minima
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])
    assert benjamini_hochberg([]) == []


BEFORE = {"a": Rate(20, 200), "b": Rate(10, 100), "c": Rate(2, 20), "d": Rate(30, 300), "old": Rate(1, 50)}
NOW = {"a": Rate(60, 200), "b": Rate(12, 100), "c": Rate(10, 20), "d": Rate(52, 300), "fresh": Rate(3, 40)}


def test_drift_rows_verdicts():
    rows = {r.prefix: r for r in drift_rows(BEFORE, NOW)}
    assert sorted(rows) == ["a", "b", "c", "d", "fresh", "old"]
    assert rows["a"].verdict == "changed"
    assert rows["b"].verdict == "no change"
    assert rows["c"].verdict == "too few" and rows["c"].p is None  # 20 scored < 30: no test at all
    # d's raw p is below 0.01, but three prefixes were tested: BH raises it to p*3/2 > 0.01
    _, p_d = expected_z_p(30, 300, 52, 300)
    assert p_d < 0.01
    assert rows["d"].q == pytest.approx(p_d * 3 / 2, rel=1e-6) and rows["d"].verdict == "no change"
    assert rows["fresh"].verdict == "new" and rows["old"].verdict == "gone"
    # with only a and d tested, d's adjusted p is p*2/2 and it is marked
    two = {r.prefix: r for r in drift_rows({k: BEFORE[k] for k in "ad"}, {k: NOW[k] for k in "ad"})}
    assert two["d"].q == pytest.approx(p_d, rel=1e-6) and two["d"].verdict == "changed"


def test_other_bundle_shows_rates_only():
    rows = drift_rows(BEFORE, NOW, same_bundle=False)
    assert {r.verdict for r in rows} == {"other bundle"}
    assert all(r.z is None and r.p is None and r.q is None for r in rows)
    a = next(r for r in rows if r.prefix == "a")
    assert (a.before.rate, a.now.rate) == (0.1, 0.3)


def _prefix_rows(prefix, flagged, scored, errors=0, root="/in"):
    rows = [row(f"{root}/{prefix}/{i:04d}.png", flagged=i < flagged) for i in range(scored)]
    rows += [row(f"{root}/{prefix}/bad{i}.png", status="decode_error") for i in range(errors)]
    return rows


class _DriftTable(HTMLParser):
    """prefix -> verdict cell text, from the page's drift table."""

    def __init__(self):
        super().__init__()
        self.rows, self._prefix, self._in_verdict = {}, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-prefix" in a:
            self._prefix = a["data-prefix"]
        self._in_verdict = tag == "td" and (a.get("class") or "").startswith("verdict-")

    def handle_data(self, data):
        if self._in_verdict and self._prefix:
            self.rows[self._prefix] = data.strip()
            self._in_verdict = False


def _write_nights(tmp_path, bundle_now="b" * 32):
    out = str(tmp_path / "out")
    night1 = _prefix_rows("a", 20, 200) + _prefix_rows("b", 10, 100) + _prefix_rows("c", 2, 20)
    night2 = _prefix_rows("a", 60, 200, errors=3) + _prefix_rows("b", 12, 100) + _prefix_rows("c", 10, 20)
    write_run(out, "n1", night1, day=0, inputs=["/in"])
    write_run(out, "n2", night2, day=1, inputs=["/in"], bundle_id=bundle_now)
    return out


def test_report_drift_on_constructed_runs(tmp_path):
    data = build_report(_write_nights(tmp_path), options=None)
    assert data.run.run_id == "n2" and data.drift.previous.run_id == "n1" and data.drift.same_bundle
    rows = {data.display_prefix(r.prefix): r for r in data.drift.rows}
    assert {k: r.verdict for k, r in rows.items()} == {"a/": "changed", "b/": "no change", "c/": "too few"}
    assert (rows["a/"].before.flagged, rows["a/"].before.scored, rows["a/"].now.flagged, rows["a/"].now.scored) \
        == (20, 200, 60, 200)  # decode errors are not scored objects
    z, p = expected_z_p(20, 200, 60, 200)
    assert rows["a/"].z == pytest.approx(z) and rows["a/"].p == pytest.approx(p, rel=1e-6)
    table = _DriftTable()
    table.feed(render_html(data))
    assert table.rows["a/"].startswith("changed") and table.rows["b/"] == "no significant change"
    assert table.rows["c/"].startswith("no verdict")
    prefixes = {data.display_prefix(p.prefix): p.stats for p in data.prefixes}
    assert (prefixes["a/"].objects, prefixes["a/"].errors, prefixes["a/"].flagged) == (203, 3, 60)


def test_report_drift_with_a_different_bundle(tmp_path):
    data = build_report(_write_nights(tmp_path, bundle_now="c" * 32))
    assert not data.drift.same_bundle
    assert {r.verdict for r in data.drift.rows} == {"other bundle"}
    page = render_html(data)
    assert "different bundle" in page
    table = _DriftTable()
    table.feed(page)
    assert set(table.rows.values()) == {"rates only (other bundle)"}
