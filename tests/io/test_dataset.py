"""Labelled ID datasets (class folders, manifests), unlabelled OOD folders, in-memory decoding."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ood_audit.errors import DataError
from ood_audit.io.dataset import (
    decode_dataset,
    discover_class_folders,
    labelled_from_manifest,
    list_images,
    load_labelled,
)
from ood_audit.io.fs import S3Config


def png(value: int, size: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


CLASS_TREE = {
    "dog/b.png": png(20),
    "cat/a.png": png(10),
    "cat/nested/c.JPG": png(30),  # deeper files belong to their class folder; extension case ignored
    "cat/notes.txt": b"not an image",
    "bird/x.png": png(40),
    "README.md": b"# dataset",  # non-image at the top is skipped, not a layout error
}


def test_class_folders_local(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_files(tmp_path, CLASS_TREE)
    with caplog.at_level(logging.WARNING):
        ds = discover_class_folders(str(tmp_path))
    assert ds.class_names == ("bird", "cat", "dog")
    rel = [u[len(str(tmp_path)) + 1:] for u in ds.uris()]
    assert list(zip(rel, ds.labels().tolist(), strict=True)) == [
        ("bird/x.png", 0), ("cat/a.png", 1), ("cat/nested/c.JPG", 1), ("dog/b.png", 2)
    ]
    assert ds.skipped == 2 and len(ds) == 4 and ds.num_classes == 3
    assert "skipped 2 file(s)" in caplog.text
    assert ds.table.schema.field("label").type == pa.int32()


def test_class_folders_s3(s3_config: S3Config, s3_bucket: str, s3_client: Any) -> None:
    for name, data in CLASS_TREE.items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"train/{name}", Body=data)
    ds = load_labelled(f"s3://{s3_bucket}/train", s3=s3_config)
    assert ds.class_names == ("bird", "cat", "dog")
    assert sorted(zip(ds.uris(), ds.labels().tolist(), strict=True)) == [
        (f"s3://{s3_bucket}/train/bird/x.png", 0),
        (f"s3://{s3_bucket}/train/cat/a.png", 1),
        (f"s3://{s3_bucket}/train/cat/nested/c.JPG", 1),
        (f"s3://{s3_bucket}/train/dog/b.png", 2),
    ]
    decoded = decode_dataset(ds.uris(), size=4, labels=ds.labels(), s3=s3_config)
    assert decoded.images.shape == (4, 4, 4, 3) and decoded.skipped == 0


def test_bad_layouts(tmp_path: Path) -> None:
    write_files(tmp_path / "flat", {"a.png": png(1), "b.png": png(2)})
    with pytest.raises(DataError, match="directly under .*flat.*one folder per class"):
        discover_class_folders(str(tmp_path / "flat"))
    write_files(tmp_path / "one", {"only/a.png": png(1), "only/b.png": png(2)})
    with pytest.raises(DataError, match="only the class folder 'only'"):
        discover_class_folders(str(tmp_path / "one"))
    write_files(tmp_path / "mixed", {"a.png": png(1), "c1/a.png": png(1), "c2/a.png": png(2)})
    with pytest.raises(DataError, match="directly under"):
        discover_class_folders(str(tmp_path / "mixed"))
    write_files(tmp_path / "noimg", {"c1/a.txt": b"x", "c2/b.txt": b"y"})
    with pytest.raises(DataError, match="no images"):
        discover_class_folders(str(tmp_path / "noimg"))
    with pytest.raises(DataError, match="does not exist"):
        discover_class_folders(str(tmp_path / "missing"))


def test_manifest_int_and_string_labels(tmp_path: Path) -> None:
    (tmp_path / "ints.csv").write_text("uri,label\na.png,1\nb.png,0\nc.txt,1\nd.jpg,2\n")
    ds = labelled_from_manifest(str(tmp_path / "ints.csv"))
    assert ds.class_names == ("0", "1", "2") and ds.labels().tolist() == [1, 0, 2] and ds.skipped == 1
    named = labelled_from_manifest(str(tmp_path / "ints.csv"), class_names=["x", "y", "z"])
    assert named.class_names == ("x", "y", "z")

    pq.write_table(pa.table({"uri": ["a.png", "b.png", "c.png"], "label": ["dog", "cat", "dog"]}),
                   tmp_path / "names.parquet")
    ds = load_labelled(str(tmp_path / "names.parquet"))
    assert ds.class_names == ("cat", "dog") and ds.labels().tolist() == [1, 0, 1]
    assert ds.uris() == [str(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    with pytest.raises(DataError, match="unknown class names"):
        labelled_from_manifest(str(tmp_path / "names.parquet"), class_names=["cat"])


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0.0, 1.0, float("nan")], "column 'label' has type double with 1 null"),
        ([0.5, 1.5, 2.5], "column 'label' has type double"),
        ([True, False, True], "column 'label' has type bool"),
        (["cat", None, "dog"], "column 'label' has type string with 1 null"),
        ([0, -1, 1], "negative class index -1"),
        ([1, 1, 1], "fewer than two classes"),
    ],
)
def test_manifest_bad_label_column(tmp_path: Path, labels: list[Any], match: str) -> None:
    path = tmp_path / "m.parquet"
    table = pa.table({"uri": ["a.png", "b.png", "c.png"], "label": labels})
    if table.column("label").type == pa.float64():
        table = table.set_column(1, "label", pa.array(labels, pa.float64(), from_pandas=True))
    pq.write_table(table, path)
    with pytest.raises(DataError, match=match):
        labelled_from_manifest(str(path))


def test_manifest_without_label_column(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("uri\na.png\n")
    with pytest.raises(DataError, match="no 'label' column"):
        labelled_from_manifest(str(tmp_path / "m.csv"))


def test_list_images_flat_and_nested(tmp_path: Path) -> None:
    write_files(tmp_path / "ood", {"x.png": png(1), "sub/y.png": png(2), "z.txt": b"t", "sub/w.gif": b""})
    images = list_images(str(tmp_path / "ood"))
    assert [u[len(str(tmp_path / "ood")) + 1:] for u in images.uris()] == ["sub/w.gif", "sub/y.png", "x.png"]
    assert images.skipped == 1 and set(images.table.column_names) == {"uri", "etag", "size"}
    write_files(tmp_path / "textonly", {"a.txt": b"t"})
    with pytest.raises(DataError, match="no images under"):
        list_images(str(tmp_path / "textonly"))
    assert len(list_images(str(tmp_path / "textonly"), allow_empty=True)) == 0


def test_decode_dataset_skips_and_counts_failures(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_files(tmp_path, {"a.png": png(10), "bad.png": b"\x89PNG\r\n\x1a\ngarbage", "c.png": png(30)})
    uris = [str(tmp_path / n) for n in ("a.png", "bad.png", "gone.png", "c.png")]
    with caplog.at_level(logging.WARNING):
        out = decode_dataset(uris, size=3, labels=[0, 1, 1, 2], threads=2)
    assert out.images.shape == (2, 3, 3, 3) and out.images.dtype == np.uint8
    assert out.uris == [uris[0], uris[3]] and out.labels.tolist() == [0, 2]  # type: ignore[union-attr]
    assert out.skipped == 2
    assert [f[1] for f in out.failures] == ["decode_error", "missing"]
    assert "skipped 2 of 4" in caplog.text
