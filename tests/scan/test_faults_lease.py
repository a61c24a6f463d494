"""Two drivers on one run id: the second is refused while the first lives, and takes over once it is dead.

The first driver is a real separate process holding the run's lease (as a running `ood-audit scan` does);
it is killed with SIGKILL, so its lease is left behind, as a crashed driver's would be.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.compute as pc
import pytest

from ood_audit.cli import main
from ood_audit.errors import EXIT_LEASE_HELD
from ood_audit.io.lease import Lease, LeaseHeld
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images, write_local

ROOT = Path(__file__).resolve().parents[2]
_HOLDER = """
import sys, time
from ood_audit.io.lease import Lease
Lease(sys.argv[1], 60, run="first-driver", dead_holder_is_stale=True).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(240)
def test_second_driver_refused_while_the_first_lives_then_takes_over(ray_local, bundle_uri, tmp_path, capsys):
    images = labelled_images(6, seed=31)
    data = write_local(tmp_path / "in", images)
    output = tmp_path / "out"
    lease = output / "runs" / "twice" / "lease.json"
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lease)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        assert first.stdout.readline().strip() == "held"
        args = ["scan", "--bundle", bundle_uri, "--input", str(data), "--output", str(output), "--run-id", "twice",
                "--chunk-size", "4", "--batch-size", "8", "--workers", "1", "--read-threads", "2"]
        rc = main(args)
        err = capsys.readouterr().err.strip()
        assert rc == EXIT_LEASE_HELD, err
        assert len(err.splitlines()) == 1 and "first-driver" in err and str(first.pid) in err and str(lease) in err
        assert not (output / "runs" / "twice" / "run.json").exists()  # refused before touching the run
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # dies holding the lease
        first.wait(10)
    assert json.loads(lease.read_text())["run"] == "first-driver"

    assert main(args) == 0  # its holder is gone: the lease is taken over at once
    capsys.readouterr()
    table = open_reports(str(output)).to_table().filter(pc.field("run_id") == "twice")
    got = table.column("uri").to_pylist()
    assert sorted(got) == sorted(str(data / k) for k in images) and len(got) == len(set(got))
    assert not lease.exists()  # released at the end


def test_stale_lease_from_another_host_is_taken_over_only_after_its_ttl(tmp_path):
    uri = str(tmp_path / "runs" / "r" / "lease.json")
    os.makedirs(os.path.dirname(uri))

    def plant(age_s):
        when = datetime.now(timezone.utc) - timedelta(seconds=age_s)
        doc = {"holder": "x", "host": "other-host", "pid": 1, "run": "r", "acquired_at": when.isoformat(),
               "renewed_at": when.isoformat(), "ttl_s": 60}
        Path(uri).write_text(json.dumps(doc))
        past = time.time() - age_s  # staleness is judged on the store's clock: the file's mtime
        os.utime(uri, (past, past))

    plant(10)
    with pytest.raises(LeaseHeld):
        Lease(uri, 60, run="r", dead_holder_is_stale=True).acquire()
    plant(120)
    lease = Lease(uri, 60, run="r", dead_holder_is_stale=True).acquire()
    try:
        assert json.loads(Path(uri).read_text())["holder"] == lease.token
    finally:
        lease.release()
