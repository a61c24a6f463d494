"""The report's data-quality findings (SPEC §14): the per-issue counts table, each issue's threshold in words,
the grid's filter by issue (CSS only: the page stays script-free), escaping, and reports written before the
``quality_issues`` column."""
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ood_audit.io.quality import ISSUES
from ood_audit.report import ReportOptions, build_report, render_html

from tests.reports import row, write_run

HOSTILE = '<img src=x onerror="alert(1)">'
THRESHOLDS = {"working_size": 256, "dark": 25.0, "light": 235.0, "blurry": 12.5, "low_information": 2.0,
              "grayscale_tolerance": 2, "grayscale_fraction": 0.999, "odd_aspect_ratio": 4.0, "tiny": 32}
# 30 ok rows cycling through these findings (None: an ok row of unknown findings), 4 rows that failed
CYCLE = [["dark"], [], ["blurry", "tiny"], ["dark", "grayscale"], [], ["odd_aspect_ratio"], None, [HOSTILE]]


class Page(HTMLParser):
    """Start tags with attributes; the text of each ``tr`` of the quality table, by its ``data-issue``."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "tr" and "data-issue" in a:
            self._row = a["data-issue"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self.rows[self._row].append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and self.rows[self._row]:
            self.rows[self._row][-1] += data

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _rows():
    rows = [row(f"/in/a/{i:02d}.png", pct=float(i), quality_issues=CYCLE[i % len(CYCLE)]) for i in range(30)]
    rows += [row(f"/in/b/bad{i}.png", status="decode_error") for i in range(4)]
    return rows


def _expected():
    ok = [CYCLE[i % len(CYCLE)] for i in range(30)]
    decoded = [q for q in ok if q is not None]
    counts = {n: sum(n in q for q in decoded) for n in [*ISSUES, HOSTILE]}
    return counts, len(decoded), sum(bool(q) for q in decoded)


@pytest.fixture
def report(tmp_path):
    out = str(tmp_path / "out")
    write_run(out, "n1", _rows(), inputs=["/in"], summary={"quality_thresholds": THRESHOLDS})
    data = build_report(out, options=ReportOptions(top=16))
    return data, render_html(data)


def test_counts_table_counts_every_issue_over_decoded_rows(report):
    data, html = report
    counts, decoded, with_issue = _expected()
    assert (decoded, with_issue, counts["dark"], counts["tiny"]) == (27, 19, 8, 4)  # the cycle, worked out by hand
    page = Page(html)
    assert list(page.rows) == [*ISSUES, HOSTILE]  # SPEC order, zeros included, then unknown names
    for issue, cells in page.rows.items():
        name, n, share, words = (c.strip() for c in cells)
        assert name == issue and n == str(counts[issue]), issue
        assert share == f"{100 * counts[issue] / decoded:.1f}%", issue
        assert words
    text = " ".join("".join(page.text).split())
    assert f"{with_issue} of {decoded} decoded objects ({100 * with_issue / decoded:.1f}%) have at least one" in text
    assert data.quality.decoded == decoded and data.quality.with_issue == with_issue


def test_explanations_quote_the_run_thresholds(report, tmp_path):
    _, html = report
    rows = Page(html).rows
    assert "below 25 on the 0–255 grey scale" in rows["dark"][3]  # the run's 25, not the default 20
    assert "below 12.5," in rows["blurry"][3] and "under 32 px" in rows["tiny"][3]
    assert "more than 4 times" in rows["odd_aspect_ratio"][3]
    # a run that records no thresholds: SPEC defaults, said so, and blurry was not checked
    out = str(tmp_path / "bare")
    write_run(out, "n1", _rows(), inputs=["/in"])
    page = Page(render_html(build_report(out, options=ReportOptions(top=4))))
    assert "below 20 on the 0–255 grey scale" in page.rows["dark"][3]
    assert page.rows["blurry"][3].startswith("not checked in this run")
    assert "does not record its quality thresholds" in "".join(page.text)


def test_grid_cards_carry_their_issues_and_the_filter_counts_them(report):
    data, html = report
    page = Page(html)
    radios = page.find("input", type="radio", name="quality-filter")
    assert [r["id"] for r in radios] == ["qf-all", *(f"qf-{i}" for i in ISSUES), "qf-any", "qf-none"]
    assert [r for r in radios if "checked" in r] == [radios[0]]  # everything shown until a filter is chosen
    labels = {a["for"]: None for a in page.find("label") if a.get("for", "").startswith("qf-")}
    assert list(labels) == [r["id"] for r in radios]  # every radio has its label
    cards = {a["data-uri"]: a for a in page.find("figure") if "data-uri" in a}
    assert len(cards) == 16
    for uri, a in cards.items():
        q = CYCLE[int(uri.rsplit("/", 1)[1][:2]) % len(CYCLE)]
        classes = set(a["class"].split())
        want = {f"q-{n}" for n in q or () if n in ISSUES} | ({"q-any"} if q else {"q-none"} if q == [] else set())
        assert classes - {"card", "flagged"} == want, uri
        assert ("data-quality" in a) == (q is not None) and a.get("data-quality", "") == " ".join(q or ())
    # the bar's counts are the grid's cards per class
    text = " ".join("".join(page.text).split())
    for f, n in data.grid_quality_counts.items():
        assert n == sum(f"q-{f}" in a["class"].split() for a in cards.values())
    assert f"dark ({data.grid_quality_counts['dark']})" in text and "all (16)" in text
    assert "data quality: not checked" in text and "data quality: no finding" in text
    # each filter's CSS rule hides the cards lacking its class; "all" hides nothing
    assert '#qf-blurry:checked ~ .grid .card:not(.q-blurry) { display: none; }' in html
    assert "#qf-all:checked ~ .grid" not in html


def test_hostile_issue_names_are_text_only(report):
    _, html = report
    page = Page(html)
    assert page.find("img", src="x") == [] and "<script" not in html
    assert not any(k.startswith("on") for _, a in page.tags for k in a)
    assert HOSTILE in "".join(page.text)  # in the table and on the cards, as text
    allowed = {"card", "flagged", "q-any", "q-none", *(f"q-{i}" for i in ISSUES)}
    cards = [a for a in page.find("figure") if "data-uri" in a]
    for a in cards:  # never a class token: the page's CSS only ever sees SPEC names
        assert set(a["class"].split()) <= allowed
    assert not any("img" in a.get("class", "") or "alert" in a.get("class", "") for _, a in page.tags)
    assert sum(a.get("data-quality") == HOSTILE for _, a in page.tags) == 2  # cards 07 and 15, escaped round trip


def test_a_report_without_the_column_still_renders(tmp_path):
    out = str(tmp_path / "out")
    write_run(out, "n1", _rows(), inputs=["/in"])
    for f in (tmp_path / "out" / "reports").rglob("*.parquet"):
        t = pq.read_table(f).drop_columns(["content_sha256", "duplicate_of", "quality_issues", "near_duplicate_of_id"])
        pq.write_table(t.replace_schema_metadata({"ood_audit.report_format": "2"}), f)
    data = build_report(out, options=ReportOptions(top=8))
    assert not data.quality.present and len(data.grid) == 8
    assert all(it.quality is None and it.quality_classes == "" for it in data.grid)
    html = render_html(data)
    page = Page(html)
    assert "written before data-quality findings existed" in "".join(page.text)
    assert page.rows == {} and page.find("input") == [] and "data quality:" not in html


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_clicking_a_filter_hides_the_cards_without_the_issue(report, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    data, html = report
    path = Path(tmp_path) / "report.html"
    path.write_text(html, encoding="utf-8")
    problems: list[str] = []
    by_filter = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"request: {r.url}")
                    if not r.url.startswith(("file:", "data:")) else None)
            page.goto(path.as_uri(), wait_until="load")
            visible = "els => els.filter(e => e.offsetParent !== null).map(e => e.dataset.uri)"
            by_filter["all"] = page.eval_on_selector_all(".grid .card", visible)
            for f in ("blurry", "dark", "none", "any", "all"):
                page.click(f"label[for='qf-{f}']")
                by_filter[f] = page.eval_on_selector_all(".grid .card", visible)
            scripts = page.eval_on_selector_all("script", "els => els.length")
        finally:
            browser.close()
    assert problems == [] and scripts == 0
    every = [it.uri for it in data.grid]
    quality = {it.uri: it.quality for it in data.grid}
    assert by_filter["all"] == every
    assert by_filter["blurry"] == [u for u in every if "blurry" in (quality[u] or ())] != []
    assert by_filter["dark"] == [u for u in every if "dark" in (quality[u] or ())] != []
    assert by_filter["none"] == [u for u in every if quality[u] == []] != []
    assert by_filter["any"] == [u for u in every if quality[u]]  # the hostile name counts as a finding


def test_cli_says_how_many_have_a_finding(tmp_path, capsys):
    from ood_audit.cli import main

    out = str(tmp_path / "out")
    write_run(out, "n1", _rows(), inputs=["/in"], summary={"quality_thresholds": THRESHOLDS})
    assert main(["report", "--report", out, "--out", str(tmp_path / "r.html"), "--top", "4"]) == 0
    _, _, with_issue = _expected()
    assert f"flagged (16.7%), {with_issue} with a data-quality finding, 4 thumbnails" in capsys.readouterr().out
    assert 'id="quality-table"' in (tmp_path / "r.html").read_text(encoding="utf-8")
