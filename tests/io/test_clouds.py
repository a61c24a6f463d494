"""GCS and Azure through the same io functions as S3, on real emulators (fake-gcs-server, Azurite): listing,
one-object reads under the size cap, atomic writes, and each storage failure as its kind and exit status."""
from __future__ import annotations

import time

import pytest

from ood_audit.errors import EXIT_CREDENTIALS, EXIT_DENIED, EXIT_NO_BUCKET, EXIT_UNREACHABLE, StorageError
from ood_audit.io.clouds import AzureConfig, GcsConfig
from ood_audit.io.fs import S3Config, check_writable, exists, read_bytes, write_bytes
from ood_audit.io.listing import list_objects
from ood_audit.io.reader import read_object
from ood_audit.io.uri import join_uri, parse_uri

from tests.fixtures.clouds import AZURITE_ACCOUNT, AZURITE_KEY


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once the socket is closed


def test_listing_reads_and_writes(cloud):
    cloud.put("imgs/b/2.png", b"two")
    cloud.put("imgs/a/1.png", b"one")
    cloud.put("imgs/a/big.png", b"x" * 5000)
    cloud.put("imgs2/not-under-the-prefix.png", b"no")
    table = list_objects(cloud.uri("imgs"), s3=cloud.config)
    rows = table.to_pylist()
    assert [r["uri"] for r in rows] == [cloud.uri(k) for k in ("imgs/a/1.png", "imgs/a/big.png", "imgs/b/2.png")]
    assert [r["size"] for r in rows] == [3, 5000, 3]
    # a URI naming one object lists just it
    assert list_objects(cloud.uri("imgs/b/2.png"), s3=cloud.config).column("uri").to_pylist() == [
        cloud.uri("imgs/b/2.png")]
    # the version stamp changes when the object is rewritten (Azure's clock has whole seconds)
    before = rows[0]["etag"]
    time.sleep(1.1)
    cloud.put("imgs/a/1.png", b"one, again")
    assert list_objects(cloud.uri("imgs/a/1.png"), s3=cloud.config).column("etag")[0].as_py() != before
    # one-object reads: the body, "too_large" past the cap without holding the object, "missing"
    assert read_object(cloud.uri("imgs/b/2.png"), s3=cloud.config) == (b"two", None)
    data, result = read_object(cloud.uri("imgs/a/big.png"), s3=cloud.config, max_bytes=100)
    assert data is None and result.status == "too_large"
    data, result = read_object(cloud.uri("imgs/a/none.png"), s3=cloud.config)
    assert data is None and result.status == "missing"
    # whole-object writes and reads, and the output-root probe
    target = join_uri(cloud.uri("out"), "runs", "r1", "summary.json")
    assert parse_uri(target).key == "out/runs/r1/summary.json"
    write_bytes(target, b"{}", s3=cloud.config)
    assert read_bytes(target, s3=cloud.config) == b"{}" and exists(target, s3=cloud.config)
    check_writable(cloud.uri("out"), s3=cloud.config)
    with pytest.raises(FileNotFoundError):
        read_bytes(cloud.uri("out/none.json"), s3=cloud.config)


def test_missing_bucket_is_exit_7_in_one_line(cloud):
    missing = f"{cloud.scheme}://no-such-{cloud.bucket}"
    for attempt in (lambda: list_objects(f"{missing}/imgs", s3=cloud.config),
                    lambda: check_writable(f"{missing}/out", s3=cloud.config)):
        with pytest.raises(StorageError) as err:
            attempt()
        assert err.value.exit_code == EXIT_NO_BUCKET and "\n" not in str(err.value)
        assert f"no-such-{cloud.bucket}" in str(err.value) and cloud.url in str(err.value)


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_unreachable_endpoint_is_exit_3_within_the_window(scheme):
    url = f"http://127.0.0.1:{_closed_port()}"
    config = (S3Config(gcs=GcsConfig(url), retry_s=2) if scheme == "gs"
              else S3Config(azure=AzureConfig(AZURITE_ACCOUNT, AZURITE_KEY, None, url), retry_s=2))
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        list_objects(f"{scheme}://bucket/imgs", s3=config)
    assert err.value.exit_code == EXIT_UNREACHABLE and url in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - started < 60  # the first-contact window, not the client's own patience


def test_azure_wrong_key_is_exit_6_and_names_what_to_check(azurite):
    fs_config = azurite.config
    with pytest.raises(StorageError) as err:
        list_objects("az://anything/imgs", s3=S3Config(azure=AzureConfig(
            AZURITE_ACCOUNT, AZURITE_KEY[:-8] + "AAAAAAA=", None, azurite.url)))
    assert err.value.exit_code == EXIT_CREDENTIALS and "AZURE_STORAGE_ACCOUNT_KEY" in str(err.value)
    assert AZURITE_KEY[:12] not in str(err.value) and fs_config.azure.account_key == AZURITE_KEY


def test_azure_read_only_sas_cannot_write_exit_8(request):
    """A SAS that may read and list but not write: the output root is refused as denied, never as missing."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from tests.fixtures.clouds import fresh_bucket

    with fresh_bucket(request, "az") as cloud:
        cloud.put("imgs/1.png", b"one")
        sas = generate_container_sas(AZURITE_ACCOUNT, cloud.bucket, account_key=AZURITE_KEY,
                                     permission=ContainerSasPermissions(read=True, list=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        reader = S3Config(azure=AzureConfig(AZURITE_ACCOUNT, None, sas, cloud.url), retry_s=5)
        assert read_object(cloud.uri("imgs/1.png"), s3=reader) == (b"one", None)
        with pytest.raises(StorageError) as err:
            check_writable(cloud.uri("out"), s3=reader)
        assert err.value.exit_code == EXIT_DENIED and "\n" not in str(err.value) and sas not in str(err.value)


def test_gcs_without_credentials_is_exit_6_in_seconds(monkeypatch):
    """No emulator, no GOOGLE_APPLICATION_CREDENTIALS and no metadata server: Google's client retries that
    as an outage; the first contact tells it within its short window."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("GCE_METADATA_ROOT", f"127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        read_object("gs://some-bucket/x.png", s3=S3Config(gcs=GcsConfig(), retry_s=120))
    assert err.value.exit_code == EXIT_CREDENTIALS and "GOOGLE_APPLICATION_CREDENTIALS" in str(err.value)
    assert time.monotonic() - started < 60
