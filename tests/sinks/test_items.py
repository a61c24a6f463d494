"""Payload shapes (SPEC §12), dedupe keys, token detection, and the CLI's one-line errors and summary."""
import json

import pyarrow as pa
import pytest

from ood_audit.cli import main
from ood_audit.sinks.items import (ExportItem, item_key, items_from_table, label_config, label_studio_task,
                                   manifest_line, sqs_body)
from ood_audit.sinks.labelstudio import is_personal_access_token

from tests.reports import row, write_run


def _item(**kw):
    base = dict(key=item_key("s3://b/k.png", "e1", "bund"), uri="s3://b/k.png", etag="e1", run_id="r1",
                bundle_id="bund", policy="disagreement", anomaly=0.97, flagged=False, flag_reasons=("csd",),
                flagged_by="csd", pred_class=4, csd_view=2, scores={"csd": -1.2, "featurenorm": float("nan")},
                percentiles={"csd": 3.0, "featurenorm": None})
    return ExportItem(**{**base, **kw})


def test_keys_change_with_etag_and_bundle_only():
    k = item_key("s3://b/k.png", "e1", "b1")
    assert k == item_key("s3://b/k.png", "e1", "b1") and len(k) == 32
    assert len({k, item_key("s3://b/k.png", "e2", "b1"), item_key("s3://b/k.png", "e1", "b2"),
                item_key("s3://b/j.png", "e1", "b1"), item_key("s3://b/k.png", None, "b1")}) == 5


def test_label_studio_task_shape():
    t = label_studio_task(_item())
    assert t["data"]["image"] == "s3://b/k.png" and t["data"]["policy"] == "disagreement"
    assert t["data"]["flagged_by"] == "csd" and t["data"]["featurenorm"] is None  # NaN never reaches JSON
    (p,) = t["predictions"]
    assert p == {"model_version": "bund", "score": 0.97, "result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["in-distribution"]}}]}
    assert label_studio_task(_item(flagged=True))["predictions"][0]["result"][0]["value"]["choices"] == ["outlier"]
    json.dumps(t, allow_nan=False)
    cfg = label_config()
    assert '<Image name="image" value="$image"/>' in cfg and '<Choices name="label" toName="image"' in cfg


def test_sqs_and_manifest_shapes():
    b, m = sqs_body(_item()), manifest_line(_item())
    assert b["key"] == m["key"] == _item().key and b["queue"] == "disagreement"
    assert m["source-ref"] == "s3://b/k.png" and m["pct_csd"] == 3.0 and m["csd"] == -1.2


def test_items_from_a_selection_table():
    t = pa.table({"uri": ["s3://b/a.png"], "etag": ["e"], "run_id": ["r"], "bundle_id": ["bb"], "pred_class": [1],
                  "csd_view": pa.array([4], pa.int8()), "flagged": [True], "flag_reasons": [["featurenorm", "knn"]],
                  "featurenorm": [-3.0], "pct_featurenorm": pa.array([0.5], pa.float32()), "anomaly": [0.995]})
    (it,) = items_from_table(t, "threshold")
    assert it.key == item_key("s3://b/a.png", "e", "bb") and it.flagged_by == "featurenorm"
    assert it.scores == {"featurenorm": -3.0} and it.percentiles == {"featurenorm": 0.5}
    assert it.fields()["quality_issues"] is None and it.fields()["duplicate_of"] is None  # older formats


def test_payloads_carry_findings_and_duplicate_links(tmp_path):
    """Read through the export's own selection: a row's quality issues and duplicate links reach every shape."""
    from ood_audit.store.runs import find_run, run_dataset
    from ood_audit.sinks.select import Selection, select_rows

    rows = [row("s3://b/a.png", pct=1.0, quality_issues=["dark", "low_information"], duplicate_of="s3://b/first.png",
                near_duplicate_of_id="s3://id/train/7.png", content_sha256="0" * 64),
            row("s3://b/b.png", pct=2.0, quality_issues=[])]
    write_run(str(tmp_path), "r1", rows)
    run = find_run(str(tmp_path), "r1")
    table = select_rows(run_dataset(run), ["featurenorm", "csd"], Selection(policy="threshold"))
    items = {it.uri: it for it in items_from_table(table, "threshold")}
    for shape in (label_studio_task, sqs_body, manifest_line):
        a = shape(items["s3://b/a.png"])
        a = a.get("data", a)
        assert a["quality_issues"] == ["dark", "low_information"] and a["duplicate_of"] == "s3://b/first.png"
        assert a["near_duplicate_of_id"] == "s3://id/train/7.png"
        b = shape(items["s3://b/b.png"])
        b = b.get("data", b)
        assert b["quality_issues"] == [] and b["duplicate_of"] is None and b["near_duplicate_of_id"] is None


def test_token_forms():
    assert not is_personal_access_token("3f1c0a9be7d24e5c8b6a1f0e9d8c7b6a5f4e3d2c")
    assert not is_personal_access_token("a.b.c")
    pat = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.sig"  # {"token_type":"refresh"}
    assert is_personal_access_token(pat)
    access = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoiYWNjZXNzIn0.sig"  # an access token is not a PAT
    assert not is_personal_access_token(access)


@pytest.mark.parametrize("args,needle", [
    (["--to", "jsonl", "--manifest-prefix", "M", "--policy", "top-k"], "--policy top-k needs --budget"),
    (["--to", "jsonl", "--manifest-prefix", "M", "--budget", "-3"], "--budget must be > 0"),
    (["--to", "jsonl", "--manifest-prefix", "M", "--per-class"], "--per-class needs --budget"),
    (["--to", "jsonl", "--manifest-prefix", "M", "--batch-size", "0"], "--batch-size must be > 0"),
    (["--to", "jsonl"], "--manifest-prefix"),
    (["--to", "sqs"], "--queue"),
    (["--to", "jsonl", "--manifest-prefix", "M", "--queue", "q"], "--queue does not apply to --to jsonl"),
    (["--to", "label-studio"], "--tasks-file"),
    (["--to", "label-studio", "--project-id", "3"], "--label-studio-url"),
    (["--to", "jsonl", "--manifest-prefix", "M", "--run-id", "nope"], "unknown --run-id 'nope'"),
    (["--to", "nowhere"], "--to"),
    (["--to", "jsonl", "--manifest-prefix", "M", "--policy", "random"], "--policy"),
])
def test_cli_errors_are_one_line_naming_the_flag(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    write_run(str(tmp_path / "audit"), "n1", [row("s3://d/a.png", pct=1.0)])
    args = [a.replace("M", str(tmp_path / "m")) if a == "M" else a for a in args]
    try:
        rc = main(["export", "--report", str(tmp_path / "audit"), *args])
    except SystemExit as e:  # argparse's own errors (choices)
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and needle in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "audit" / "exports").exists()


def test_cli_summary_and_json(tmp_path, capsys):
    out = str(tmp_path / "audit")
    write_run(out, "n1", [row(f"s3://d/{i}.png", pct=float(i)) for i in range(10)])  # 0..4 flagged
    args = ["export", "--report", out, "--to", "jsonl", "--manifest-prefix", str(tmp_path / "m")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "selected 5, already sent 0, sent now 5" in text and "policy threshold -> queue outliers" in text
    assert main([*args, "--json", "--policy", "top-k", "--budget", "7"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["selected"], doc["already_sent"], doc["sent_now"]) == (7, 5, 2) and len(doc["files"]) == 1
