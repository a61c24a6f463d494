"""The report carries ``content_sha256`` and ``quality_issues`` (format 3), ``near_duplicate_of_id`` (4) and
``duplicate_of`` (5); runs written before them still read."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from ood_audit.scan.rows import CHUNK, DIGEST, QUALITY, READ_S, SEQ, RowBuilder
from ood_audit.store.records import RunSummary
from tests.reports import commit_run
from ood_audit.store.schema import part_name, partition_uri, report_schema, write_part
from ood_audit.store.runs import RunInfo, check_format, run_dataset


def test_all_null_findings_from_ray_stay_null():
    builder = RowBuilder({}, "bid", "run1", ["featurenorm"])
    batch = {"uri": np.array(["a", "b"], dtype=object), "etag": np.array(["e", "e"], dtype=object),
             "size": np.ones(2, np.int64), "status": np.array(["missing", "missing"], dtype=object),
             "error": np.array(["x", "x"], dtype=object), "width": np.full(2, -1, np.int32),
             "height": np.full(2, -1, np.int32), CHUNK: np.zeros(2, np.int32), SEQ: np.arange(2, dtype=np.int32),
             READ_S: np.zeros(2, np.float32),
             DIGEST: np.full(2, np.nan, np.float32), QUALITY: np.full(2, np.nan, np.float32)}  # Ray's all-null
    table = builder.build(batch, None)
    assert table.column("content_sha256").null_count == 2 and table.column("quality_issues").null_count == 2


def _old_run(tmp_path, version: str, absent: tuple[str, ...], **values):
    """One row written in an older report format: ``absent`` columns left out, ``values`` set."""
    old = report_schema(["featurenorm"])
    old = pa.schema([f for f in old if f.name not in absent], metadata={"ood_audit.report_format": version})
    row = {f.name: None for f in old}
    row.update(run_id="r0", bundle_id="b", uri="/x.png", status="ok", scanned_at=datetime.now(timezone.utc), **values)
    run = RunInfo(output=str(tmp_path), run_id="r0", run_date="2026-12-01", bundle_id="b", bundle_uri="",
                  complete=True, started_at="", summary=RunSummary(run_id="r0", objects=1))
    write_part(pa.Table.from_pylist([row], schema=old),
               f"{partition_uri(str(tmp_path), run.run_date)}/{part_name('r0', 0, 1, '0' * 16)}")
    commit_run(str(tmp_path), "r0", run.run_date, [(part_name('r0', 0, 1, '0' * 16), 1)], bundle_id="b")
    ds = run_dataset(run)
    assert check_format(ds.schema, "old") == version
    return ds.to_table()


def test_reports_of_format_2_still_read(tmp_path):
    got = _old_run(tmp_path, "2", ("content_sha256", "quality_issues"))
    assert got.num_rows == 1 and "quality_issues" not in got.schema.names
    assert check_format(report_schema(), "new") == "5"


def test_reports_of_format_3_still_read(tmp_path):
    """Format 3 (before ``near_duplicate_of_id``) reads; the column is absent, not an error."""
    got = _old_run(tmp_path, "3", ("near_duplicate_of_id",), quality_issues=["dark"])
    assert got.column("quality_issues").to_pylist() == [["dark"]] and "near_duplicate_of_id" not in got.schema.names


def test_reports_of_format_4_still_read(tmp_path):
    """Format 4 (before ``duplicate_of``) reads; the column is absent, not an error."""
    got = _old_run(tmp_path, "4", ("duplicate_of",), near_duplicate_of_id="s3://id/a.png")
    assert got.column("near_duplicate_of_id").to_pylist() == ["s3://id/a.png"]
    assert "duplicate_of" not in got.schema.names
