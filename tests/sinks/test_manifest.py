"""JSONL manifests on S3 (SeaweedFS): reports and manifests in a real bucket, deduplicated across nights."""
import json

from ood_audit.io.fs import read_bytes
from ood_audit.sinks.export import export
from ood_audit.sinks.export_ledger import ExportLedger
from ood_audit.sinks.manifest import ManifestSink
from ood_audit.sinks.select import Selection

from tests.sinks.nights import BUNDLE_1, write_nights


def _lines(uri, s3):
    return [json.loads(line) for line in read_bytes(uri, s3=s3).decode().splitlines()]


def test_manifest_dedupe_across_nights_on_s3(s3_bucket, s3_config, s3_client):
    out, prefix = f"s3://{s3_bucket}/audit", f"s3://{s3_bucket}/manifests"
    want = write_nights(out, s3_config)
    got = {}
    for night in ("night-1", "night-2", "night-3"):
        sink = ManifestSink(prefix, batch_size=5, s3=s3_config)
        summary = export(out, sink, Selection(), run_id=night, s3=s3_config)
        lines = [line for f in sink.files for line in _lines(f, s3_config)]
        got[night] = sorted(line["source-ref"] for line in lines)
        assert summary.sent_now == len(lines) and summary.selected - summary.already_sent == len(lines)
    assert got == {k: sorted(v) for k, v in want.items()}
    line = _lines(sink.files[0], s3_config)[0]  # night 3: the new bundle
    assert line["bundle_id"] != BUNDLE_1 and 0.99 <= line["anomaly"] <= 1.0 and line["label"] == "outlier"
    assert {"featurenorm", "pct_featurenorm", "csd", "pct_csd", "pred_class", "etag"} <= set(line)
    # re-running after success sends nothing and writes no file
    again = ManifestSink(prefix, batch_size=5, s3=s3_config)
    assert export(out, again, Selection(), run_id="night-3", s3=s3_config).sent_now == 0 and again.files == []


def test_manifest_names_are_deterministic_and_ledger_is_per_destination(tmp_path):
    out = str(tmp_path / "audit")
    write_nights(out)
    a = ManifestSink(str(tmp_path / "m1"), batch_size=4)
    export(out, a, Selection(), run_id="night-1")
    assert len(a.files) == 3 and all(f.endswith(".jsonl") and "/night-1/outliers-" in f for f in a.files)
    # a retry of a batch that was written but never recorded lands on the same name (overwrite, no duplicate)
    ledger = ExportLedger(out, "jsonl", a.destination, "outliers")
    assert len(ledger.load()) == 12 and len(ledger.files()) == 3
    for f in ledger.files():
        (tmp_path / "audit" / "exports" / ledger.scope.rsplit("/", 1)[1] / "outliers" / f).unlink()
    b = ManifestSink(str(tmp_path / "m1"), batch_size=4)
    export(out, b, Selection(), run_id="night-1")
    assert b.files == a.files and len(list((tmp_path / "m1" / "night-1").iterdir())) == 3
    # a new destination gets everything; the disagreement queue has its own ledger
    c = ManifestSink(str(tmp_path / "m2"), batch_size=100)
    assert export(out, c, Selection(), run_id="night-1").sent_now == 12
    d = export(out, ManifestSink(str(tmp_path / "m2")), Selection(policy="top-k", budget=20), run_id="night-1")
    assert (d.selected, d.already_sent, d.sent_now) == (20, 12, 8)
    e = export(out, ManifestSink(str(tmp_path / "m2")), Selection(policy="disagreement"), run_id="night-1")
    assert e.queue == "disagreement" and e.ledger.endswith("/disagreement") and e.sent_now == 12
    line = json.loads(open(next(iter(sorted((tmp_path / "m2" / "night-1").glob("disagreement-*"))))).readline())
    assert line["policy"] == "disagreement" and line["flagged_by"] == "featurenorm"
