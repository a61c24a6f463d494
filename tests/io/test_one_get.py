"""read_object sends one GET per S3 object (no HEAD) and still tells ok, too_large and missing apart."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ood_audit.errors import StorageError
from ood_audit.io.fs import S3Config
from ood_audit.io.reader import read_object
from tests.io.s3_relay import forward_all, relay


@pytest.fixture
def counting(s3_config: S3Config) -> Iterator[tuple[Any, S3Config]]:
    """A relay that forwards every request and counts them by method (:mod:`tests.io.s3_relay`)."""
    with relay(s3_config, forward_all) as (server, s3):
        yield server, s3


def test_one_get_per_object(counting: tuple[Any, S3Config], s3_bucket: str, s3_client: Any) -> None:
    server, s3 = counting
    s3_client.put_object(Bucket=s3_bucket, Key="dir/a b ü.bin", Body=b"x" * 1000)
    base = f"s3://{s3_bucket}/"
    cases = [
        ("dir/a b ü.bin", {}, None, 1000),
        ("dir/a b ü.bin", {"max_bytes": 999}, "too_large", None),
        ("dir/a b ü.bin", {"max_bytes": 1000}, None, 1000),
        ("gone.bin", {}, "missing", None),
        ("dir", {}, "missing", None),  # a prefix, not an object
    ]
    for key, kwargs, status, size in cases:
        server.methods.clear()
        data, failed = read_object(base + key, s3=s3, **kwargs)
        assert (failed.status if failed else None) == status, (key, kwargs, failed)
        assert (len(data) if data is not None else None) == size
        assert server.methods == Counter({"GET": 1}), (key, server.methods)
    _, failed = read_object(base + "dir/a b ü.bin", s3=s3, max_bytes=999)
    assert failed is not None and "1000 bytes exceeds max_bytes=999" in (failed.error or "")
    server.methods.clear()
    _, failed = read_object("s3://no-such-bucket-ood/x.bin", s3=s3)
    assert failed is not None and failed.status == "missing" and server.methods == Counter({"GET": 1})


def test_unreachable_endpoint_is_a_storage_error_not_a_row(s3_config: S3Config) -> None:
    """An endpoint that refuses connections is a failure of the store, not of the object: the scan must stop
    resumable rather than write a ``missing`` row for an object that exists."""
    s3 = dataclasses.replace(s3_config, endpoint_url="http://127.0.0.1:9", retry_s=0.5)  # the discard port
    with pytest.raises(StorageError) as e:
        read_object("s3://b/x.bin", s3=s3)
    assert e.value.kind == "unreachable" and "s3://b/x.bin" in str(e.value) and "Signature" not in str(e.value)
