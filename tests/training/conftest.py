"""Fixtures for the training tests: one local Ray for the package, and small labelled sets (local and S3)."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.datagen import labelled_images, upload, write_local

N_PER_CLASS = 40
BROKEN = "class0/broken.png"  # one unreadable file: the runs must skip, count and list it


def _files() -> dict[str, bytes]:
    files = labelled_images(N_PER_CLASS, seed=0)
    files[BROKEN] = b"this is not a png"
    return files


@pytest.fixture(scope="package")
def ray_local() -> Iterator[Any]:
    """A local Ray with more logical CPUs than cores, so two 1-CPU workers and Ray's own tasks never starve."""
    import ray

    from ood_audit.ray_setup import init_ray

    started = not ray.is_initialized()
    # Recovering from a killed worker first waits for the survivors to leave the process group (30 s by
    # default); the local workers inherit this from the Ray this fixture starts.
    os.environ.setdefault("TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S", "5")
    init_ray(num_cpus=4, object_store_memory=256 * 2**20)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="package")
def local_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/class0/*.png``, ``<root>/class1/*.png`` (stripes, easy to separate) plus one broken file."""
    return write_local(tmp_path_factory.mktemp("train-data"), _files())


@pytest.fixture(scope="module")
def s3_data(s3_client: Any) -> Iterator[tuple[str, str]]:
    """(bucket, s3://bucket/data) with the same set in SeaweedFS; the bucket is removed afterwards."""
    bucket = f"train-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    uri = upload(s3_client, bucket, "data", _files())
    yield bucket, uri
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            s3_client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3_client.delete_bucket(Bucket=bucket)
