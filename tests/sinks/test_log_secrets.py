"""No secret reaches a log, at any level (issue 21, item 8): with the CLI's ``-v`` logging (root at DEBUG,
botocore and urllib3 included) and the one redaction filter the CLI puts on the root handlers, a presigned
GET with an STS-style session token, botocore's signed requests and a Label Studio import leave no
credential in the log file. The log file is grepped for the secret values themselves."""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from ood_audit.cli import main
from ood_audit.console import MASK, RedactSecrets, redact_root_handlers
from ood_audit.errors import StorageError
from ood_audit.io.fs import S3Config
from ood_audit.io.reader import read_object

SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDSTSsessiontoken0123456789abcdef"
SIGNATURE = re.compile(r"(?i)signature=[0-9a-f]{16}")


@pytest.fixture
def verbose_log(tmp_path: Path) -> Iterator[Path]:
    """The logging ``ood-audit -v`` sets up (cli.main), writing to a file: root and libraries at DEBUG."""
    path = tmp_path / "ood-audit.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "botocore", "boto3", "urllib3")}
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    redact_root_handlers()
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.s3
def test_presigned_get_and_session_token_leave_no_secret(verbose_log, s3_server, s3_client, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    s3_client.put_object(Bucket=s3_bucket, Key="secrets/a.bin", Body=b"x" * 100)
    s3 = S3Config(s3_server.endpoint_url, access_key=s3_server.access_key, secret_key=s3_server.secret_key,
                  session_token=SESSION_TOKEN)
    # SeaweedFS does not know this session token and answers 403: the requests, signed with it, are logged all
    # the same, and that is what is checked.
    with pytest.raises(StorageError):
        read_object(f"s3://{s3_bucket}/secrets/a.bin", s3=s3)  # the presigned GET (urllib3)
    with pytest.raises(ClientError):
        s3.client().list_objects_v2(Bucket=s3_bucket, Prefix="secrets/")  # botocore: signed headers at DEBUG
    logging.getLogger("ood_audit.test").debug("retrying %s", f"/b/k?X-Amz-Credential={s3_server.access_key}%2F"
                                                             f"&X-Amz-Signature={'ab' * 32}")
    text = verbose_log.read_text()
    assert "X-Amz-Signature=" + MASK in text and "X-Amz-Security-Token" in text  # the requests were logged
    for secret in (SESSION_TOKEN, s3_server.secret_key, s3_server.access_key):
        assert secret not in text
    assert not SIGNATURE.search(text), SIGNATURE.search(text)


def test_label_studio_token_never_logged(verbose_log, label_studio, tmp_path, monkeypatch):
    from ood_audit.sinks.export import export
    from ood_audit.sinks.select import Selection
    from ood_audit.sinks.labelstudio import LabelStudioSink

    from tests.reports import row, write_run

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)  # as the nightly job reads it (token_env)
    out = str(tmp_path / "audit")
    write_run(out, "secrets", [row(f"s3://data/s{i}.png", pct=1.0) for i in range(3)])
    sink = LabelStudioSink(url=label_studio.url, token=label_studio.token, create_project="log-secrets")
    assert export(out, sink, Selection()).sent_now == 3
    logging.getLogger("ood_audit.test").debug("headers {'Authorization': 'Token %s'}", label_studio.token)
    text = verbose_log.read_text()
    assert label_studio.url.split("//")[1] in text or "/api/" in text  # the HTTP calls were logged
    assert label_studio.token not in text and MASK in text


def test_webhook_secret_and_url_token_never_logged(verbose_log, tmp_path, monkeypatch):
    from ood_audit.sinks.export import export
    from ood_audit.sinks.select import Selection
    from ood_audit.sinks.webhook import SECRET_ENV, WebhookSink

    from tests.reports import row, write_run
    from tests.sinks.webhook_receiver import WebhookReceiver

    secret = "whsec-0123456789abcdef"
    monkeypatch.setenv(SECRET_ENV, secret)
    receiver = WebhookReceiver(secret.encode(), fail_first=1).start()  # a retry: urllib3 logs the URL again
    try:
        out = str(tmp_path / "audit")
        write_run(out, "secrets", [row(f"s3://data/w{i}.png", pct=1.0) for i in range(3)])
        assert export(out, WebhookSink(receiver.url), Selection()).sent_now == 3
    finally:
        receiver.stop()
    logging.getLogger("ood_audit.test").debug("signing with %s", secret)
    text = verbose_log.read_text()
    assert "/hooks/ood?token=" + MASK in text  # the requests were logged, their query token masked
    assert "not-for-logs" not in text and secret not in text


def test_the_cli_filters_every_root_handler(tmp_path, capsys):
    """``ood-audit -v`` (any command) leaves the redaction filter on every handler of the root logger."""
    for h in logging.getLogger().handlers:  # as a fresh process: none yet (an earlier test may have put them)
        for f in [f for f in h.filters if isinstance(f, RedactSecrets)]:
            h.removeFilter(f)
    assert main(["-v", "bundle", "show", str(tmp_path / "no-bundle")]) == 2
    handlers = logging.getLogger().handlers
    assert handlers and all(any(isinstance(f, RedactSecrets) for f in h.filters) for h in handlers)


def test_azure_account_key_and_sas_never_logged(verbose_log, request, monkeypatch):
    """The SAS travels in every request's query and pyarrow quotes the URL in its errors; the account key
    and the connection string sit in the environment: none of them reaches the log, a row or a message."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from ood_audit.io.fs import check_writable
    from tests.fixtures.clouds import AZURITE_ACCOUNT, AZURITE_KEY, fresh_bucket

    with fresh_bucket(request, "az") as cloud:
        cloud.put("imgs/1.png", b"one")
        sas = generate_container_sas(AZURITE_ACCOUNT, cloud.bucket, account_key=AZURITE_KEY,
                                     permission=ContainerSasPermissions(read=True, list=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        sig = re.search(r"sig=([^&]+)", sas).group(1)
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
        monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", cloud.url)
        monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY}")
        monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY", raising=False)
        config = S3Config.from_env()
        assert config.azure.account_key is None and config.azure.sas_token is None  # the keys stay in the env
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")  # sign with the read-only SAS from here on
        assert read_object(cloud.uri("imgs/1.png"), s3=config) == (b"one", None)
        missing = read_object(cloud.uri("imgs/none.png"), s3=config)[1]
        with pytest.raises(StorageError) as err:
            check_writable(cloud.uri("out"), s3=config)
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
        logging.getLogger("ood_audit.test").error("refused: %s (%r) with key %s", err.value, missing, AZURITE_KEY)
    text = verbose_log.read_text()
    for secret in (sig, AZURITE_KEY):
        assert secret not in text and secret not in str(err.value) and secret not in str(missing)
    assert "refused: " in text and MASK in text
