"""The lease fences (ood_audit.io.lease): a frozen holder commits nothing once taken over, clocks of hosts
do not matter, a reused pid keeps nobody alive, a store without conditional writes is refused, and the
scan's lease TTL is larger than its storage retry window."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ood_audit.errors import ConfigError
from ood_audit.io.fs import S3Config, read_bytes, write_bytes
from ood_audit.io.lease import Lease, LeaseHeld, LeaseLost, _Conflict, check_ttl, process_start
from ood_audit.scan.config import ScanConfig

from tests.io.lease_relay import HeaderStrippingRelay

ROOT = Path(__file__).resolve().parents[2]

# A scan driver in miniature: it holds the run's lease and commits a chunk marker through the run ledger
# (whose commit calls the lease's fence) once the test says so on stdin.
_HOLDER = """
import sys
from ood_audit.io.lease import Lease, LeaseLost
from ood_audit.store.records import ChunkMarker
from ood_audit.store.run_ledger import RunLayout, RunLedger

output, ttl = sys.argv[1], float(sys.argv[2])
layout = RunLayout(output, "frozen")
lease = Lease(layout.file("lease.json"), ttl, run="frozen", dead_holder_is_stale=True).acquire()
ledger = RunLedger(layout, fence=lease.check)
print("held", flush=True)
sys.stdin.readline()  # sent while this process is stopped: it commits the moment it runs again
try:
    ledger.commit(ChunkMarker(chunk=0, rows=1, attempt=1, files=["part-0.parquet"]))
except LeaseLost as exc:
    print("fenced:", exc, flush=True)
    sys.exit(3)
print("committed", flush=True)
"""


@pytest.mark.timeout(120)
def test_holder_frozen_past_its_ttl_is_taken_over_and_commits_nothing_when_resumed(tmp_path):
    output, ttl = str(tmp_path / "out"), 2.0
    lease_uri = f"{output}/runs/frozen/lease.json"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, output, str(ttl)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    taker = None
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while taker is None and time.monotonic() < deadline:
            try:
                taker = Lease(lease_uri, ttl, run="taker", dead_holder_is_stale=True).acquire()
            except LeaseHeld:
                time.sleep(0.2)
        assert taker is not None, "the frozen holder's lease was never taken over"
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        os.kill(holder.pid, signal.SIGCONT)
        out, _ = holder.communicate(timeout=60)
        assert holder.returncode == 3 and out.startswith("fenced:"), out
        assert not (Path(output) / "runs" / "frozen" / "chunks").exists()  # no marker written
        assert json.loads(Path(lease_uri).read_text())["holder"] == taker.token  # nor the lease
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait(10)
        if taker is not None:
            taker.release()


@pytest.fixture(params=["local", "s3"])
def lease_uri(tmp_path, request):
    if request.param == "local":
        return str(tmp_path / "out" / "lease.json"), None
    return f"s3://{request.getfixturevalue('s3_bucket')}/out/lease.json", request.getfixturevalue("s3_config")


@pytest.mark.parametrize("skew_min", [-10, 10])
def test_holder_with_a_skewed_clock_neither_loses_nor_has_its_lease_stolen(lease_uri, skew_min):
    """The holder's clock is 10 minutes off (behind: its lease looks 10 minutes old to a wall-clock judge;
    ahead: a taker's lease would look from the future); takers on a true clock and on the opposite skew
    are refused for longer than the TTL, and the holder is never fenced."""
    uri, s3 = lease_uri
    ttl = 4.0  # renewed every 1.3 s, fenced after 2.7 s without one: room for a slow renewal on a busy host

    def clock(minutes):
        return lambda: datetime.now(timezone.utc) + timedelta(minutes=minutes)

    holder = Lease(uri, ttl, run="skewed", s3=s3, now=clock(skew_min)).acquire()
    try:
        time.sleep(1.25 * ttl)  # past the TTL since acquisition: only the renewals keep it alive
        for taker_skew in (0, -skew_min):
            with pytest.raises(LeaseHeld):
                Lease(uri, ttl, run="taker", s3=s3, now=clock(taker_skew)).acquire()
        holder.check()  # renewed all along: not fenced, not lost
        assert json.loads(read_bytes(uri, s3=s3))["holder"] == holder.token
    finally:
        holder.release()
    Lease(uri, ttl, run="next", s3=s3).acquire().release()  # released: free again


def test_holder_cut_off_from_the_store_fences_itself(private_s3):
    """Nobody took the lease over, but its renewals fail (the store is gone): once the last successful one
    is older than 2/3 of the TTL, the holder's fence refuses every further commit."""
    private_s3.client().create_bucket(Bucket="fence-cut-off")
    s3 = dataclasses.replace(private_s3.s3_config(), retry_s=0.0)  # renewals fail at once
    lease = Lease("s3://fence-cut-off/out/lease.json", 3.0, run="cut-off", s3=s3).acquire()
    private_s3.crash()
    try:
        deadline = time.monotonic() + 60
        with pytest.raises(LeaseLost, match="not renewed for"):
            while time.monotonic() < deadline:
                lease.check()
                time.sleep(0.1)
        assert lease._lost is None  # fenced by its own clock, not told by a taker
    finally:
        lease._stop.set()  # the store is down: nothing to release


