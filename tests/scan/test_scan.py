"""End-to-end scans on real SeaweedFS and a local Ray: hostile input, vanished objects, incremental runs,
resuming a run whose attempt died half-way. Every test counts rows exactly."""
import json
import logging

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from ood_audit.bundle.files import load_bundle
from ood_audit.cli import main
from ood_audit.io.decode import Preprocess, decode_image
from ood_audit.io.fs import read_bytes
from ood_audit.io.listing import iter_listing_pages
from ood_audit.scan import ScanConfig, run_scan
from ood_audit.bundle.scorer import scorer_from_bundle
from ood_audit.store.records import parse_summary
from ood_audit.store.schema import list_parts, open_reports, partition_uri

from tests.datagen import labelled_images, upload
from tests.scan.hostile import MAX_BYTES, hostile_objects

# One scoring actor: each is a process that imports torch.
SMALL = {"chunk_size": 8, "slice_rows": 4, "batch_size": 8, "workers": 1, "read_threads": 4}


def _report(output, s3, run_id=None):
    table = open_reports(output, s3=s3).to_table()
    if run_id:
        table = table.filter(pc.field("run_id") == run_id)
    return table


def _assert_exactly_once(table, uris):
    got = table.column("uri").to_pylist()
    assert len(got) == len(set(got)), "duplicate rows"
    assert sorted(got) == sorted(uris)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hostile_inputs_one_row_each_and_good_scores_unaffected(ray_local, bundle_uri, s3_client, s3_bucket,
                                                                 s3_config, s3_env):
    bad = hostile_objects()
    upload(s3_client, s3_bucket, "in", {k: data for k, (data, _) in bad.items()})
    upload(s3_client, s3_bucket, "in/good", labelled_images(6, seed=7))
    expected = {f"s3://{s3_bucket}/in/{k}": status for k, (_, status) in bad.items()}
    expected.update({f"s3://{s3_bucket}/in/good/{k}": "ok" for k in labelled_images(6, seed=7)})
    output = f"s3://{s3_bucket}/audit"
    rc = main(["scan", "--bundle", bundle_uri, "--input", f"s3://{s3_bucket}/in", "--output", output,
               "--run-id", "hostile", "--max-bytes", str(MAX_BYTES), "--chunk-size", "8", "--batch-size", "8",
               "--workers", "1", "--read-threads", "4", "--s3-endpoint", s3_config.endpoint_url])
    assert rc == 0
    table = _report(output, s3_config)
    _assert_exactly_once(table, list(expected))
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert {u: r["status"] for u, r in rows.items()} == expected
    assert rows[f"s3://{s3_bucket}/in/bad/bomb.png"]["width"] == 12_000  # refused from the header alone
    assert "max_bytes" in rows[f"s3://{s3_bucket}/in/bad/big.png"]["error"]
    assert rows[f"s3://{s3_bucket}/in/odd/one-pixel.png"]["width"] == 1
    summary = parse_summary(json.loads(read_bytes(f"{output}/runs/hostile/summary.json", s3=s3_config)), "hostile")
    assert summary.complete and summary.objects == len(expected) == summary.rows_in_files
    assert summary.counts["ok"] == sum(s == "ok" for s in expected.values())
    assert summary.chunks.total == -(-len(expected) // 8)

    # The good images score exactly as in-process with the same Scorer on the same bytes.
    bundle = load_bundle(bundle_uri)
    scorer = scorer_from_bundle(bundle)
    pre = Preprocess.from_dict(dict(bundle.info.preprocess))
    ok = sorted(u for u, s in expected.items() if s == "ok")
    pixels = np.stack([decode_image(read_bytes(u, s3=s3_config), size=pre).array for u in ok])
    ref = scorer(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    for name in scorer.score_names:
        got = np.array([rows[u][name] for u in ok])
        np.testing.assert_allclose(got, ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert [rows[u]["pred_class"] for u in ok] == ref["pred_class"].tolist()
    assert [rows[u]["csd_view"] for u in ok] == ref["csd_view"].tolist()
    for u in expected:
        assert (rows[u]["flagged"] is None) == (expected[u] != "ok")
        assert (rows[u]["error"] is None) == (expected[u] == "ok"), rows[u]["error"]


@pytest.mark.timeout(180)
def test_object_deleted_after_listing_is_missing(ray_local, bundle_uri, s3_client, s3_bucket, s3_config, tmp_path):
    files = labelled_images(5, seed=3)
    prefix = upload(s3_client, s3_bucket, "imgs", files)
    pages = list(iter_listing_pages(prefix, s3=s3_config))  # listed ...
    s3_client.delete_object(Bucket=s3_bucket, Key="imgs/class1/0002.png")  # ... then deleted before reading
    cfg = ScanConfig(bundle=bundle_uri, output=str(tmp_path / "out"), run_id="gone", s3=s3_config, **SMALL)
    res = run_scan(cfg, listing=pages)
    table = _report(cfg.output, None)
    _assert_exactly_once(table, [f"{prefix}/{k}" for k in files])
    status = dict(zip(table.column("uri").to_pylist(), table.column("status").to_pylist()))
    assert status.pop(f"{prefix}/class1/0002.png") == "missing"
    assert set(status.values()) == {"ok"}
    assert res.summary.counts["missing"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_incremental_scans_only_new_and_changed_objects(ray_local, bundle_uri, s3_client, s3_bucket, s3_config,
                                                        tmp_path, caplog):
    files = labelled_images(8, seed=4)
    prefix = upload(s3_client, s3_bucket, "imgs", files)
    s3_client.put_object(Bucket=s3_bucket, Key="imgs/broken.jpg", Body=b"\xff\xd8\xff not really")
    out = str(tmp_path / "out")

    def scan(run_id):
        return run_scan(ScanConfig(bundle=bundle_uri, output=out, inputs=(prefix,), run_id=run_id, incremental=True,
                                   s3=s3_config, **SMALL)).summary

    with caplog.at_level(logging.INFO, logger="ood_audit.progress"):
        first = scan("night1")
    assert first.objects == 17 and first.listing.skipped_done == 0
    # the progress line at the end: done / total, and the statuses as the summary counts them
    (last,) = [r.getMessage() for r in caplog.records if r.name == "ood_audit.progress"][-1:]
    errors = ", ".join(f"{s} {n}" for s, n in first.counts.items() if s != "ok" and n)
    assert last.startswith("scan night1: 17/17 objects (100%), ") and "ETA 0:00:00" in last, last
    assert last.endswith(f"; ok {first.counts['ok']}, flagged {first.flagged}, {errors}"), last
    second = scan("night2")  # nothing changed
    assert second.objects == 0 and second.listing.skipped_done == 17 and second.complete
    new = labelled_images(9, seed=9)
    upload(s3_client, s3_bucket, "imgs", {"class0/new-a.png": new["class0/0000.png"],
                                         "class1/new-b.png": new["class1/0000.png"]})
    upload(s3_client, s3_bucket, "imgs", {"class0/0003.png": new["class0/0005.png"]})  # same key, new content
    third = scan("night3")
    assert third.objects == 3 and third.listing.skipped_done == 16
    rows = _report(out, None, "night3")
    assert sorted(rows.column("uri").to_pylist()) == sorted(
        f"{prefix}/{k}" for k in ("class0/new-a.png", "class1/new-b.png", "class0/0003.png"))
    assert _report(out, None).num_rows == 17 + 3


@pytest.mark.timeout(180)
def test_rerun_with_same_run_id_finishes_without_duplicates(ray_local, bundle_uri, s3_client, s3_bucket, s3_config):
    files = labelled_images(10, seed=5)
    prefix = upload(s3_client, s3_bucket, "imgs", files)
    uris = [f"{prefix}/{k}" for k in files]
    output = f"s3://{s3_bucket}/audit"
    cfg = ScanConfig(bundle=bundle_uri, output=output, inputs=(prefix,), run_id="again", s3=s3_config, **SMALL)
    first = run_scan(cfg)
    assert (first.summary.chunks.total, first.summary.chunks.committed) == (3, 3)
    # Make it look like an attempt died after writing some files: chunk 2 lost its marker (its files stay),
    # chunk 1 lost a part file under its marker, and chunk 0 got a stray copy of its file, as a late write
    # from a dead task would leave.
    day = first.summary.run_date
    names = list_parts(partition_uri(output, day), s3=s3_config, run_id="again")
    s3_client.delete_object(Bucket=s3_bucket, Key="audit/runs/again/chunks/c000002.json")
    c1 = next(n for n in names if ".c000001." in n)
    s3_client.delete_object(Bucket=s3_bucket, Key=f"audit/reports/run_date={day}/{c1}")
    key0 = f"audit/reports/run_date={day}/" + next(n for n in names if ".c000000." in n)
    s3_client.copy_object(Bucket=s3_bucket, Key=key0.replace(".a01.", ".a07."),
                          CopySource={"Bucket": s3_bucket, "Key": key0})
    second = run_scan(cfg)
    assert second.summary.attempts == 2 and second.summary.complete
    assert [e.rows for e in second.summary.executions] == [8 + 4]  # only chunks 1 and 2 again
    table = _report(output, s3_config)
    _assert_exactly_once(table, uris)
    assert second.summary.rows_in_files == len(uris) == second.summary.rows_committed
    third = run_scan(cfg)  # a finished run: nothing to do
    assert third.summary.executions == [] and _report(output, s3_config).num_rows == len(uris)


def test_images_with_non_finite_model_output_fail_alone(bundle_uri):
    """A batch whose scores are not finite for some images: those rows fail, the others keep their scores."""
    from ood_audit.errors import DataError
    from ood_audit.scan.rows import CHUNK, PIXELS, READ_S, SEQ
    from ood_audit.scan.score import ScoreActor

    actor = ScoreActor(bundle_uri, "nan", device="cpu")
    inner = actor.scorer

    class BrightIsNaN:  # stands in for weights that overflow on some inputs
        score_names = inner.score_names

        def __call__(self, x):
            if (x.float().mean(dim=(1, 2, 3)) > 250).any():
                raise DataError("non-finite values (NaN/inf) in logits for 1 image(s)")
            return inner(x)

    actor.scorer = BrightIsNaN()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 200, (4, 32, 32, 3), dtype=np.uint8)
    pixels[2] = 255
    batch = {"uri": np.array([f"u{i}" for i in range(4)], dtype=object), "etag": np.array(["e"] * 4, dtype=object),
             "size": np.ones(4, np.int64), "status": np.array(["ok", "ok", "ok", "missing"], dtype=object),
             "error": np.array([None, None, None, "gone"], dtype=object), "width": np.full(4, 32, np.int32),
             "height": np.full(4, 32, np.int32), CHUNK: np.zeros(4, np.int32), SEQ: np.arange(4, dtype=np.int32),
             READ_S: np.zeros(4, np.float32), PIXELS: pixels}
    rows = actor(batch).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "decode_error", "missing"]
    assert "model output not finite" in rows[2]["error"] and rows[2]["featurenorm"] is None
    ref = inner(torch.from_numpy(pixels[:2]).permute(0, 3, 1, 2))
    np.testing.assert_allclose([rows[0]["featurenorm"], rows[1]["featurenorm"]], ref["featurenorm"], rtol=1e-5)


@pytest.mark.timeout(180)
def test_manifest_without_etags_is_scanned_every_time(ray_local, bundle_uri, s3_client, s3_bucket, s3_config):
    files = labelled_images(2, seed=6)
    prefix = upload(s3_client, s3_bucket, "imgs", files)
    uris = [f"{prefix}/{k}" for k in files] + [f"{prefix}/never-uploaded.png"]
    s3_client.put_object(Bucket=s3_bucket, Key="lists/m.csv", Body=("uri\n" + "\n".join(uris) + "\n").encode())
    output = f"s3://{s3_bucket}/audit"

    def scan(run_id):
        return run_scan(ScanConfig(bundle=bundle_uri, output=output, manifest=f"s3://{s3_bucket}/lists/m.csv",
                                   run_id=run_id, incremental=True, s3=s3_config, **SMALL)).summary

    first = scan("m1")
    assert first.objects == 5 and first.counts["ok"] == 4 and first.counts["missing"] == 1
    second = scan("m2")  # no etags in the manifest: nothing can be proven unchanged
    assert second.objects == 5 and second.listing.skipped_done == 0
    table = _report(output, s3_config, "m2")
    _assert_exactly_once(table, uris)
    assert table.column("etag").null_count == 5
