"""The page itself: escaping of everything from data, placeholders for objects gone since the scan, the CSD
view box, the streaming aggregation, and one-line errors from the CLI."""
import base64
import io
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ood_audit.cli import main
from ood_audit.report import ReportOptions, build_report, render_html
from ood_audit.report.collect import collect, prefix_keys, score_edges
from ood_audit.bundle.write import write_bundle
from ood_audit.preprocess import Preprocess
from ood_audit.report.explain import CsdGeometry, csd_box
from ood_audit.store.runs import find_run, run_dataset

from tests.reports import row, write_run

SCRIPT = "<script>alert('x')</script>"
ERROR = 'cannot identify image <img src=x onerror="alert(1)"> & more'


class Page(HTMLParser):
    """Every start tag with its attributes, and all text, of a page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _png(w, h, colour=(200, 30, 30)):
    out = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(out, format="PNG")
    return out.getvalue()


def test_keys_and_errors_from_data_render_as_text(tmp_path):
    out, inp = str(tmp_path / "out"), str(tmp_path / "in")
    folder = "<b onmouseover=alert(2)>x"  # a prefix with markup (a local folder name cannot hold a "/")
    bad = f"{inp}/{folder}/{SCRIPT}.png"  # the most anomalous: in the grid (a placeholder: no such file)
    rows = [row(bad, pct=0.5, flagged=True, width=40, height=20),
            row(f"{inp}/{folder}/broken.png", status="decode_error", error=ERROR)]
    rows += [row(f"{inp}/plain/{i}.png", pct=60.0) for i in range(5)]
    write_run(out, "n1", rows, inputs=[inp])
    page = Page(render_html(build_report(out, options=ReportOptions(top=3))))
    assert [t for t, _ in page.tags if t == "script"] == []  # no injected element
    assert not any(k.startswith("on") for _, a in page.tags for k in a)
    assert page.find("img", src="x") == []
    text = "".join(page.text)
    assert bad in text and ERROR in text and f"{folder}/" in text  # grid and failure list, error, prefix table
    assert len(page.find("figure", **{"data-uri": bad})) == 1  # the attribute round-trips exactly: escaped


def test_deleted_and_undecodable_objects_get_placeholders(tmp_path):
    out, inp = str(tmp_path / "out"), tmp_path / "in" / "x"
    inp.mkdir(parents=True)
    names = {"kept.png": _png(60, 30), "gone.png": _png(30, 60), "garbled.png": b"\x89PNG not really"}
    for name, data in names.items():
        (inp / name).write_bytes(data)
    sizes = {"kept.png": (60, 30), "gone.png": (30, 60), "garbled.png": (30, 60)}
    rows = [row(str(inp / n), pct=1.0 + i, flagged=True, width=sizes[n][0], height=sizes[n][1], csd_view=i)
            for i, n in enumerate(names)]
    write_run(out, "n1", rows, inputs=[str(tmp_path / "in")], bundle_uri=_bundle_uri(tmp_path))
    (inp / "gone.png").unlink()
    data = build_report(out, options=ReportOptions(top=10, thumb_side=120))
    by_name = {it.uri.rsplit("/", 1)[1]: it for it in data.grid}
    assert by_name["kept.png"].thumb.note is None
    assert by_name["gone.png"].thumb.note == "deleted since the scan"
    assert by_name["garbled.png"].thumb.note.startswith("does not decode now")
    for name, it in by_name.items():
        img = Image.open(io.BytesIO(base64.b64decode(it.thumb.src.split(",", 1)[1])))
        w, h = sizes[name]
        assert img.size == (it.thumb.width, it.thumb.height)
        assert img.size == ((120, 60) if w > h else (60, 120))  # the image's own aspect ratio, placeholder or not
    page = Page(render_html(data))
    assert "deleted since the scan" in "".join(page.text)
    assert len(page.find("div", **{"data-view": "q01"})) == 1  # gone.png had csd_view 1: still drawn
    # kept.png (60×30, q00): the top-left quarter of the central square the model saw, not of the whole image
    box = by_name["kept.png"].box
    assert (box.view, box.left, box.top, box.width, box.height) == ("q00", 25.0, 0.0, 25.0, 50.0)
    # gone.png, a placeholder at its recorded 30×60 (q01): rows 15..45 of 60 are the model's square
    box = by_name["gone.png"].box
    assert (box.view, box.left, box.top, box.width, box.height) == ("q01", 50.0, 25.0, 50.0, 25.0)


# A 32 px centre-cropping bundle with a 4×4 last map. On a 60×30 landscape image the model sees the central
# 30×30 square (columns 15..45: 25 % to 75 %), each map cell 7.5 px of it; on 30×60, rows 15..45.
GEOMETRY = CsdGeometry(Preprocess(32), (4, 4))


@pytest.mark.parametrize("view,name,size,box", [
    (0, "q00", (60, 30), (25, 0, 25, 50)), (1, "q01", (60, 30), (50, 0, 25, 50)),
    (2, "q10", (60, 30), (25, 50, 25, 50)), (3, "q11", (60, 30), (50, 50, 25, 50)),
    (4, "global", (60, 30), (25, 0, 50, 100)), (5, "centre", (60, 30), (37.5, 25, 25, 50)),
    (4, "global", (30, 60), (0, 25, 100, 50)), (1, "q01", (30, 60), (50, 25, 50, 25)),
    (4, "global", (40, 40), (0, 0, 100, 100))])
def test_csd_view_boxes_are_the_views_region_of_the_model_input(view, name, size, box):
    b = csd_box(view, GEOMETRY, size)
    assert b.view == name and (b.left, b.top, b.width, b.height) == pytest.approx(box, abs=1e-9)


def test_csd_view_unknown():
    assert csd_box(None, GEOMETRY, (60, 30)) is None and csd_box(6, GEOMETRY, (60, 30)) is None
    assert csd_box(0, None, (60, 30)) is None  # no bundle: the geometry is unknown, so no box
    assert csd_box(0, GEOMETRY, (None, None)) is None


def _bundle_uri(tmp_path) -> str:
    """A bundle with what the report's boxes need: a resnet18 at 32 px (4×4 last map), centre crop."""
    meta = {"schema_version": 2, "model": {"arch": "resnet18", "num_classes": 2, "small_input": True,
                                           "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
            "preprocess": {"size": [32, 32], "mode": "crop"},
            "selection": {"ratios": {"layer4.1": 1.0}, "selected": "layer4.1"},
            "thresholds": {"target_id_flag_rate": 0.05, "heldout_images": 20, "per_score": {"featurenorm": -1.0},
                           "flag_on": ["featurenorm"], "flag": {"featurenorm": -1.0}},
            "heldout_quantiles": {}}
    return write_bundle(str(tmp_path / "bundle"), meta, files={"notes.json": b"{}"})


def test_report_reads_without_torch():
    import subprocess
    import sys

    code = "import sys, ood_audit.report.build, ood_audit.report.explain; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_prefix_keys_by_depth_and_input():
    import pyarrow as pa

    uris = pa.array(["s3://b/in/x/y/f.png", "s3://b/in/f.png", "s3://b/in.x/z/a.png", "s3://c/m/n.png",
                     "s3://b/in/x\ny/f.png"])
    assert prefix_keys(uris, ["s3://b/in/"], 1).to_pylist() == [
        "s3://b/in/x/", "s3://b/in/", "s3://b/in.x/", "s3://c/m/", "s3://b/in/x\ny/"]
    assert prefix_keys(uris, ["s3://b/in"], 2).to_pylist()[0] == "s3://b/in/x/y/"


def test_streaming_collection_equals_a_full_computation(tmp_path):
    out = str(tmp_path)
    rng = np.random.default_rng(1)
    pcts = rng.uniform(0, 100, 2500)
    rows = [row(f"/in/{'abc'[i % 3]}/{i}.png", pct=float(p)) for i, p in enumerate(pcts)]
    rows += [row(f"/in/a/bad{i}.png", status="missing") for i in range(7)]
    write_run(out, "n1", rows, inputs=["/in"], rows_per_file=300)
    ds = run_dataset(find_run(out))
    edges = {"csd": score_edges(ds, "csd", None)}
    got = collect(ds, inputs=["/in"], edges=edges, max_failures=5, batch_size=128)
    full = ds.to_table(columns=["uri", "status", "flagged", "csd"]).to_pandas()
    assert got.rows == len(full) == 2507
    assert got.failures_total == 7 and len(got.failures) == 5
    want_counts, _ = np.histogram(full.csd.dropna(), bins=edges["csd"])
    np.testing.assert_array_equal(got.histograms["csd"].counts, want_counts)
    assert got.histograms["csd"].below == got.histograms["csd"].above == 0  # bins cover the footers' range
    full["prefix"] = full.uri.str.split("/").str[2]
    for p, g in full.groupby("prefix"):
        st = got.prefixes[f"/in/{p}/"]
        assert (st.objects, st.scored, st.flagged) == (len(g), int((g.status == "ok").sum()), int(g.flagged.fillna(False).sum()))


@pytest.mark.parametrize("case", ["no-runs", "unknown-run", "bad-format"])
def test_cli_one_line_errors(tmp_path, capsys, case):
    out = str(tmp_path / "out")
    if case != "no-runs":
        write_run(out, "n1", [row("/in/a.png")], inputs=["/in"])
    if case == "bad-format":
        f = next((tmp_path / "out" / "reports").rglob("*.parquet"))
        pq.write_table(pq.read_table(f).replace_schema_metadata({"ood_audit.report_format": "99"}), f)
    args = ["report", "--report", out, "--out", str(tmp_path / "r.html")]
    assert main(args + (["--run-id", "nope"] if case == "unknown-run" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ood-audit: error: ")
    assert {"no-runs": "no scan runs", "unknown-run": "unknown --run-id 'nope'", "bad-format": "'99'"}[case] in err
    assert not (tmp_path / "r.html").exists()


def test_cli_writes_the_page(tmp_path, capsys):
    out = str(tmp_path / "out")
    write_run(out, "n1", [row(f"/in/a/{i}.png", pct=float(i)) for i in range(40)], inputs=["/in"])
    assert main(["report", "--report", out, "--out", str(tmp_path / "r.html"), "--top", "5"]) == 0
    assert "run n1, 40 objects" in capsys.readouterr().out
    page = Page((tmp_path / "r.html").read_text())
    assert len(page.find("figure", **{"class": "card flagged"})) == 5  # pct 0..4 are below 5: flagged
    # self-contained: every image inline, no external reference
    assert all(a["src"].startswith("data:image/") for _, a in page.tags if "src" in a)
    assert not [a for t, a in page.tags if t == "link" or "href" in a]
    assert main(["report", "--report", out, "--out", str(tmp_path / "r.html"), "--top", "0"]) == 2


def test_thumbnails_are_upright_like_the_scan(tmp_path):
    from ood_audit.report.previews import object_thumb

    im = Image.new("RGB", (80, 40), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: the scan decodes it as 40 x 80
    path = tmp_path / "rotated.jpg"
    im.save(path, format="JPEG", exif=exif.tobytes())
    t = object_thumb(str(path), max_side=64)
    assert t.note is None and (t.width, t.height) == (32, 64)


def test_a_run_that_listed_nothing_new_still_reports(tmp_path):
    out = str(tmp_path / "out")
    write_run(out, "n1", [row(f"/in/a/{i}.png", flagged=i < 3) for i in range(40)], inputs=["/in"], day=0)
    write_run(out, "n2", [], inputs=["/in"], day=1)  # an incremental night: nothing changed
    for f in (tmp_path / "out" / "reports").rglob("n2.*.parquet"):
        f.unlink()  # the scan writes no part file for an empty run
    data = build_report(out)
    assert data.objects == 0 and data.grid == [] and data.drift.previous.run_id == "n1"
    assert [(r.verdict, r.before.flagged) for r in data.drift.rows] == [("gone", 3)]
    assert "it listed nothing new to scan" in render_html(data)
