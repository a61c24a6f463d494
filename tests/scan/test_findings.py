"""End to end: a real scan writes ``content_sha256`` and the SPEC §14 ``quality_issues`` for every object."""
import hashlib

import numpy as np
import pytest

from ood_audit.bundle.files import open_bundle
from ood_audit.scan import ScanConfig, run_scan
from ood_audit.store.schema import open_reports

from tests.datagen import labelled_images, png_bytes, upload


@pytest.mark.timeout(180)
def test_scan_reports_digests_and_quality_issues(ray_local, bundle_uri, s3_client, s3_bucket, s3_config, tmp_path):
    files = labelled_images(3, seed=5)
    first = next(iter(files))
    files["copy/dup.png"] = files[first]
    files["black/0.png"] = png_bytes(np.zeros((40, 40, 3), np.uint8))
    files["broken/0.png"] = b"\x89PNG garbage"
    prefix = upload(s3_client, s3_bucket, "imgs", files)
    cfg = ScanConfig(bundle=bundle_uri, output=str(tmp_path / "out"), inputs=(prefix,), run_id="findings",
                     s3=s3_config, chunk_size=8, slice_rows=4, batch_size=8, workers=1, read_threads=4)
    res = run_scan(cfg)
    quality = open_bundle(bundle_uri).info.quality  # calibrated: the bundle's thresholds, not the defaults
    blurry, grey_share = quality.blurry, quality.grayscale_share
    assert blurry is not None and blurry > 0
    assert grey_share is not None and grey_share < 0.5  # colour stripes: grayscale is reported (SPEC §14)
    assert res.summary.quality_thresholds == {"working_size": 256, "dark": 20.0, "light": 235.0, "blurry": blurry,
                                                 "low_information": 2.0, "grayscale_tolerance": 2,
                                                 "grayscale_fraction": 0.999, "grayscale_id_share": grey_share,
                                                 "odd_aspect_ratio": 4.0, "tiny": 32}
    rows = {r["uri"]: r for r in open_reports(cfg.output).to_table().to_pylist()}
    assert len(rows) == len(files)
    for key, data in files.items():
        assert rows[f"{prefix}/{key}"]["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert rows[f"{prefix}/copy/dup.png"]["content_sha256"] == rows[f"{prefix}/{first}"]["content_sha256"]
    # flat, so its Laplacian variance (0) is under the calibrated threshold: blurry too
    assert rows[f"{prefix}/black/0.png"]["quality_issues"] == ["dark", "blurry", "low_information", "grayscale"]
    assert rows[f"{prefix}/broken/0.png"]["status"] != "ok"
    assert rows[f"{prefix}/broken/0.png"]["quality_issues"] is None
    assert all(isinstance(rows[f"{prefix}/{k}"]["quality_issues"], list) for k in files if not k.startswith("broken"))


@pytest.mark.timeout(240)
def test_duplicate_of_within_a_run_and_across_nights(ray_local, bundle_uri, s3_client, s3_bucket, s3_config, tmp_path):
    """Copies name the first URI of their bytes: in this run by plan (listing) order, else an earlier night's."""
    files = labelled_images(4, seed=9)
    originals = sorted(files)
    files["a-copy/x.png"] = files[originals[-1]]  # sorts before every original: it is the first of its bytes
    files["zz/copy1.png"] = files["zz/copy2.png"] = files[originals[0]]
    prefix = upload(s3_client, s3_bucket, "dups", files)
    out = str(tmp_path / "out")
    cfg = ScanConfig(bundle=bundle_uri, output=out, inputs=(prefix,), run_id="night1", s3=s3_config, chunk_size=3,
                     slice_rows=2, batch_size=4, workers=1, read_threads=4)
    res = run_scan(cfg)
    first_of = {}  # expected, from the bytes and S3's lexicographic listing order
    for key in sorted(files):
        first_of.setdefault(hashlib.sha256(files[key]).hexdigest(), f"{prefix}/{key}")
    rows = {r["uri"]: r for r in open_reports(out).to_table().to_pylist()}
    for key, data in files.items():
        first = first_of[hashlib.sha256(data).hexdigest()]
        assert rows[f"{prefix}/{key}"]["duplicate_of"] == (None if first == f"{prefix}/{key}" else first), key
    assert rows[f"{prefix}/{originals[-1]}"]["duplicate_of"] == f"{prefix}/a-copy/x.png"
    assert sum(r["duplicate_of"] is not None for r in rows.values()) == 3
    assert res.summary.duplicates.rows == 3 and res.summary.duplicates.within_run == 3

    night2 = upload(s3_client, s3_bucket, "dups2", {"reupload.png": files[originals[1]],
                                                   "new.png": png_bytes(np.full((40, 40, 3), 90, np.uint8))})
    res2 = run_scan(ScanConfig(bundle=bundle_uri, output=out, inputs=(night2,), run_id="night2", s3=s3_config,
                               chunk_size=3, slice_rows=2, batch_size=4, workers=1, read_threads=4))
    rows2 = {r["uri"]: r["duplicate_of"] for r in open_reports(out).to_table().to_pylist() if r["run_id"] == "night2"}
    assert rows2 == {f"{night2}/reupload.png": f"{prefix}/{originals[1]}", f"{night2}/new.png": None}
    assert res2.summary.duplicates.earlier_runs == 1
