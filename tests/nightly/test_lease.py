"""The nightly lease on local disk, on real S3 (SeaweedFS conditional writes), and on the GCS and Azure
emulators (generation and ETag conditions)."""
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from ood_audit.io.fs import read_bytes, write_bytes
from ood_audit.errors import EXIT_LEASE_HELD
from ood_audit.io.lease import Lease, LeaseHeld
from ood_audit.nightly.run import nightly_lease_uri

from tests.fixtures.clouds import fresh_bucket


def _roots(tmp_path, request):
    if request.param == "local":
        return str(tmp_path / "out"), None
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/audit", request.getfixturevalue("s3_config")


@pytest.fixture(params=["local", "s3", "gs", "az"])
def root(tmp_path, request):
    """Where the lease lives: local disk, SeaweedFS, fake-gcs-server (generation preconditions) or Azurite
    (ETag conditions)."""
    if request.param in ("gs", "az"):
        with fresh_bucket(request, request.param) as cloud:
            yield cloud.uri("audit"), cloud.config
        return
    yield _roots(tmp_path, request)


def test_second_run_is_refused_while_the_first_is_alive(root):
    output, s3 = root
    with Lease(nightly_lease_uri(output), 3600, run="night-1", s3=s3) as first:
        with pytest.raises(LeaseHeld) as err:
            Lease(nightly_lease_uri(output), 3600, run="night-2", s3=s3).acquire()
        assert "night-1" in str(err.value) and "\n" not in str(err.value)
        assert err.value.exit_code == EXIT_LEASE_HELD
        first.check()
    Lease(nightly_lease_uri(output), 3600, run="night-3", s3=s3).acquire().release()  # released: free again


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "over-a-stale-lease"])
def test_concurrent_starters_exactly_one_wins(root, stale):
    output, s3 = root
    if stale:
        _plant(output, s3, age_s=120, pid=_dead_pid(), on_store=True)
    results = []

    def start(i):
        try:
            results.append(("won", Lease(nightly_lease_uri(output), 3600, run=f"r{i}", s3=s3).acquire()))
        except LeaseHeld:
            results.append(("held", None))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(r for r, _ in results) == ["held"] * 5 + ["won"]
    next(lease for r, lease in results if r == "won").release()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(output, s3, *, age_s, pid, host=None, on_store=False):
    """A lease last renewed ``age_s`` ago by its holder's clock; with ``on_store``, also that old on the
    store's clock, which is the one staleness is judged by (locally the mtime; on S3, whose LastModified
    cannot be set, the lease says ttl 1 s and the store's clock is let run past it)."""
    import os
    import socket

    when = datetime.now(timezone.utc) - timedelta(seconds=age_s)
    ttl = 1 if on_store and s3 is not None else 60
    doc = {"holder": "old", "host": host or socket.gethostname(), "pid": pid, "run": "crashed",
           "acquired_at": when.isoformat(), "renewed_at": when.isoformat(), "ttl_s": ttl}
    write_bytes(f"{output}/nightly/lease.json", json.dumps(doc).encode(), s3=s3)
    if on_store and s3 is None:
        past = time.time() - age_s
        os.utime(f"{output}/nightly/lease.json", (past, past))
    elif on_store:
        time.sleep(2.05)  # Date - LastModified, both in whole seconds, is then at least 2 > ttl 1


def test_stale_lease_of_a_dead_holder_is_taken_over(root):
    output, s3 = root
    _plant(output, s3, age_s=120, pid=_dead_pid(), on_store=True)
    with Lease(nightly_lease_uri(output), 60, run="night-2", s3=s3):
        doc = json.loads(read_bytes(f"{output}/nightly/lease.json", s3=s3))
        assert doc["run"] == "night-2"


@pytest.mark.parametrize("case", ["ttl-not-passed", "holder-alive"])
def test_lease_not_stale_is_respected(root, case):
    output, s3 = root
    import os

    _plant(output, s3, age_s=10 if case == "ttl-not-passed" else 120,
           pid=_dead_pid() if case == "ttl-not-passed" else os.getpid())
    with pytest.raises(LeaseHeld):
        Lease(nightly_lease_uri(output), 60, run="night-2", s3=s3).acquire()


def test_renewal_keeps_a_long_run_alive_and_detects_takeover(root):
    output, s3 = root
    lease = Lease(nightly_lease_uri(output), 1, run="long", s3=s3).acquire()  # renews every 1/3 s
    try:
        time.sleep(1.5)
        doc = json.loads(read_bytes(f"{output}/nightly/lease.json", s3=s3))
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(doc["renewed_at"])).total_seconds()
        assert doc["holder"] == lease.token and age < 1.0  # renewed, so never stale while alive
        _plant(output, s3, age_s=0, pid=1, host="other-host")  # someone took it over
        deadline = time.time() + 5
        while lease._lost is None and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(Exception, match="now belongs to run crashed"):
            lease.check()
    finally:
        lease.release()
    # not ours any more: release left the new holder's lease in place
    assert json.loads(read_bytes(f"{output}/nightly/lease.json", s3=s3))["run"] == "crashed"


def test_concurrent_local_starters_never_see_a_half_written_lease(tmp_path):
    """Many rounds of the race on local disk: a starter that reads the lease while its creator is still
    writing it must not take the empty file for a stale lease (two winners)."""
    for round_ in range(30):
        output = str(tmp_path / f"round{round_}")
        results, barrier = [], threading.Barrier(6)

        def start(i, output=output, results=results, barrier=barrier):
            barrier.wait()
            try:
                results.append(("won", Lease(nightly_lease_uri(output), 3600, run=f"r{i}").acquire()))
            except LeaseHeld:
                results.append(("held", None))

        threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(r for r, _ in results) == ["held"] * 5 + ["won"], f"round {round_}"
        next(lease for r, lease in results if r == "won").release()
