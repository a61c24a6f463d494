"""Storage faults in the middle of a real scan (real SeaweedFS, real Ray): the server restarts, stays down
past the retry window, comes back with the old keys revoked, or comes back refusing writes. And before it:
a missing input bucket has the status of a missing bucket.

Each test has its own SeaweedFS, crashed (SIGKILL) once a few chunks are committed and resumed on the same
ports and data. The scan runs in a thread so that the server is crashed and resumed from the main thread
(the server is tied to the thread that started it). Every test ends with exactly one row per object.
"""
from __future__ import annotations

import threading
import time

import pyarrow.compute as pc
import pytest

from ood_audit.embedded.s3 import EmbeddedS3
from ood_audit.cli import main
from ood_audit.errors import EXIT_INCOMPLETE, EXIT_NO_BUCKET
from ood_audit.io.fs import S3Config
from ood_audit.scan import ScanConfig, ScanIncomplete, run_scan
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images, upload

pytestmark = [pytest.mark.slow]

N_PER_CLASS = 80  # 160 tiny images in 10 chunks
CHUNK = 16
SMALL = {"chunk_size": CHUNK, "slice_rows": 8, "batch_size": 8, "workers": 1, "read_threads": 4}


@pytest.fixture
def server(private_s3: EmbeddedS3) -> EmbeddedS3:
    """This test's own SeaweedFS, to crash and resume."""
    return private_s3


@pytest.fixture
def scan_input(server):
    client = server.client()
    client.create_bucket(Bucket="faults")
    files = labelled_images(N_PER_CLASS, seed=21)
    prefix = upload(client, "faults", "imgs", files)
    return {"prefix": prefix, "uris": sorted(f"{prefix}/{k}" for k in files), "output": "s3://faults/audit"}


class _Scan(threading.Thread):
    def __init__(self, cfg: ScanConfig) -> None:
        super().__init__(daemon=True)
        self.cfg, self.result, self.error = cfg, None, None

    def run(self) -> None:
        try:
            self.result = run_scan(self.cfg)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc


def _committed(server: EmbeddedS3, run_id: str) -> int:
    client = server.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
    try:
        page = client.list_objects_v2(Bucket="faults", Prefix=f"audit/runs/{run_id}/chunks/")
    except Exception:  # noqa: BLE001 - not answering yet
        return 0
    return int(page.get("KeyCount", 0))


def _crash_after(server: EmbeddedS3, scan: _Scan, run_id: str, chunks: int = 2) -> int:
    """Crash the server once ``chunks`` chunks are committed; returns how many were when it went down."""
    deadline = time.monotonic() + 150
    while _committed(server, run_id) < chunks:
        assert scan.is_alive(), f"the scan ended before the fault: {scan.error!r}"
        assert time.monotonic() < deadline, "the scan committed nothing in time"
        time.sleep(0.05)
    done = _committed(server, run_id)
    server.crash()
    return done


def _assert_exactly_once(server: EmbeddedS3, output: str, run_id: str, uris: list[str]) -> None:
    table = open_reports(output, s3=server.s3_config()).to_table()
    table = table.filter(pc.field("run_id") == run_id)
    got = table.column("uri").to_pylist()
    assert len(got) == len(set(got)), "duplicate rows"
    assert sorted(got) == uris
    assert set(table.column("status").to_pylist()) == {"ok"}, "an outage must never show as a row status"


def _config(server: EmbeddedS3, scan_input: dict, run_id: str, retry_s: float) -> ScanConfig:
    s3 = S3Config(server.endpoint_url, access_key=server.access_key, secret_key=server.secret_key, retry_s=retry_s)
    return ScanConfig(bundle=scan_input["bundle"], output=scan_input["output"], inputs=(scan_input["prefix"],),
                      run_id=run_id, s3=s3, **SMALL)


@pytest.fixture
def with_bundle(scan_input, bundle_uri):
    scan_input["bundle"] = bundle_uri  # a local bundle: the faults are on the scanned store and the output
    return scan_input