def test_release_deletes_only_the_version_it_holds(lease_uri):
    uri, s3 = lease_uri
    lease = Lease(uri, 60, run="mine", s3=s3).acquire()
    lease._stop.set()
    lease._thread.join()  # no renewal from here on
    _, mine, _ = lease.store.read()
    lease.store.replace({"holder": "other", "run": "taker", "ttl_s": 60}, mine)  # a taker's version
    with pytest.raises(_Conflict):
        lease.store.delete(mine)
    lease.release()  # sees another holder: leaves it
    assert json.loads(read_bytes(uri, s3=s3))["holder"] == "other"


def test_reused_pid_does_not_keep_a_dead_holder_alive(tmp_path):
    """A lease naming a live process's pid with another start time was left by a process that is gone (its
    pid now belongs to another): a scan driver takes it over at once; the true start time keeps it held."""
    import socket

    uri = str(tmp_path / "runs" / "r" / "lease.json")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        start = process_start(other.pid)
        assert start is not None

        def plant(pid_start):
            now = datetime.now(timezone.utc).isoformat()
            doc = {"holder": "old", "host": socket.gethostname(), "pid": other.pid, "pid_start": pid_start,
                   "run": "r", "acquired_at": now, "renewed_at": now, "ttl_s": 3600}
            write_bytes(uri, json.dumps(doc).encode())

        plant(start)  # the live process itself: held
        with pytest.raises(LeaseHeld):
            Lease(uri, 3600, run="r", dead_holder_is_stale=True).acquire()
        plant(start + 1)  # the same pid, another process: its holder is dead
        lease = Lease(uri, 3600, run="r", dead_holder_is_stale=True).acquire()
        try:
            assert json.loads(Path(uri).read_text())["holder"] == lease.token
        finally:
            lease.release()
    finally:
        other.kill()
        other.wait(10)


def test_store_that_ignores_if_none_match_is_refused_in_one_line(s3_bucket, s3_config, s3_client):
    direct = Lease(f"s3://{s3_bucket}/out/lease.json", 60, run="direct", s3=s3_config).acquire()  # probe passes
    direct.release()
    with HeaderStrippingRelay(s3_config, "If-None-Match") as url:
        relayed = dataclasses.replace(s3_config, endpoint_url=url)
        with pytest.raises(ConfigError) as err:
            Lease(f"s3://{s3_bucket}/out/lease.json", 60, run="relayed", s3=relayed).acquire()
    message = str(err.value)
    assert "\n" not in message and "If-None-Match" in message and url in message and s3_bucket in message
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == []  # neither the probe key nor a lease was left behind


def test_lease_ttl_not_above_the_storage_retry_window_is_refused_in_one_line():
    s3 = S3Config.from_env(retry_s=120.0)
    cfg = ScanConfig(bundle="b", output="o", inputs=("i",), s3=s3, lease_ttl_s=60.0)
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert "\n" not in str(err.value) and "lease_ttl_s" in str(err.value) and "--storage-retry-s" in str(err.value)
    with pytest.raises(ConfigError):
        check_ttl(120.0, 120.0, ttl_name="ttl_s")
    for retry in (0.0, 120.0, 900.0):  # the default is always above the window
        default = ScanConfig(bundle="b", output="o", inputs=("i",), s3=S3Config.from_env(retry_s=retry))
        default.validate()
        assert default.lease_ttl() > retry
