"""The report's cards name an exact copy's first URI and a near-duplicate's calibration image, as text."""
from ood_audit.report import ReportOptions, build_report, render_html

from tests.reports import row, write_run

HOSTILE = 's3://b/<img src=x onerror="alert(1)">.png'


def test_cards_name_the_first_copy_and_the_calibration_image(tmp_path):
    out = str(tmp_path / "out")
    rows = [row("/in/a/copy.png", pct=0.5, duplicate_of="/in/a/first.png"),
            row("/in/a/leak.png", pct=0.7, near_duplicate_of_id="s3://id/train/7.png"),
            row("/in/a/evil.png", pct=0.9, duplicate_of=HOSTILE),
            row("/in/a/plain.png", pct=1.1)]
    write_run(out, "n1", rows, inputs=["/in"])
    data = build_report(out, options=ReportOptions(top=4))
    by_uri = {it.uri: it for it in data.grid}
    assert by_uri["/in/a/copy.png"].duplicate_of == "/in/a/first.png"
    assert by_uri["/in/a/leak.png"].near_duplicate_of_id == "s3://id/train/7.png"
    assert by_uri["/in/a/plain.png"].duplicate_of is None and by_uri["/in/a/plain.png"].near_duplicate_of_id is None
    html = render_html(data)
    assert 'exact copy (same bytes) of <span class="mono">/in/a/first.png</span>' in html
    assert 'near-duplicate of calibration image <span class="mono">s3://id/train/7.png</span>' in html
    assert html.count("exact copy (same bytes)") == 2 and html.count("near-duplicate of calibration image") == 1
    assert "<img src=x" not in html and "s3://b/&lt;img src=x onerror=&#34;alert(1)&#34;&gt;.png" in html
