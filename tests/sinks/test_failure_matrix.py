"""The failure matrix (issue 21): three tiny nights per cell on real SeaweedFS, Ray, Label Studio and moto,
night 1 failing one way; nights 2 and 3 must have delivered every flagged row of every night exactly once
to each sink (received == flagged, no duplicates).

Cells: the scan killed mid-run (SIGKILL of a `ood-audit nightly` process once a chunk is committed);
Label Studio down (its relay cut); SQS down (its relay cut); the report failing (an unwritable path).
The flagged set is read from every part file under ``reports/`` (stray ones of the killed attempt
included: their objects are scanned again with the same bytes and bundle, so they are flagged alike).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import pyarrow.compute as pc
import pytest
import yaml

from ood_audit.errors import EXIT_OK, EXIT_TRIAGE
from ood_audit.nightly.config import load_config
from ood_audit.io.fs import read_bytes
from ood_audit.nightly.run import nightly_lease_uri, run_nightly
from ood_audit.sinks.labelstudio import LabelStudioClient
from ood_audit.store.runs import read_markers
from ood_audit.store.schema import open_reports

from tests.sinks.servers import Relay

CELLS = ("scan-killed", "label-studio-down", "sqs-down", "report-fails")
PER_NIGHT = 12
KILLED_TTL_S = 15  # the killed night's nightly lease: taken over this long after its last renewal
KILLED_RETRY_S = 10  # its storage retry window, which the lease's TTL must exceed


@pytest.fixture(scope="module")
def night_keys(real_scan, s3_client):
    """Three nights of PER_NIGHT objects each, from the real scan's incoming mix (digits, letters, noise)."""
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=real_scan.bucket, Prefix="incoming/")["Contents"])
    step = max(1, len(keys) // (3 * PER_NIGHT))
    picked = keys[::step][:3 * PER_NIGHT]
    return [picked[i * PER_NIGHT:(i + 1) * PER_NIGHT] for i in range(3)]


def _flagged(out, s3):
    t = open_reports(out, s3=s3).to_table(columns=["uri"], filter=(pc.field("status") == "ok")
                                          & (pc.field("flagged") == True))  # noqa: E712
    return set(t.column("uri").to_pylist())


def _kill_mid_scan(cfg_path, run_id, out, s3, ray_address, env):
    """Run a nightly in its own process and SIGKILL it once its scan committed a chunk."""
    cmd = [sys.executable, "-c", "import sys; from ood_audit.cli import main; sys.exit(main())", "nightly",
           "--config", str(cfg_path), "--run-id", run_id, "--ray-address", ray_address]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not read_markers(out, run_id, s3=s3):
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Its nightly lease stays behind; on this host, with its process gone, it is taken over once not renewed
    # for its TTL (README, "Scheduling it nightly"): wait for that, by the lease's own record.
    try:
        lease = json.loads(read_bytes(nightly_lease_uri(out), s3=s3))
    except FileNotFoundError:
        return proc.returncode
    # + 2 s: the store's Date and LastModified, which judge the age, come in whole seconds
    stale_at = datetime.fromisoformat(lease["renewed_at"]) + timedelta(seconds=float(lease["ttl_s"]) + 2)
    time.sleep(max(0.0, (stale_at - datetime.now(timezone.utc)).total_seconds()))
    return proc.returncode


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.timeout(900)
@pytest.mark.parametrize("cell", CELLS)
def test_failure_matrix(cell, night_keys, real_scan, ray_local, s3_env, s3_client, label_studio, moto, tmp_path):
    scan, bucket = real_scan, real_scan.bucket
    base = f"matrix-{cell}"
    out, inputs = f"s3://{bucket}/{base}/audit", f"s3://{bucket}/{base}/in"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    sqs = boto3.client("sqs", endpoint_url=moto.url, region_name=region)
    queue = f"matrix-{cell}-{tmp_path.name[-6:]}".replace("_", "-")
    queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    ls_relay, sqs_relay = Relay(label_studio.port), Relay(moto.port)
    title = f"matrix {cell} {uuid.uuid4().hex[:8]}"  # Label Studio titles: at most 50 characters
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the report folder should be")

    def config(night):
        report_dir = str(blocker) if (cell == "report-fails" and night == 1) else str(tmp_path / "html")
        doc = {"bundle": scan.bundle_uri, "inputs": [inputs], "output": out,
               "scan": {"batch_size": 4, "chunk_size": 4, "workers": 1, "read_threads": 4},
               "exports": [{"sink": "label-studio", "url": ls_relay.url, "create_project": title},
                           {"sink": "sqs", "queue": queue, "endpoint_url": sqs_relay.url}],
               "report": {"out": f"{report_dir}/{{run_id}}.html", "top": 4},
               "lease": {"ttl_s": KILLED_TTL_S if cell == "scan-killed" else 600},
               "s3": {"retry_s": KILLED_RETRY_S if cell == "scan-killed" else 120}}
        p = tmp_path / f"night{night}.yaml"
        p.write_text(yaml.safe_dump(doc))
        return p

    received_sqs: list[str] = []
    env = {**os.environ, "LABEL_STUDIO_API_KEY": label_studio.token}
    try:
        for night in (1, 2, 3):
            for key in night_keys[night - 1]:
                s3_client.copy_object(Bucket=bucket, Key=f"{base}/in/{key.split('/', 1)[1]}",
                                      CopySource={"Bucket": bucket, "Key": key})
            run_id = f"{cell}-n{night}"
            cfg = config(night)
            if night == 1 and cell == "label-studio-down":
                ls_relay.cut()
            if night == 1 and cell == "sqs-down":
                sqs_relay.cut()
            if night == 1 and cell == "scan-killed":
                address = ray_local.get_runtime_context().gcs_address
                code = _kill_mid_scan(cfg, run_id, out, scan.s3, address, env)
                status, exports = code, []
            else:
                res = run_nightly(load_config(str(cfg)), run_id=run_id, environ=env)
                status, exports = res.status, res.exports
            if night == 1:
                ls_relay.restore() if cell == "label-studio-down" else None
                sqs_relay.restore() if cell == "sqs-down" else None
            while True:  # drain what SQS received this night (straight from moto, not through the relay)
                msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
                if not msgs:
                    break
                received_sqs += [json.loads(m["Body"])["uri"] for m in msgs]
                sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
            client = LabelStudioClient(label_studio.url, label_studio.token)
            project = client.find_project(title)
            received_ls = [t["data"]["image"] for t in client.tasks(project)] if project is not None else []
            flagged = _flagged(out, scan.s3)
            sent = {e["sink"]: (e["sent_now"], e["from_earlier_runs"]) for e in exports}
            print(f"matrix {cell} night {night}: exit {status}, flagged so far {len(flagged)}, "
                  f"Label Studio received {len(received_ls)}, SQS received {len(received_sqs)}, "
                  f"sent now (from earlier nights): {sent}")
            if night == 1:
                assert status != EXIT_OK or cell == "scan-killed"  # a killed process may have finished first
                if cell in ("label-studio-down", "sqs-down", "report-fails"):
                    assert status == EXIT_TRIAGE
                continue
            assert status == EXIT_OK
            assert sorted(received_ls) == sorted(flagged), f"night {night}: Label Studio"
            assert sorted(received_sqs) == sorted(flagged), f"night {night}: SQS"
        assert flagged  # the matrix proved something: rows were flagged and delivered
    finally:
        ls_relay.cut()
        sqs_relay.cut()
