"""The one table of storage failures (io.storage_errors, through io.fs.storage_error), the retry budget kept
across layers (counted against an endpoint that never answers, on a fake clock), and the CLI's one line."""
from __future__ import annotations

import logging
import pickle
import socket
import threading
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest

from ood_audit.cli import main
from ood_audit.errors import EXIT_CREDENTIALS, EXIT_DENIED, EXIT_NO_BUCKET, EXIT_STATUSES, EXIT_UNREACHABLE, \
    StorageError
from ood_audit.io import storage_errors
from ood_audit.io.fs import S3Config, read_bytes, storage_error
from ood_audit.io.reader import read_object
from ood_audit.io.storage_errors import BACKOFF_MAX_S, FIRST_CONTACT_S, pyarrow_attempts

S3 = S3Config("http://10.1.2.3:9000", access_key="k", secret_key="s")


@pytest.mark.parametrize(("text", "kind", "code"), [
    ("When reading information for key 'x/bundle.json' in bucket 'bundles': AWS Error NETWORK_CONNECTION during "
     "HeadObject operation: curlCode: 7, Could not connect to server", "unreachable", EXIT_UNREACHABLE),
    ("When listing objects under key 'a/' in bucket 'bkt': AWS Error INVALID_ACCESS_KEY_ID during ListObjectsV2 "
     "operation: The access key ID you provided does not exist in our records.", "credentials", EXIT_CREDENTIALS),
    ("When initiating multiple part upload for key 'a/y' in bucket 'bkt': AWS Error SIGNATURE_DOES_NOT_MATCH during "
     "CreateMultipartUpload operation: The request signature we calculated does not match", "credentials",
     EXIT_CREDENTIALS),
    ("When initiating multiple part upload for key 'a/z' in bucket 'bkt': AWS Error ACCESS_DENIED during "
     "CreateMultipartUpload operation: Access Denied.", "denied", EXIT_DENIED),
    ("When listing objects under key '' in bucket 'gone': AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: "
     "The specified bucket does not exist", "no_bucket", EXIT_NO_BUCKET),
])
def test_pyarrow_errors_become_one_line_naming_endpoint_bucket_and_key(text, kind, code):
    err = storage_error(OSError(text), s3=S3)
    assert err is not None and err.kind == kind and err.exit_code == code
    message = str(err)
    assert "\n" not in message and "http://10.1.2.3:9000" in message
    assert "s3://" in message and ("bkt" in message or "bundles" in message or "gone" in message)


def test_not_found_and_other_errors_are_not_storage_errors():
    assert storage_error(FileNotFoundError("Path does not exist 'b/k'"), s3=S3) is None
    assert storage_error(ValueError("bad value"), s3=S3) is None
    assert storage_error(OSError("When reading 'b/k': Parquet magic bytes not found"), s3=S3) is None


def test_botocore_errors():
    from botocore.exceptions import ClientError, EndpointConnectionError

    err = storage_error(EndpointConnectionError(endpoint_url="http://10.1.2.3:9000/b"), s3=S3,
                        uri="s3://b/audit/x")
    assert err.kind == "unreachable" and "s3://b/audit/x" in str(err)
    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no such key",
                                    "BucketName": "b", "Key": "k"}}, "GetObject")
    err = storage_error(denied, s3=S3)
    assert err.kind == "credentials" and "s3://b/k" in str(err) and "GetObject" in str(err)
    missing = ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")
    assert storage_error(missing, s3=S3) is None


def test_causes_are_followed_and_the_kind_survives_pickling():
    inner = StorageError("cannot reach object storage at X: s3://b/k (NETWORK_CONNECTION); check", "unreachable")
    try:
        raise RuntimeError("a Ray task failed") from inner
    except RuntimeError as outer:
        assert storage_error(outer) is inner
    again = pickle.loads(pickle.dumps(inner))
    assert again.kind == "unreachable" and str(again) == str(inner)


def test_pyarrow_attempts_fit_in_the_window():
    for window in (0.06, 0.5, 1, 2, 10, 30, 120, 600):
        n = pyarrow_attempts(window)
        waits = [0.025 * 2 ** i for i in range(1, n)]  # the AWS SDK's default strategy: 25 ms * 2^i before retry i
        assert sum(waits) <= window < sum(waits) + 0.025 * 2 ** n  # the most attempts that keep the budget
    assert pyarrow_attempts(0) == 1


class _Silent:
    """An endpoint that accepts connections and closes them at once, counting them: never an answer."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def s3(self, retry_s: float) -> S3Config:
        return S3Config(f"http://127.0.0.1:{self.sock.getsockname()[1]}", access_key="k", secret_key="s",
                        retry_s=retry_s)


@pytest.fixture
def silent() -> Iterator[_Silent]:
    server = _Silent()
    yield server
    server.sock.close()


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The budget's clock made fake: every wait is recorded and moves the clock on; no endpoint has answered."""
    now, waited = [1000.0], []

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(storage_errors, "clock", lambda: now[0])
    monkeypatch.setattr(storage_errors, "sleep", sleep)
    monkeypatch.setattr(storage_errors, "_STATE", {})
    return waited


