"""End to end: a real scan writes ``content_sha256`` and the SPEC §14 ``quality_issues`` for every object."""
import hashlib

import numpy as np
import pytest

from ood_audit.calibration.bundle import open_bundle
from ood_audit.scan.run import ScanConfig, run_scan
from ood_audit.sinks.parquet import open_reports

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
                     s3=s3_config, chunk_size=8, slice_rows=4, batch_size=8, workers=2, read_threads=4)
    res = run_scan(cfg)
    blurry = open_bundle(bundle_uri).info.quality.blurry  # calibrated: the bundle's threshold, not the default
    assert blurry is not None and blurry > 0
    assert res.summary["quality_thresholds"] == {"working_size": 256, "dark": 20.0, "light": 235.0, "blurry": blurry,
                                                 "low_information": 2.0, "grayscale_tolerance": 2,
                                                 "grayscale_fraction": 0.999, "odd_aspect_ratio": 4.0, "tiny": 32}
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
