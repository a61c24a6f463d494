"""End to end, one per sink: `ood-audit export` of two real nightly Ray scans (real digits and outliers in
SeaweedFS), night 1 then night 2, expecting exactly the samples night 2 adds or changes.

The budget exceeds the run, so top-k takes every scored row and night 2 must send just the object it changed
(new etag) and the one it added; both are checked against the report's own rows, computed here."""
import json
import uuid

import boto3
import numpy as np
import pyarrow.compute as pc
import pytest

from ood_audit import load_report
from ood_audit.cli import main
from ood_audit.io.fs import read_bytes
from ood_audit.sinks.labelstudio import LabelStudioClient

from tests.sinks.conftest import new_queue_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
BUDGET = 1000


def _top(scan, run_id):
    """(uri, etag) of the BUDGET most anomalous ok rows, computed here from the report itself."""
    t = load_report(scan.output, run_id, s3=scan.s3, columns=["uri", "etag", "pct_featurenorm", "pct_csd"],
                    filter=pc.field("status") == "ok").to_pandas()
    t["a"] = 1 - np.fmin(t.pct_featurenorm, t.pct_csd) / 100
    t = t[np.isfinite(t.a)].sort_values(["a", "uri"], ascending=[False, True]).head(BUDGET)
    return {(u, e) for u, e in zip(t.uri, t.etag)}


def _expected(scan):
    n1, n2 = _top(scan, "night-1"), _top(scan, "night-2")
    want = {"night-1": sorted(u for u, _ in n1), "night-2": sorted(u for u, _ in n2 - n1)}
    assert want["night-2"] == sorted([scan.changed_uri, scan.script_uri])
    return want


def _export(scan, *args):
    argv = ["export", "--report", scan.output, "--s3-endpoint", scan.s3.endpoint_url, "--policy", "top-k",
            "--budget", str(BUDGET), "--json", *args]
    return main(argv)


@pytest.fixture
def scan_env(real_scan, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": real_scan.s3.access_key, "AWS_SECRET_ACCESS_KEY": real_scan.s3.secret_key,
                 "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    return real_scan


def test_jsonl_end_to_end(scan_env, capsys):
    scan, want = scan_env, _expected(scan_env)
    prefix = f"s3://{scan.bucket}/exports-test-{uuid.uuid4().hex[:8]}"
    for night in ("night-1", "night-2"):
        assert _export(scan, "--run-id", night, "--to", "jsonl", "--manifest-prefix", prefix) == 0
        summary = json.loads(capsys.readouterr().out)
        lines = [json.loads(x) for f in summary["files"] for x in read_bytes(f, s3=scan.s3).decode().splitlines()]
        assert sorted(x["source-ref"] for x in lines) == want[night], night


def test_sqs_end_to_end(scan_env, moto, capsys):
    scan, want = scan_env, _expected(scan_env)
    client = boto3.client("sqs", endpoint_url=moto.url, region_name="us-east-1")
    q = client.create_queue(QueueName=new_queue_name())["QueueUrl"]
    for night in ("night-1", "night-2"):
        assert _export(scan, "--run-id", night, "--to", "sqs", "--queue", q, "--sqs-endpoint", moto.url) == 0
        got = []
        while msgs := client.receive_message(QueueUrl=q, MaxNumberOfMessages=10, VisibilityTimeout=600
                                             ).get("Messages"):
            got += [json.loads(m["Body"])["uri"] for m in msgs]
        assert sorted(got) == want[night], night


def test_webhook_end_to_end(scan_env, monkeypatch, capsys):
    from ood_audit.sinks.webhook import SECRET_ENV

    from tests.sinks.webhook_receiver import WebhookReceiver

    scan, want = scan_env, _expected(scan_env)
    monkeypatch.setenv(SECRET_ENV, "real-scan-webhook-secret")
    receiver = WebhookReceiver(b"real-scan-webhook-secret", fail_first=1).start()  # a 503 first: retried
    try:
        for night in ("night-1", "night-2"):
            assert _export(scan, "--run-id", night, "--to", "webhook", "--webhook-url", receiver.url) == 0
            assert sorted(receiver.uris[night]) == want[night], night
    finally:
        receiver.stop()
    assert set(receiver.taken.values()) == {1} and receiver.refused == [503]


def test_label_studio_end_to_end(scan_env, label_studio, monkeypatch, capsys):
    scan, want = scan_env, _expected(scan_env)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    title = f"real-scan-{uuid.uuid4().hex[:8]}"
    seen: set[int] = set()
    for night in ("night-1", "night-2"):
        assert _export(scan, "--run-id", night, "--to", "label-studio", "--label-studio-url", label_studio.url,
                       "--create-project", title) == 0
        pid = int(json.loads(capsys.readouterr().out)["destination"].rsplit("/", 1)[1])
        tasks = [t for t in LabelStudioClient(label_studio.url, label_studio.token).tasks(pid) if t["id"] not in seen]
        seen |= {t["id"] for t in tasks}
        assert sorted(t["data"]["image"] for t in tasks) == want[night], night
        for t in tasks:
            (p,) = t["predictions"]
            assert p["model_version"] == t["data"]["bundle_id"] and 0.0 <= p["score"] <= 1.0
            assert t["data"]["image"].startswith(f"s3://{scan.bucket}/incoming/")
