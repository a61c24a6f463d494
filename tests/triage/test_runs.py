"""Reading runs back: ordering, one-line errors, format checks, and the streaming top-N selection."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ood_audit import load_report
from ood_audit.errors import ReportError
from ood_audit.store.runs import anomaly, find_run, list_runs, most_anomalous, previous_run, run_dataset

from tests.reports import row, write_run


def test_runs_ordered_by_creation_not_by_name(tmp_path):
    out = str(tmp_path)
    write_run(out, "zzz-first", [row("/d/a.png")], day=0)
    write_run(out, "aaa-second", [row("/d/a.png")], day=1)
    assert [r.run_id for r in list_runs(out)] == ["zzz-first", "aaa-second"]
    latest = find_run(out)
    assert latest.run_id == "aaa-second" and previous_run(out, latest).run_id == "zzz-first"
    assert previous_run(out, find_run(out, "zzz-first")) is None


def test_load_report_reads_only_its_run_and_pushes_down(tmp_path):
    out = str(tmp_path)
    write_run(out, "n1", [row(f"/d/{i}.png", pct=float(i)) for i in range(20)], day=0)
    write_run(out, "n2", [row(f"/d/{i}.png", pct=float(i)) for i in range(5)], day=0)  # same partition
    assert load_report(out, "n1").num_rows == 20
    assert load_report(out).num_rows == 5  # latest; same run_date, other run's files not read
    t = load_report(out, "n1", columns=["uri"], filter=pc.field("pct_csd") < 3)
    assert t.schema.names == ["uri"] and t.num_rows == 3
    with pytest.raises(ReportError, match="unknown report column"):
        load_report(out, "n1", columns=["nope"])


@pytest.mark.parametrize("case", ["empty", "unknown-run", "bad-format"])
def test_one_line_errors(tmp_path, capsys, case):
    out = str(tmp_path)
    if case != "empty":
        write_run(out, "n1", [row("/d/a.png")])
    if case == "bad-format":
        f = next((tmp_path / "reports").rglob("*.parquet"))
        t = pq.read_table(f)
        pq.write_table(t.replace_schema_metadata({"ood_audit.report_format": "99"}), f)
    with pytest.raises(ReportError) as err:
        load_report(out, "n2" if case == "unknown-run" else None)
    msg = str(err.value)
    assert "\n" not in msg
    assert {"empty": "no scan runs", "unknown-run": "unknown --run-id 'n2'", "bad-format": "'99'"}[case] in msg


def test_anomaly_is_one_minus_the_lowest_flag_on_percentile():
    t = pa.table({"pct_featurenorm": pa.array([90.0, 2.0, None, None], pa.float32()),
                  "pct_csd": pa.array([40.0, 30.0, 10.0, None], pa.float32()),
                  "pct_knn": pa.array([0.0, 0.0, 0.0, 0.0], pa.float32())})
    a = anomaly(t, ["featurenorm", "csd"])  # knn is not a flagging score here
    np.testing.assert_allclose(a[:3], [0.6, 0.98, 0.9], rtol=1e-6)
    assert np.isnan(a[3])


def test_streaming_top_n_equals_a_full_sort(tmp_path):
    out = str(tmp_path)
    rng = np.random.default_rng(0)
    pcts = rng.uniform(0, 100, size=3000).round(1)  # many ties
    rows = [row(f"/d/{i:05d}.png", pct_by_score={"featurenorm": float(p), "csd": float(q)})
            for i, (p, q) in enumerate(zip(pcts, rng.uniform(0, 100, size=3000)))]
    rows.append(row("/d/broken.png", status="decode_error"))
    write_run(out, "n1", rows, rows_per_file=250)
    ds = run_dataset(find_run(out))
    got = most_anomalous(ds, 40, ["featurenorm", "csd"], columns=["uri"])
    full = ds.to_table(columns=["uri", "pct_featurenorm", "pct_csd", "status"]).to_pandas()
    full = full[full.status == "ok"]
    full["a"] = 1 - np.minimum(full.pct_featurenorm, full.pct_csd) / 100
    want = full.sort_values(["a", "uri"], ascending=[False, True]).uri.head(40).tolist()
    assert got.column("uri").to_pylist() == want
    assert got.column("anomaly").to_pylist() == sorted(got.column("anomaly").to_pylist(), reverse=True)


def test_a_night_with_nothing_new_reads_as_empty(tmp_path):
    out = str(tmp_path)
    write_run(out, "n1", [row("/d/a.png")], day=0)
    write_run(out, "n2", [], day=1)
    assert load_report(out, "n2").num_rows == 0
    assert most_anomalous(run_dataset(find_run(out)), 5, ["featurenorm"], columns=["uri"]).num_rows == 0
