"""Fixtures for the training tests: small labelled sets (local and S3); the local Ray is the session's (``ray_local``)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.datagen import labelled_images, upload, write_local
from tests.fixtures.s3_server import bucket_name, delete_bucket

N_PER_CLASS = 40
BROKEN = "class0/broken.png"  # one unreadable file: the runs must skip, count and list it


def _files() -> dict[str, bytes]:
    files = labelled_images(N_PER_CLASS, seed=0)
    files[BROKEN] = b"this is not a png"
    return files


@pytest.fixture(scope="package")
def local_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/class0/*.png``, ``<root>/class1/*.png`` (stripes, easy to separate) plus one broken file."""
    return write_local(tmp_path_factory.mktemp("train-data"), _files())


@pytest.fixture(scope="module")
def s3_data(s3_client: Any) -> Iterator[tuple[str, str]]:
    """(bucket, s3://bucket/data) with the same set in SeaweedFS; the bucket is removed afterwards."""
    bucket = bucket_name("train")
    s3_client.create_bucket(Bucket=bucket)
    uri = upload(s3_client, bucket, "data", _files())
    yield bucket, uri
    delete_bucket(s3_client, bucket)
