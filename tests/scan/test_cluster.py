"""Fault injection on a real two-node Ray cluster: lose a node mid-scan, kill the driver mid-scan.

The scan driver runs as its own process (``ood-audit scan --ray-address``), as a Ray job would. Both
tests end with exactly one report row per object.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from ood_audit.io.fs import read_bytes
from ood_audit.scan import ScanConfig
from ood_audit.store.records import parse_marker, parse_summary
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images, upload
from tests.scan.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 10

pytestmark = [pytest.mark.slow]


# A scoring actor takes ScanConfig.actor_cpus (0.5) CPU. Until node2 has scored, the node-loss test reserves
# 1.75 of the head's 2 CPUs: no scoring actor fits on the head (read and write tasks, 0.25, still do), so
# the pool starts on node2 and node2 holds part of the scan by construction. Left to itself, the scheduler
# may put both actors on the head, and node2 may never score. The reservation is given back just before
# node2 is lost, so the head can then host the whole pool.
SCAN_WORKERS, ACTOR_CPUS = 2, ScanConfig.actor_cpus  # the CLI's scan uses the default
HEAD_CPUS, NODE2_CPUS, HEAD_RESERVED = 2, 2, 1.75
assert HEAD_CPUS - HEAD_RESERVED < ACTOR_CPUS and SCAN_WORKERS * ACTOR_CPUS < NODE2_CPUS


@pytest.fixture(scope="module")
def cluster(s3_server):
    c = LocalCluster({**s3_server.env(), "PYTHONPATH": str(ROOT)})
    try:
        c.start_head(num_cpus=HEAD_CPUS, resources={"head": 1})
        c.add_node("node2", num_cpus=NODE2_CPUS, resources={"node2": 1})
        c.nodes_ids = c.wait_nodes(2)
        yield c
    finally:
        c.stop()


@pytest.fixture
def make_input(s3_client, s3_bucket, bundle_uri):
    """``make_input(n)``: n images and the bundle, both on S3."""

    def make(n):
        files = labelled_images(n // 2, seed=11)
        prefix = upload(s3_client, s3_bucket, "imgs", files)
        bundle_dir = Path(bundle_uri)
        for f in bundle_dir.iterdir():
            s3_client.put_object(Bucket=s3_bucket, Key=f"bundles/{bundle_dir.name}/{f.name}", Body=f.read_bytes())
        return {"prefix": prefix, "uris": [f"{prefix}/{k}" for k in files],
                "bundle": f"s3://{s3_bucket}/bundles/{bundle_dir.name}", "output": f"s3://{s3_bucket}/audit"}

    return make


def _driver(cluster, scan_input, run_id):
    cmd = [sys.executable, "-m", "ood_audit.cli", "scan", "--bundle", scan_input["bundle"], "--input",
           scan_input["prefix"], "--output", scan_input["output"], "--run-id", run_id, "--chunk-size", str(CHUNK),
           "--batch-size", "8", "--workers", str(SCAN_WORKERS), "--read-threads", "4", "--ray-address", cluster.address]
    log = open(os.path.join(cluster.temp, f"driver-{run_id}-{time.time():.0f}.log"), "w+")
    proc = subprocess.Popen(cmd, env=cluster.env, cwd=ROOT, start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _output(proc):
    proc.log.seek(0)
    return proc.log.read()[-4000:]


def _marker_keys(s3_client, bucket, run_id):
    resp = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"audit/runs/{run_id}/chunks/")
    return [o["Key"] for o in resp.get("Contents", ())]


def _markers(s3_client, bucket, run_id, cache):
    for key in _marker_keys(s3_client, bucket, run_id):
        if key not in cache:
            cache[key] = parse_marker(json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()), key)
    return list(cache.values())


def _wait(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"scan driver did not finish in {timeout} s:\n{_output(proc)}")


def _check_report(scan_input, s3_config, run_id):
    table = open_reports(scan_input["output"], s3=s3_config).to_table().filter(pc.field("run_id") == run_id)
    uris = table.column("uri").to_pylist()
    assert len(uris) == len(set(uris)), f"{len(uris) - len(set(uris))} duplicate rows"
    assert sorted(uris) == sorted(scan_input["uris"])
    assert set(table.column("status").to_pylist()) == {"ok"}
    uri = f"{scan_input['output']}/runs/{run_id}/summary.json"
    return parse_summary(json.loads(read_bytes(uri, s3=s3_config)), uri)


@pytest.mark.timeout(300)
def test_driver_killed_mid_scan_then_rerun_finishes_exactly_once(cluster, make_input, s3_client, s3_bucket,
                                                                 s3_config):
    n = 200  # 20 chunks: plenty left when the driver is killed after the second (asserted below)
    scan_input = make_input(n)
    total = n // CHUNK
    first = _driver(cluster, scan_input, "crash")
    deadline = time.time() + 180
    while len(_marker_keys(s3_client, s3_bucket, "crash")) < 2:
        assert first.poll() is None, f"driver exited early:\n{_output(first)}"
        assert time.time() < deadline, f"no chunk committed in time:\n{_output(first)}"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies with its work in flight
    first.wait(timeout=30)
    committed = len(_marker_keys(s3_client, s3_bucket, "crash"))
    assert 2 <= committed < total, "the scan finished before the driver was killed; scan more objects"

    second = _driver(cluster, scan_input, "crash")
    assert _wait(second, 240) == 0, _output(second)
    summary = _check_report(scan_input, s3_config, "crash")
    assert summary.attempts == 2 and summary.complete
    assert summary.rows_in_files == n == summary.rows_committed
    assert sum(e.rows for e in summary.executions) == n - committed * CHUNK  # only the rest


@pytest.mark.timeout(600)  # a safety net: the reservation's process and the pool's restart add to a busy machine
def test_node_lost_mid_scan_still_one_row_per_object(cluster, make_input, s3_client, s3_bucket, s3_config):
    # Enough work that the scan is far from done when node2 first commits (its actors may start slowly on a
    # busy machine; until then nothing is scored: see HEAD_RESERVED).
    n = 800
    scan_input = make_input(n)
    node2 = cluster.nodes_ids["node2"][:12]
    cluster.reserve_cpus("head", HEAD_RESERVED)
    proc = _driver(cluster, scan_input, "nodeloss")
    deadline, cache = time.time() + 180, {}
    while True:  # wait until node2's scoring actor has committed work, so it really held part of the scan
        markers = _markers(s3_client, s3_bucket, "nodeloss", cache)
        if any(w.startswith(node2) for m in markers for w in m.workers):
            break
        assert proc.poll() is None, f"driver exited early:\n{_output(proc)}"
        assert time.time() < deadline, f"node2 never scored anything:\n{_output(proc)}"
        time.sleep(0.2)
    cluster.release_cpus("head")  # the head may now host the whole pool; the actors stay on node2 until it is lost
    cluster.kill_node("node2")
    committed = len(_markers(s3_client, s3_bucket, "nodeloss", cache))
    assert committed < n // CHUNK, "the scan finished before node2 was lost; scan more objects"
    assert _wait(proc, 240) == 0, _output(proc)
    summary = _check_report(scan_input, s3_config, "nodeloss")
    assert summary.complete and summary.rows_in_files == n
    assert summary.workers.nodes == 2  # actors were spread over both nodes
