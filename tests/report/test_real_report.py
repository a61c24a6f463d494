"""The report of a real two-night scan in SeaweedFS: read end to end, then opened in a real browser."""
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ood_audit.cli import main
from ood_audit.report import ReportOptions, build_report, render_html


class _Tags(HTMLParser):
    def __init__(self, html):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def real_report(real_scan, tmp_path_factory):
    """The latest night's report, built once (top 60: every flagged object of the fixture and more)."""
    data = build_report(real_scan.output, s3=real_scan.s3, options=ReportOptions(top=60))
    path = tmp_path_factory.mktemp("real-report") / "report.html"
    path.write_text(render_html(data), encoding="utf-8")
    return data, path


@pytest.mark.slow
@pytest.mark.timeout(1800)  # includes building the two-night scan on first use
def test_real_scan_report(real_scan, real_report):
    data, path = real_report
    scan = real_scan
    assert data.run.run_id == "night-2" and data.objects == len(scan.objects["night-2"])
    assert data.drift.previous.run_id == "night-1" and data.drift.same_bundle
    # tests.realscan gives no slice_rows: the summary records the size the scan chose for 32 px input
    assert data.run.summary.config["slice_rows"] == 256
    assert {data.display_prefix(r.prefix) for r in data.drift.rows} >= {"digits/", "letters/", "noise/"}
    assert {h.score for h in data.histograms} >= {"featurenorm", "csd"}
    items = {it.uri: it for it in data.grid}
    assert items[scan.deleted_uri].thumb.note == "deleted since the scan"  # the most anomalous, deleted after
    assert data.grid[0].uri == scan.deleted_uri
    real = [it for it in data.grid if it.thumb.note is None]
    assert real and all(it.thumb.src.startswith("data:image/jpeg;base64,") for it in real)
    for it in data.grid:  # three nearest calibration images from the ID bucket, closest first, with thumbnails
        assert len(it.neighbours) == 3
        assert all(n.uri.startswith(f"s3://{scan.bucket}/id/") and n.thumb for n in it.neighbours)
        assert [n.distance for n in it.neighbours] == sorted(n.distance for n in it.neighbours)
        assert it.box is not None
    broken = {f["uri"]: f for f in data.failures}
    assert f"{scan.inputs}/broken/notes.txt" in broken and data.failures_total == len(broken)
    # every scored object in the grid, so the key with markup is certainly on the page: as text only
    everything = build_report(scan.output, s3=scan.s3, options=ReportOptions(top=len(scan.objects["night-2"])))
    assert scan.script_uri in {it.uri for it in everything.grid}
    page = _Tags(render_html(everything))
    assert not [t for t, _ in page.tags if t == "script"]
    assert scan.script_uri in "".join(page.text)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # includes building the two-night scan on first use
def test_cli_report_from_s3(real_scan, s3_env, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "--report", real_scan.output, "--run-id", "night-1", "--out", str(out), "--top", "4"]) == 0
    assert "run night-1" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert "first run on this output root" in text and text.count('<figure class="card') == 4


@pytest.mark.slow
@pytest.mark.timeout(1800)  # includes building the two-night scan on first use
def test_report_in_a_browser(real_report, chromium, artifacts_dir, record_property):
    from playwright.sync_api import sync_playwright

    data, path = real_report
    problems: list[str] = []
    shot = Path(artifacts_dir) / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"request: {r.url}")
                    if not r.url.startswith(("file:", "data:")) else None)
            page.goto(path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
            flagged = page.eval_on_selector_all(
                ".card.flagged", "els => els.map(e => e.querySelectorAll('.thumb .csd-view').length)")
            scripts = page.eval_on_selector_all("script", "els => els.length")
            boxes = page.eval_on_selector_all(  # each box lies within its thumbnail, on screen
                ".thumb", "els => els.map(t => { const b = t.querySelector('.csd-view'); if (!b) return null;"
                          " const r = t.getBoundingClientRect(), q = b.getBoundingClientRect();"
                          " return q.left >= r.left - 1 && q.right <= r.right + 1 && q.top >= r.top - 1"
                          " && q.bottom <= r.bottom + 1 && q.width > 0; })")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"report screenshot: {shot}")  # shown with -s or -rP; also in junit XML as a property
    record_property("screenshot", str(shot))
    assert problems == []
    assert len(images) >= len(data.grid) + len(data.histograms)
    assert [alt for alt, complete, width in images if not (complete and width > 0)] == []
    assert flagged and all(n == 1 for n in flagged), "every flagged thumbnail carries its CSD-view box"
    assert scripts == 0
    assert all(boxes)
