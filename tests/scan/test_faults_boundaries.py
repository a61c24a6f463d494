"""`ood-audit scan` at its boundaries: each failure is one line naming what failed, with its documented exit
status, before any listing or Ray work (storage unreachable, wrong credentials, missing bucket, unwritable
output, a corrupt bundle file, a bundle of another format version)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ood_audit.bundle.files import compute_bundle_id
from ood_audit.cli import main
from ood_audit.errors import (EXIT_CONFIG, EXIT_CREDENTIALS, EXIT_DENIED, EXIT_NO_BUCKET, EXIT_UNREACHABLE,
                              CheckpointError)
from ood_audit.models.weights import read_state

DEAD = "http://127.0.0.1:1"  # nothing listens on port 1


def _scan(capsys, bundle, output, *extra):
    rc = main(["scan", "--bundle", bundle, "--input", "s3://in-bucket/imgs", "--output", output, *extra])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ood-audit: error: "), err
    return rc, err


def test_unreachable_endpoint_names_it_and_the_key(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    rc, err = _scan(capsys, "s3://bundles/x", "s3://out-bucket/audit", "--s3-endpoint", DEAD,
                    "--storage-retry-s", "0")
    assert rc == EXIT_UNREACHABLE
    assert f"cannot reach object storage at {DEAD}" in err and "s3://bundles/x/bundle.json" in err


def test_unreachable_output_is_found_before_listing(capsys, monkeypatch, bundle_uri):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    rc, err = _scan(capsys, bundle_uri, "s3://out-bucket/audit", "--s3-endpoint", DEAD, "--storage-retry-s", "0")
    assert rc == EXIT_UNREACHABLE and DEAD in err and "s3://out-bucket/audit" in err


def test_wrong_credentials(capsys, monkeypatch, s3_env, s3_bucket, bundle_uri):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-at-all")
    rc, err = _scan(capsys, bundle_uri, f"s3://{s3_bucket}/audit", "--storage-retry-s", "0")
    assert rc == EXIT_CREDENTIALS
    assert "refused the credentials" in err and s3_env["AWS_ENDPOINT_URL"] in err and s3_bucket in err


def test_missing_bucket(capsys, s3_env, bundle_uri):
    rc, err = _scan(capsys, bundle_uri, "s3://no-such-bucket-here/audit", "--storage-retry-s", "0")
    assert rc == EXIT_NO_BUCKET and "s3://no-such-bucket-here" in err and s3_env["AWS_ENDPOINT_URL"] in err


def test_unwritable_local_output(capsys, tmp_path, bundle_uri):
    (tmp_path / "a-file").write_text("not a folder")
    output = str(tmp_path / "a-file" / "audit")
    rc, err = _scan(capsys, bundle_uri, output)
    assert rc == EXIT_DENIED and output in err and "not writable" in err
    assert not (tmp_path / "a-file").is_dir()


def _copy(bundle_uri: str, tmp_path: Path) -> Path:
    dst = tmp_path / Path(bundle_uri).name
    shutil.copytree(bundle_uri, dst)
    return dst


@pytest.mark.parametrize("name", ["model.safetensors", "knn_bank.safetensors"])
def test_corrupt_bundle_file(capsys, tmp_path, bundle_uri, name):
    bundle = _copy(bundle_uri, tmp_path)
    if not (bundle / name).exists():
        name = sorted(p.name for p in bundle.glob("*bank*.safetensors"))[0]
    (bundle / name).write_bytes(b"abc")
    rc, err = _scan(capsys, str(bundle), str(tmp_path / "out"))
    assert rc == EXIT_CONFIG and name in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_bundle_of_another_format_version(capsys, tmp_path, bundle_uri):
    bundle = _copy(bundle_uri, tmp_path)
    doc = json.loads((bundle / "bundle.json").read_text())
    doc["meta"]["schema_version"] = 99
    doc["bundle_id"] = compute_bundle_id(doc["meta"], doc["files"])  # a consistent bundle, just newer
    (bundle / "bundle.json").write_text(json.dumps(doc))
    bundle = bundle.rename(bundle.with_name(doc["bundle_id"]))  # where that bundle would live (its id pins it)
    rc, err = _scan(capsys, str(bundle), str(tmp_path / "out"))
    assert rc == EXIT_CONFIG and "schema version 99" in err


def test_corrupt_weights_file_is_one_line(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError) as err:
        read_state(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unreachable_during_listing_keeps_its_own_status(capsys, monkeypatch, tmp_path, bundle_uri):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    # A local output passes the write probe; the S3 input is unreachable: nothing was scanned, so exit 3, not 4.
    rc, err = _scan(capsys, bundle_uri, str(tmp_path / "out"), "--s3-endpoint", DEAD, "--storage-retry-s", "0")
    assert rc == EXIT_UNREACHABLE and DEAD in err