@pytest.mark.parametrize("answered", [True, False])
def test_the_reader_waits_the_window_and_no_more(silent, waits, answered, caplog):
    s3 = silent.s3(retry_s=120)
    if answered:
        storage_errors.mark_answered(s3.endpoint)
    with caplog.at_level(logging.INFO), pytest.raises(StorageError) as e:
        read_object("s3://b/k.png", s3=s3)
    window = 120 if answered else FIRST_CONTACT_S  # an endpoint never heard from gets the short window
    assert e.value.kind == "unreachable" and e.value.exit_code == EXIT_UNREACHABLE
    assert sum(waits) == pytest.approx(window) and max(waits) <= BACKOFF_MAX_S
    assert silent.connections == len(waits) + 1  # one GET, then one per wait
    lines = [r.getMessage() for r in caplog.records if "not answering" in r.getMessage()]
    assert len(lines) == 1 and s3.endpoint in lines[0] and "s3://b/k.png" in lines[0] and "at most" in lines[0]
    assert "Signature" not in caplog.text and "X-Amz" not in caplog.text


def test_boto3_requests_share_one_outage_clock(silent, waits):
    s3 = silent.s3(retry_s=60)
    storage_errors.mark_answered(s3.endpoint)
    client = s3.client()
    with pytest.raises(Exception) as e:
        client.list_objects_v2(Bucket="b")
    assert storage_error(e.value, s3=s3).kind == "unreachable"
    assert sum(waits) == pytest.approx(60) and silent.connections == len(waits) + 1
    first = len(waits)
    with pytest.raises(Exception):  # a second request in the same outage: the window is spent, no more waits
        client.head_object(Bucket="b", Key="k")
    assert len(waits) == first and silent.connections == first + 2


def test_a_failed_pyarrow_read_is_not_asked_again(silent):
    s3 = silent.s3(retry_s=0.5)
    storage_errors.mark_answered(s3.endpoint)
    reference = pafs.S3FileSystem(endpoint_override=s3.endpoint_url.split("//")[1], scheme="http", access_key="k",
                                  secret_key="s", retry_strategy=pafs.AwsDefaultS3RetryStrategy(pyarrow_attempts(0.5)))
    with pytest.raises(OSError):
        reference.get_file_info("b/k")
    one_request, silent.connections = silent.connections, 0  # what one request with the same retries costs
    with pytest.raises(OSError) as e:
        read_bytes("s3://b/k", s3=s3)
    assert storage_error(e.value, s3=s3).kind == "unreachable"
    assert silent.connections == one_request


def test_a_mistyped_endpoint_fails_the_scan_within_the_first_contact_window(silent, waits, capsys, monkeypatch):
    # The reported case: default --storage-retry-s, an endpoint that never answers, the bundle on it.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    endpoint = silent.s3(retry_s=0).endpoint_url
    rc = main(["scan", "--bundle", "s3://b/bundle", "--input", "s3://b/in", "--output", "s3://b/x",
               "--s3-endpoint", endpoint])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_UNREACHABLE and len(err) == 1 and f"cannot reach object storage at {endpoint}" in err[0]
    assert "s3://b/bundle/bundle.json" in err[0]
    assert sum(waits) == pytest.approx(FIRST_CONTACT_S)  # all the waiting there was, across every layer
    assert silent.connections == len(waits) + 1  # one request asked the endpoint; nothing asked it again


def test_a_config_sent_to_a_worker_carries_that_the_endpoint_answered(monkeypatch):
    monkeypatch.setattr(storage_errors, "_STATE", {})
    s3 = S3Config("http://10.9.9.9:9000", retry_s=120)
    assert storage_errors.window_s(s3) == FIRST_CONTACT_S
    storage_errors.mark_answered(s3.endpoint)
    sent = pickle.dumps(s3)
    storage_errors._STATE.clear()  # as in a fresh worker process
    again = pickle.loads(sent)
    assert again == s3 and storage_errors.window_s(again) == 120


def test_every_documented_status_is_distinct_and_listed_in_help(capsys):
    assert len(set(EXIT_STATUSES)) == len(EXIT_STATUSES) == 10
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in EXIT_STATUSES:
        assert f"  {code:>3}  " in out


def test_cli_turns_an_untranslated_storage_oserror_into_one_line(monkeypatch, capsys):
    def boom(args):
        raise OSError("When getting information for key 'audit/runs' in bucket 'b': AWS Error NETWORK_CONNECTION "
                      "during HeadObject operation: curlCode: 7, Could not connect to server")

    rc = _run_with(monkeypatch, boom)
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_UNREACHABLE and len(err.splitlines()) == 1 and "s3://b/audit/runs" in err


def _run_with(monkeypatch, fn):
    """``main`` with the first command's handler replaced by ``fn`` (argument parsing itself is not under test)."""
    import argparse

    from ood_audit import cli

    real = cli.build_parser

    def parser():
        p = real()
        p.parse_args = lambda argv=None: argparse.Namespace(verbose=False, func=fn)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    return cli.main([])
