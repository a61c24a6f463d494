"""The triage fixture itself: two real nights whose rows carry what exports and reports rely on."""
import pyarrow.compute as pc
import pytest

from ood_audit import load_report
from ood_audit.bundle.files import load_bundle
from ood_audit.store.runs import find_run, list_runs, previous_run


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_nights_read_back_with_neighbours_and_sources(real_scan):
    scan = real_scan
    runs = list_runs(scan.output, s3=scan.s3)
    assert [r.run_id for r in runs] == scan.run_ids
    latest = find_run(scan.output, s3=scan.s3)
    assert latest.run_id == "night-2" and previous_run(scan.output, latest, s3=scan.s3).run_id == "night-1"
    assert latest.flag_on == ["featurenorm", "csd"]
    for run_id, uris in scan.objects.items():
        table = load_report(scan.output, run_id, s3=scan.s3)
        assert sorted(table.column("uri").to_pylist()) == sorted(uris)  # one row per listed object
    table = load_report(scan.output, None, s3=scan.s3, columns=["uri", "status", "knn_nn", "knn_nn_dist", "knn"],
                        filter=pc.field("status") == "ok")
    bundle = load_bundle(scan.bundle_uri, s3=scan.s3)
    sources = bundle.bank_sources()
    knn = bundle.info.knn
    assert knn is not None and sources.num_rows == knn.bank_size
    assert all(u.startswith(f"s3://{scan.bucket}/id/") for u in sources.column("uri").to_pylist())
    assert all(t[:2] == b"\xff\xd8" for t in sources.column("thumb").to_pylist())  # JPEG
    k = knn.k
    for r in table.to_pylist():
        assert len(r["knn_nn"]) == 3 and all(0 <= i < sources.num_rows for i in r["knn_nn"])
        assert r["knn_nn_dist"] == sorted(r["knn_nn_dist"])
        # the k-th neighbour is at least as far as the 3rd (the score is minus the k-th distance)
        assert -r["knn"] >= r["knn_nn_dist"][2] - 1e-5 if k >= 3 else True
    assert scan.script_uri in load_report(scan.output, "night-2", s3=scan.s3).column("uri").to_pylist()
