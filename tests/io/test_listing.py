"""Paginated listings (local and S3) and manifests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ood_audit.errors import EXIT_NO_BUCKET, DataError, StorageError
from ood_audit.io.fs import S3Config, read_bytes
from ood_audit.io.listing import (
    LISTING_SCHEMA,
    iter_listing_pages,
    iter_manifest_pages,
    list_objects,
    read_manifest,
)

TREE = ["a.txt", "a/b.jpg", "a/c/d.png", "a b/ü.jpg", "imgs/x.jpg", "imgs2/y.jpg", "z.jpg"]


def make_tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


def put_tree(client: Any, bucket: str, prefix: str, names: list[str]) -> None:
    for name in names:
        client.put_object(Bucket=bucket, Key=prefix + name, Body=name.encode())


def test_local_listing_order_etag_size(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    table = list_objects(str(tmp_path))
    assert table.schema == LISTING_SCHEMA
    rel = [os.path.relpath(u, tmp_path) for u in table.column("uri").to_pylist()]
    assert rel == sorted(TREE)  # the same UTF-8 byte order S3 uses
    st = os.stat(tmp_path / "a/b.jpg")
    row = rel.index("a/b.jpg")
    assert table.column("etag")[row].as_py() == f"{st.st_mtime_ns}-{st.st_size}"
    assert table.column("size").to_pylist() == [len(n.encode()) for n in sorted(TREE)]


def test_local_pages_are_bounded(tmp_path: Path) -> None:
    make_tree(tmp_path, [f"d{i % 3}/f{i:03d}.jpg" for i in range(23)])
    pages = list(iter_listing_pages(str(tmp_path), page_size=5))
    assert [p.num_rows for p in pages] == [5, 5, 5, 5, 3]
    assert all(isinstance(p, pa.Table) and p.schema == LISTING_SCHEMA for p in pages)


def test_local_missing_empty_and_single_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(iter_listing_pages(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        list(iter_listing_pages(str(tmp_path / "empty")))
    assert list(iter_listing_pages(str(tmp_path / "empty"), allow_empty=True)) == []
    make_tree(tmp_path, ["one.jpg"])
    assert list_objects(str(tmp_path / "one.jpg")).column("uri").to_pylist() == [str(tmp_path / "one.jpg")]


def test_local_symlink_loop_is_not_followed_forever(tmp_path: Path) -> None:
    make_tree(tmp_path, ["d/x.jpg"])
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    assert list_objects(str(tmp_path)).num_rows == 1


def test_s3_listing_paginates_with_etags(s3_config: S3Config, s3_bucket: str, s3_client: Any) -> None:
    names = [f"k{i:03d}.jpg" for i in range(23)]
    put_tree(s3_client, s3_bucket, "data/", names)
    pages = list(iter_listing_pages(f"s3://{s3_bucket}/data", s3=s3_config, page_size=7))
    assert [p.num_rows for p in pages] == [7, 7, 7, 2]
    table = pa.concat_tables(pages)
    assert table.column("uri").to_pylist() == [f"s3://{s3_bucket}/data/{n}" for n in names]
    assert table.column("etag").to_pylist() == [hashlib.md5(n.encode()).hexdigest() for n in names]
    assert table.column("size").to_pylist() == [len(n) for n in names]


def test_s3_prefix_is_a_directory_and_single_object(
    s3_config: S3Config, s3_bucket: str, s3_client: Any
) -> None:
    put_tree(s3_client, s3_bucket, "", TREE)
    imgs = list_objects(f"s3://{s3_bucket}/imgs", s3=s3_config).column("uri").to_pylist()
    assert imgs == [f"s3://{s3_bucket}/imgs/x.jpg"]  # never imgs2/
    whole = list_objects(f"s3://{s3_bucket}", s3=s3_config).column("uri").to_pylist()
    assert sorted(whole) == [f"s3://{s3_bucket}/{n}" for n in sorted(TREE)]  # order is the store's
    one = list_objects(f"s3://{s3_bucket}/z.jpg", s3=s3_config)
    assert one.column("uri").to_pylist() == [f"s3://{s3_bucket}/z.jpg"]
    both = list_objects([f"s3://{s3_bucket}/imgs/", f"s3://{s3_bucket}/imgs2/"], s3=s3_config)
    assert both.num_rows == 2


def test_s3_missing_and_empty_prefix(s3_config: S3Config, s3_bucket: str) -> None:
    with pytest.raises(DataError, match=f"s3://{s3_bucket}/nothing/"):
        list(iter_listing_pages(f"s3://{s3_bucket}/nothing", s3=s3_config))
    assert list(iter_listing_pages(f"s3://{s3_bucket}/nothing", s3=s3_config, allow_empty=True)) == []
    # A missing bucket is a failure of the store with its documented status (7), not bad input (2).
    with pytest.raises(StorageError) as e:
        list(iter_listing_pages("s3://no-such-bucket-ood/x", s3=s3_config, allow_empty=True))
    assert e.value.kind == "no_bucket" and e.value.exit_code == EXIT_NO_BUCKET
    assert "s3://no-such-bucket-ood" in str(e.value) and s3_config.endpoint in str(e.value)


def test_s3_special_keys_listed_and_read_back(s3_config: S3Config, s3_bucket: str, s3_client: Any) -> None:
    keys = ["in/a b c.jpg", "in/ünï/猫 🐱.png", "in/<script>alert('x')</script>.jpg", "in/100%25&x=y+z.jpg"]
    put_tree(s3_client, s3_bucket, "", keys)
    uris = list_objects(f"s3://{s3_bucket}/in/", s3=s3_config).column("uri").to_pylist()
    assert sorted(uris) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)
    for uri in uris:
        key = uri[len(f"s3://{s3_bucket}/"):]
        assert read_bytes(uri, s3=s3_config) == key.encode()


def test_csv_manifest_relative_and_absolute(tmp_path: Path) -> None:
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("uri,label,extra\nimgs/a.jpg,cat,1\n/abs/b.jpg,dog,2\ns3://bk/c d.jpg,cat,3\n00123,7,4\n")
    table = read_manifest(str(manifest))
    assert table.column_names == ["uri", "label"]
    assert table.column("uri").to_pylist() == [
        str(tmp_path / "lists/imgs/a.jpg"),
        "/abs/b.jpg",
        "s3://bk/c d.jpg",
        str(tmp_path / "lists/00123"),  # stays a string key, never an integer
    ]


def test_parquet_manifest_pages(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    uris = [f"/data/{i}.jpg" for i in range(10)]
    pq.write_table(pa.table({"uri": uris, "label": list(range(10)), "etag": ["e"] * 10}), path)
    pages = list(iter_manifest_pages(str(path), page_size=4))
    assert [p.num_rows for p in pages] == [4, 4, 2]
    assert pa.concat_tables(pages).column("uri").to_pylist() == uris
    assert read_manifest(str(path)).column_names == ["uri", "label", "etag"]


def test_manifest_errors(tmp_path: Path) -> None:
    (tmp_path / "nouri.csv").write_text("path,label\na.jpg,1\n")
    with pytest.raises(DataError, match="no 'uri' column"):
        read_manifest(str(tmp_path / "nouri.csv"))
    (tmp_path / "blank.csv").write_text("uri,label\na.jpg,1\n,2\n")
    with pytest.raises(DataError, match="column 'uri' is empty or null at row 1"):
        read_manifest(str(tmp_path / "blank.csv"))
    (tmp_path / "header.csv").write_text("uri,label\n")
    with pytest.raises(DataError, match="no rows"):
        read_manifest(str(tmp_path / "header.csv"))
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(str(tmp_path / "gone.parquet"))
    with pytest.raises(DataError, match="must end in"):
        read_manifest(str(tmp_path / "m.json"))


def test_s3_manifest_relative_keys(s3_config: S3Config, s3_bucket: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="sets/m.csv", Body=b"uri\nimgs/a.jpg\ns3://other/b.jpg\n")
    table = read_manifest(f"s3://{s3_bucket}/sets/m.csv", s3=s3_config)
    assert table.column("uri").to_pylist() == [f"s3://{s3_bucket}/sets/imgs/a.jpg", "s3://other/b.jpg"]
