"""read_object against a failing store (real SeaweedFS, crashed and resumed): an outage inside the retry
window costs a pause, one past it, revoked keys or a 5xx are a one-line StorageError, never a ``missing``
row for an object that exists, and no message carries the presigned URL."""
from __future__ import annotations

import threading
import time

import pytest

from ood_audit.embedded.s3 import EmbeddedS3
from ood_audit.errors import StorageError
from ood_audit.io.fs import S3Config
from ood_audit.io.reader import read_object

BODY = b"\x89PNG not really, but bytes" * 100
URI = "s3://reader/obj/a.png"


@pytest.fixture
def server(private_s3: EmbeddedS3) -> EmbeddedS3:
    """This test's own SeaweedFS (it is crashed and resumed), holding one object."""
    client = private_s3.client()
    client.create_bucket(Bucket="reader")
    client.put_object(Bucket="reader", Key="obj/a.png", Body=BODY)
    return private_s3


def _s3(server: EmbeddedS3, retry_s: float, **keys: str) -> S3Config:
    return S3Config(server.endpoint_url, access_key=keys.get("access_key", server.access_key),
                    secret_key=keys.get("secret_key", server.secret_key), retry_s=retry_s)


def _one_line_without_signature(err: StorageError) -> None:
    text = str(err)
    assert "\n" not in text and URI in text
    assert "Signature" not in text and "X-Amz" not in text and "?" not in text


@pytest.mark.timeout(120)
def test_an_outage_inside_the_window_is_a_pause(server):
    s3 = _s3(server, retry_s=40)
    assert read_object(URI, s3=s3) == (BODY, None)
    server.crash()
    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(result=read_object(URI, s3=s3)), daemon=True)
    t0 = time.monotonic()
    reader.start()
    time.sleep(3)
    assert reader.is_alive(), f"the read gave up while the server was down: {got}"
    server.resume()
    reader.join(60)
    assert got["result"] == (BODY, None)
    assert time.monotonic() - t0 >= 3


@pytest.mark.timeout(120)
def test_an_outage_past_the_window_is_a_storage_error_not_a_missing_row(server):
    s3 = _s3(server, retry_s=1)
    server.crash()
    with pytest.raises(StorageError) as e:
        read_object(URI, s3=s3)
    assert e.value.kind == "unreachable" and server.endpoint_url.split("//")[1] in str(e.value)
    _one_line_without_signature(e.value)


@pytest.mark.timeout(120)
def test_revoked_keys_are_a_credentials_error(server):
    old = _s3(server, retry_s=2)
    server.crash()
    server.resume(access_key="rotatedkey01", secret_key="rotatedsecret01")
    with pytest.raises(StorageError) as e:
        read_object(URI, s3=old)
    assert e.value.kind == "credentials"
    _one_line_without_signature(e.value)
    # the new keys work once the restarted server answers (it may give 5xx while it warms up: retried)
    new = _s3(server, retry_s=30, access_key="rotatedkey01", secret_key="rotatedsecret01")
    assert read_object(URI, s3=new) == (BODY, None)


@pytest.mark.timeout(60)
def test_a_deleted_object_is_still_a_missing_row(server):
    data, res = read_object("s3://reader/obj/gone.png", s3=_s3(server, retry_s=2))
    assert data is None and res.status == "missing" and "does not exist" in res.error
