"""`ood-audit nightly` end to end on real SeaweedFS and a local Ray: two nights, exports deduplicated,
a report with drift, the lease refusing an overlapping run, and exit statuses."""
import json
import os
import socket
from datetime import datetime, timezone

import pytest
import yaml

from ood_audit.cli import main
from ood_audit.io.fs import exists, read_bytes, write_bytes
from ood_audit.errors import EXIT_LEASE_HELD
from ood_audit.nightly.run import EXIT_CONFIG
from ood_audit.store.runs import list_runs


def _config(tmp_path, scan, out):
    doc = {"bundle": scan.bundle_uri, "inputs": [scan.inputs], "output": out,
           "scan": {"batch_size": 32, "chunk_size": 100, "workers": 2, "read_threads": 8},
           "exports": [{"sink": "label-studio", "tasks_file": f"{out}/exports/tasks-{{run_id}}.json"},
                       {"sink": "jsonl", "policy": "top-k", "budget": 10, "prefix": f"{out}/exports/manifests"}],
           "report": {"out": f"{out}/html/{{run_id}}.html", "top": 12},
           "lease": {"ttl_s": 600}}
    p = tmp_path / "nightly.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_nights_exports_once_report_and_drift(real_scan, ray_local, s3_env, tmp_path, capsys):
    scan = real_scan
    out = f"s3://{scan.bucket}/nightly"
    cfg = _config(tmp_path, scan, out)
    assert main(["nightly", "--config", str(cfg), "--run-id", "n1"]) == 0
    first = capsys.readouterr().out
    assert "nightly run n1: done (exit 0)" in first
    tasks1 = json.loads(read_bytes(f"{out}/exports/tasks-n1.json", s3=scan.s3))
    assert tasks1 and all(t["data"]["image"].startswith(f"s3://{scan.bucket}/incoming/") for t in tasks1)
    assert exists(f"{out}/html/n1.html", s3=scan.s3)

    assert main(["nightly", "--config", str(cfg), "--run-id", "n2"]) == 0  # nothing changed since n1
    second = capsys.readouterr().out
    assert "0 object(s) scanned" in second or "scan: 0 object" in second
    assert "sent now 0" in second and "sent now" in second
    runs = [r.run_id for r in list_runs(out, s3=scan.s3)]
    assert runs == ["n1", "n2"]
    html = read_bytes(f"{out}/html/n2.html", s3=scan.s3).decode()
    assert "n1" in html  # drift is computed against the previous night
    assert not exists(f"{out}/nightly/lease.json", s3=scan.s3)  # released


@pytest.mark.slow
@pytest.mark.timeout(1800)  # may be the test that builds the shared real scan
def test_overlapping_run_is_refused_with_its_own_status(real_scan, s3_env, tmp_path, capsys):
    scan = real_scan
    out = f"s3://{scan.bucket}/nightly-held"
    now = datetime.now(timezone.utc).isoformat()
    write_bytes(f"{out}/nightly/lease.json", json.dumps(
        {"holder": "x", "host": socket.gethostname(), "pid": os.getpid(), "run": "still-running",
         "acquired_at": now, "renewed_at": now, "ttl_s": 600}).encode(), s3=scan.s3)
    cfg = _config(tmp_path, scan, out)
    assert main(["nightly", "--config", str(cfg)]) == EXIT_LEASE_HELD
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "still-running" in err[0] and "another run holds the lease" in err[0]
    assert list_runs(out, s3=scan.s3) == []  # nothing scanned


def test_bad_config_is_one_line_exit_2(tmp_path, capsys):
    p = tmp_path / "nightly.yaml"
    p.write_text("bundle: b\ninputs: [s3://x/in]\noutput: s3://x/out\nscan: {batchsize: 3}\n")
    assert main(["nightly", "--config", str(p)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.batchsize: unknown field" in err[0]
