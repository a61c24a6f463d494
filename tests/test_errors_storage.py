"""The one translation of storage failures (io.fs.storage_error), the retry budget, and the CLI's one line."""
from __future__ import annotations

import pickle

import pytest

from ood_audit.cli import main
from ood_audit.errors import EXIT_CREDENTIALS, EXIT_DENIED, EXIT_NO_BUCKET, EXIT_STATUSES, EXIT_UNREACHABLE, \
    StorageError
from ood_audit.io.fs import S3Config, boto_attempts, pyarrow_attempts, storage_error

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


def test_retry_budget_covers_the_window():
    for window in (0.5, 1, 2, 30, 120, 600):
        n = pyarrow_attempts(window)
        waits = [0.025 * 2 ** i for i in range(1, n)]  # the AWS SDK's default strategy
        assert sum(waits) >= window > sum(waits[:-1])
        assert boto_attempts(window) >= 2
    assert pyarrow_attempts(0) == 1 and boto_attempts(0) == 1
    assert boto_attempts(120) > boto_attempts(2)


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
