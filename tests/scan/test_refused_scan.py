"""A real scan (SeaweedFS behind a relay, the session's local Ray) where the store refuses one object while it
answers the others: the run finishes, that object is one ``refused`` row, and every other row is ``ok``."""
from __future__ import annotations

import pyarrow.compute as pc
import pytest

from ood_audit.scan import ScanConfig, run_scan
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images, upload
from tests.io.s3_relay import deny_key, relay

# One scoring actor: each is a process that imports torch.
SMALL = {"chunk_size": 8, "slice_rows": 4, "batch_size": 8, "workers": 1, "read_threads": 4}


@pytest.mark.timeout(180)
def test_scan_finishes_with_a_refused_row(ray_local, bundle_uri, s3_client, s3_bucket, s3_config,
                                          tmp_path):
    """A key-level AccessDenied: the read task's probe finds the bucket answering (other codes: tests/io)."""
    status, code = 403, "AccessDenied"
    files = labelled_images(5, seed=4)
    prefix = upload(s3_client, s3_bucket, "imgs", files)
    refused = "imgs/class0/0003.png"
    assert refused.removeprefix("imgs/") in files
    with relay(s3_config, deny_key(s3_bucket, refused, status, code)) as (server, s3):
        cfg = ScanConfig(bundle=bundle_uri, output=str(tmp_path / "out"), inputs=(prefix,), run_id="refused",
                         s3=s3, **SMALL)
        res = run_scan(cfg)
        assert ("GET", f"/{s3_bucket}/{refused}") in server.refused
    table = open_reports(cfg.output).to_table().filter(pc.field("run_id") == "refused")
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == len(files)
    row = rows.pop(f"s3://{s3_bucket}/{refused}")
    assert row["status"] == "refused" and f"HTTP {status} {code}" in row["error"] and row["flagged"] is None
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert res.summary.complete
    assert res.summary.counts["refused"] == 1 and res.summary.counts["ok"] == len(files) - 1