@pytest.mark.timeout(240)
def test_restart_within_the_window_finishes_exactly_once(ray_local, server, with_bundle):
    cfg = _config(server, with_bundle, "restart", retry_s=60)
    scan = _Scan(cfg)
    scan.start()
    before = _crash_after(server, scan, "restart")
    time.sleep(2.0)  # down for a while, well inside the window
    server.resume()
    scan.join(200)
    assert not scan.is_alive() and scan.error is None, repr(scan.error)
    summary = scan.result.summary
    assert summary.complete and before < summary.chunks.total
    assert summary.rows_in_files == summary.rows_committed == len(with_bundle["uris"]) == summary.objects
    assert [e.error for e in summary.executions] == [None]  # ridden out by retries: one pass
    phases = summary.startup_s.to_json()  # the start-up breakdown is recorded for every phase that ran
    assert set(phases) == {"bundle_load", "planning", "ray_start", "actor_start", "first_batch"}
    assert all(isinstance(v, float) and v >= 0 for v in phases.values()), phases
    _assert_exactly_once(server, with_bundle["output"], "restart", with_bundle["uris"])


def _stopped_resumable(scan: _Scan, run_id: str) -> ScanIncomplete:
    scan.join(200)
    assert not scan.is_alive()
    assert isinstance(scan.error, ScanIncomplete), repr(scan.error)
    message = str(scan.error)
    assert "\n" not in message and f"--run-id {run_id}" in message, message
    assert scan.error.exit_code == EXIT_INCOMPLETE
    return scan.error


def _finish(server: EmbeddedS3, cfg: ScanConfig, run_id: str, uris: list[str]) -> None:
    res = run_scan(cfg)
    assert res.summary.complete and res.summary.attempts == 2
    assert res.summary.rows_in_files == res.summary.rows_committed == len(uris)
    _assert_exactly_once(server, cfg.output, run_id, uris)


def _scan_until_crashed(server: EmbeddedS3, scan_input: dict, run_id: str,
                        retry_s: float) -> tuple[ScanConfig, _Scan]:
    """Start a scan in a thread and crash the server once a few chunks are committed; returns its config
    and the running scan."""
    cfg = _config(server, scan_input, run_id, retry_s=retry_s)
    scan = _Scan(cfg)
    scan.start()
    _crash_after(server, scan, run_id)
    return cfg, scan


@pytest.mark.timeout(300)
def test_outage_past_the_window_stops_resumable_then_rerun_finishes(ray_local, server, with_bundle):
    cfg, scan = _scan_until_crashed(server, with_bundle, "outage", retry_s=1.0)
    error = _stopped_resumable(scan, "outage")  # while the server is still down
    assert "cannot reach object storage at " + server.endpoint_url in str(error)
    server.resume()
    _finish(server, cfg, "outage", with_bundle["uris"])


@pytest.mark.timeout(300)
def test_credentials_revoked_mid_run_stop_it_resumable_and_lose_nothing(ray_local, server, with_bundle):
    cfg, scan = _scan_until_crashed(server, with_bundle, "revoked", retry_s=30)
    server.resume(access_key="rotated" + server.access_key[-8:], secret_key=server.secret_key[::-1])  # old keys gone
    error = _stopped_resumable(scan, "revoked")
    assert server.endpoint_url in str(error) and ("credentials" in str(error) or "access denied" in str(error))
    rotated = S3Config(server.endpoint_url, access_key=server.access_key, secret_key=server.secret_key, retry_s=30)
    cfg.s3 = rotated
    _finish(server, cfg, "revoked", with_bundle["uris"])


@pytest.mark.timeout(300)
def test_output_refusing_writes_mid_run_stops_it_resumable_and_loses_nothing(ray_local, server, with_bundle):
    cfg, scan = _scan_until_crashed(server, with_bundle, "readonly", retry_s=30)
    server.resume(read_only=True)  # reads still work, every write is refused
    error = _stopped_resumable(scan, "readonly")
    assert "access denied by " + server.endpoint_url in str(error)
    server.resume()
    _finish(server, cfg, "readonly", with_bundle["uris"])


@pytest.mark.timeout(120)
def test_a_missing_input_bucket_exits_with_the_missing_bucket_status(capsys, s3_env, s3_bucket, bundle_uri):
    # The output is fine; the input's bucket does not exist: exit 7, as README "Exit codes" says, not 2.
    rc = main(["scan", "--bundle", bundle_uri, "--input", "s3://no-such-input-bucket/imgs", "--output",
               f"s3://{s3_bucket}/audit", "--storage-retry-s", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_NO_BUCKET and len(err.splitlines()) == 1 and err.startswith("ood-audit: error: "), err
    assert "s3://no-such-input-bucket" in err and s3_env["AWS_ENDPOINT_URL"] in err
