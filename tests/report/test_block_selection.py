"""The report's block-selection section (the bundle's evidence drawn on the page, with every name from the
bundle shown only as text) and the target ID flag rate the thresholds were set at."""
import html
from html.parser import HTMLParser

from ood_audit.bundle.write import write_bundle
from ood_audit.report import ReportOptions, build_report, render_html

from tests.reports import row, write_run

BLOCK = "<script>alert(1)</script>"
PROBE = '<img src=x onerror="alert(2)">'
SELECTOR = "<b onmouseover=alert(3)>robust"
WARNING = "inverted probe </section><script>alert(4)</script>"


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def _selection(level=0.5):
    per_block = {b: {"normratio": r, "auroc": {"jigsaw": a, PROBE: a2}, "auroc_two_sided": {"jigsaw": a, PROBE: a2},
                     "above_id_median": {"jigsaw": above, PROBE: above}, "min_auroc": min(a, a2),
                     "min_auroc_two_sided": min(a, a2), "max_above_id_median": above}
                 for b, r, a, a2, above in (("layer3.1", 1.4, 0.81, 0.74, 0.3), (BLOCK, 1.2, 0.9, 0.86, 0.2),
                                            ("layer4.1", 1.9, 0.62, 0.41, 0.8))}
    return {"selector": SELECTOR, "images": 40, "candidates": list(per_block),
            "ratios": {b: e["normratio"] for b, e in per_block.items()}, "normratio_choice": "layer4.1",
            "choices": {"normratio": "layer4.1", "robust": BLOCK}, "selected": BLOCK, "warnings": [WARNING],
            "evidence": {"probes": ["jigsaw", PROBE], "images": 40, "per_block": per_block,
                         "inversion_level": level}}


def _meta(selection):
    return {"schema_version": 2, "model": {"arch": "resnet18", "num_classes": 2, "small_input": True,
                                           "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
            "preprocess": {"mode": "resize"}, "selection": selection,
            "thresholds": {"target_id_flag_rate": 0.05, "heldout_images": 20, "per_score": {"featurenorm": -1.0},
                           "flag_on": ["featurenorm"], "flag": {"featurenorm": -1.0}},
            "heldout_quantiles": {}}


def _report(tmp_path, selection=None, with_bundle=True):
    out = str(tmp_path / "out")
    uri = write_bundle(str(tmp_path / "b"), _meta(selection or _selection()), files={"notes.json": b"{}"}) \
        if with_bundle else ""
    write_run(out, "n1", [row(f"/in/a/{i}.png", pct=float(10 * i)) for i in range(6)], inputs=["/in"],
              bundle_uri=uri)
    data = build_report(out, options=ReportOptions(top=2))
    return data, render_html(data)


def test_the_section_shows_the_evidence_with_bundle_names_as_text_only(tmp_path):
    data, text = _report(tmp_path)
    page = Page(text)
    assert not [w for w in data.warnings if "block-selection" in w]
    assert len([a for t, a in page.tags if t == "h2" and a.get("id") == "block-selection"]) == 1
    assert len([a for t, a in page.tags if t == "section" and a.get("class") == "block-selection"]) == 1
    assert [a for t, a in page.tags if t == "svg"]  # the chart is drawn
    # no element or attribute came from the bundle's strings
    assert not any(k.startswith("on") for _, a in page.tags for k in a)
    assert [t for t, _ in page.tags if t == "script"] == []
    assert [a for t, a in page.tags if t == "img" and a.get("src") == "x"] == []
    for hostile in (BLOCK, PROBE, SELECTOR, WARNING):
        assert hostile not in text  # never raw in the source
        assert html.escape(hostile) in text
    words = "".join(page.text)
    assert f"Block selection: {SELECTOR} chose {BLOCK}" in words
    assert PROBE in words and WARNING in words
    # the table marks the chosen block and both selectors' choices
    assert "selected, robust choice" in words and "normratio choice" in words


def test_no_bundle_no_section(tmp_path):
    data, text = _report(tmp_path, with_bundle=False)
    assert data.selection_html is None and 'id="block-selection"' not in text


def test_evidence_that_does_not_fit_the_schema_is_a_note_not_a_failure(tmp_path):
    data, text = _report(tmp_path, selection=_selection(level="half"))
    assert data.selection_html is None and 'id="block-selection"' not in text
    assert any("cannot be read" in w and "selection.evidence.inversion_level" in w for w in data.warnings)


def test_the_target_id_flag_rate_is_named_as_such(tmp_path):
    data, text = _report(tmp_path)
    assert data.id_flag_rate == 0.05
    words = " ".join("".join(Page(text).text).split())
    assert "for a target ID flag rate of 5.0%" in words and "FPR" not in words.replace("FPR95", "")
