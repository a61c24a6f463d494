"""load_image: fetch + decode with a status for every object, including ones that vanished."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from ood_audit.io.fs import S3Config
from ood_audit.io.reader import load_image, load_images, read_object


def jpeg(w: int = 20, h: int = 10) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def test_s3_statuses(s3_config: S3Config, s3_bucket: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="ok/a <b> ü.jpg", Body=jpeg())
    s3_client.put_object(Bucket=s3_bucket, Key="big.jpg", Body=jpeg(200, 200))
    s3_client.put_object(Bucket=s3_bucket, Key="note.txt", Body=b"just some text\n")
    base = f"s3://{s3_bucket}/"
    ok = load_image(base + "ok/a <b> ü.jpg", size=8, s3=s3_config)
    assert ok.status == "ok" and ok.array is not None and ok.array.shape == (8, 8, 3)
    assert (ok.width, ok.height) == (20, 10)
    assert load_image(base + "gone.jpg", s3=s3_config).status == "missing"
    assert load_image(base + "ok", s3=s3_config).status == "missing"  # a prefix, not an object
    assert load_image(base + "big.jpg", s3=s3_config, max_bytes=100).status == "too_large"
    assert load_image(base + "note.txt", s3=s3_config).status == "unsupported"
    assert load_image("s3://no-such-bucket-ood/x.jpg", s3=s3_config).status == "missing"
    results = load_images([base + "gone.jpg", base + "ok/a <b> ü.jpg"], size=4, s3=s3_config, threads=2)
    assert [r.status for r in results] == ["missing", "ok"]


def test_local_statuses(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg())
    assert load_image(str(tmp_path / "a.jpg"), size=4).status == "ok"
    assert load_image(str(tmp_path / "nope.jpg")).status == "missing"
    assert load_image(str(tmp_path)).status == "missing"
    assert load_image("ftp://elsewhere/x.jpg").status == "missing"  # bad URI: still a row, not a crash
    data, failed = read_object(str(tmp_path / "a.jpg"), max_bytes=10)
    assert data is None and failed is not None and failed.status == "too_large"
