"""URIs, S3 settings and the read/write/exists helpers, locally and on the embedded S3 server."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from ood_audit.errors import ConfigError
from ood_audit.io import fs as iofs
from ood_audit.io.fs import S3Config, exists, file_size, read_bytes, resolve, write_bytes
from ood_audit.io.clouds import AzureConfig, GcsConfig
from ood_audit.io.uri import is_s3_uri, join_uri, object_key, parent_uri, parse_uri

SPECIAL_KEYS = ["dir with space/a b.jpg", "ünïcødé/猫.png", "x/<script>alert(1)</script>.jpg", "q/a+b=c&d?.bin"]


def test_parse_s3_and_local(tmp_path: Path) -> None:
    p = parse_uri("s3://bucket/a/b c.jpg")
    assert (p.scheme, p.bucket, p.key, p.fs_path) == ("s3", "bucket", "a/b c.jpg", "bucket/a/b c.jpg")
    assert str(p) == "s3://bucket/a/b c.jpg"
    assert parse_uri("s3://bucket").key == ""
    local = parse_uri("rel/x.png")
    assert local.scheme == "file" and local.key == os.path.abspath("rel/x.png")
    assert parse_uri(f"file://{tmp_path}/a%20b.png").key == f"{tmp_path}/a b.png"
    assert parse_uri("file://localhost/tmp/x").key == "/tmp/x"
    assert is_s3_uri("S3://b/k") and not is_s3_uri("/tmp/x")


@pytest.mark.parametrize("bad", ["", "s3://", "s3:///key", "gs://", "az:///key", "abfs://c@notazure.example.com/k", "ftp://b/k",
                                 "http://host/x", "file://otherhost/x"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_uri(bad)


def test_join_and_parent() -> None:
    assert join_uri("s3://b", "bundles", "id") == "s3://b/bundles/id"
    assert join_uri("s3://b/root/", "/bundles/", "x.json") == "s3://b/root/bundles/x.json"
    assert join_uri("/data", "a", "b.png") == "/data/a/b.png"
    assert parent_uri("s3://b/a/b.png") == "s3://b/a"
    assert parent_uri("/data/a/b.png") == "/data/a"


def test_s3_config_from_env_precedence() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3only:2",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "from-env",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    cfg = S3Config.from_env(environ=env)
    assert cfg.endpoint_url == "http://s3only:2"
    assert cfg.region == "eu-west-1"
    assert cfg.access_key is None  # keys from the environment stay in the environment (standard chain)
    assert S3Config.from_env("http://explicit:3", environ=env).endpoint_url == "http://explicit:3"
    assert S3Config.from_env(environ={"AWS_ENDPOINT_URL": "http://g:1"}).endpoint_url == "http://g:1"
    assert S3Config.from_env(environ={}) == S3Config(None, "us-east-1", gcs=GcsConfig(), azure=AzureConfig())


def test_gcs_and_azure_settings_from_their_own_variables() -> None:
    key = "a2V5LWJ5dGVzPT0="  # base64 with '=' inside the value
    env = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443", "GOOGLE_CLOUD_PROJECT": "proj",
           "AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};"
                                              "BlobEndpoint=http://127.0.0.1:10000/acct;"}
    cfg = S3Config.from_env(environ=env)
    assert cfg.gcs == GcsConfig("http://127.0.0.1:4443", "proj")
    # the account and endpoint travel with the settings; the key stays in the environment
    assert cfg.azure == AzureConfig("acct", None, None, "http://127.0.0.1:10000/acct")
    assert cfg.azure.signing(env) == (key, None) and key not in repr(cfg)
    separate = {"AZURE_STORAGE_ACCOUNT_NAME": "other", "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=abc"}
    assert AzureConfig.from_env(separate) == AzureConfig("other")
    assert AzureConfig.from_env(separate).signing(separate) == (None, "?sv=1&sig=abc")
    assert AzureConfig("x").signing({}) == (None, None)  # the default credential chain
    # into Ray tasks: the settings go along, explicit keys too (as explicit AWS keys do)
    explicit = S3Config(azure=AzureConfig("acct", "k" * 20, None, "http://h:1"), gcs=GcsConfig("h:2"))
    assert pickle.loads(pickle.dumps(explicit)) == explicit
    with pytest.raises(ConfigError, match="not both"):
        AzureConfig("acct", "key", "sas")
    with pytest.raises(ConfigError, match="STORAGE_EMULATOR_HOST"):
        GcsConfig("ftp://h")


def test_cloud_uris_keep_their_scheme_and_account() -> None:
    gs = parse_uri("gs://bkt/a/b c.jpg")
    assert (gs.scheme, gs.cloud, gs.bucket, gs.key, gs.fs_path) == ("gs", "gcs", "bkt", "a/b c.jpg", "bkt/a/b c.jpg")
    az = parse_uri("az://cont/x/y.png")
    assert (az.cloud, az.bucket, az.key, str(az)) == ("azure", "cont", "x/y.png", "az://cont/x/y.png")
    abfs = parse_uri("abfss://cont@myacct.dfs.core.windows.net/x/y.png")
    assert (abfs.cloud, abfs.bucket, abfs.account, abfs.key) == ("azure", "cont", "myacct", "x/y.png")
    assert str(abfs) == "abfss://cont@myacct.dfs.core.windows.net/x/y.png"
    assert join_uri("abfss://cont@myacct.dfs.core.windows.net/x", "runs", "r1") == \
        "abfss://cont@myacct.dfs.core.windows.net/x/runs/r1"
    assert parent_uri("gs://bkt/a/b.png") == "gs://bkt/a" and parent_uri("az://c/b.png") == "az://c/"
    assert object_key("gs://bkt/data/c0/1.png", "gs://bkt/data") == "c0/1.png"


def test_s3_config_validation_pickle_and_env() -> None:
    with pytest.raises(ConfigError, match="endpoint_url"):
        S3Config("127.0.0.1:9000")
    with pytest.raises(ConfigError, match="together"):
        S3Config("http://h:1", access_key="a")
    cfg = S3Config("http://127.0.0.1:9000", "us-east-1", "ak", "sk")
    assert "sk" not in repr(cfg)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert cfg.env()["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert cfg.env()["AWS_SECRET_ACCESS_KEY"] == "sk"
    fs = cfg.pyarrow_fs()
    assert isinstance(fs, pafs.S3FileSystem)
    assert cfg.pyarrow_fs() is fs  # cached per process
    assert pickle.loads(pickle.dumps(fs)) == fs  # pyarrow filesystems also pickle, if ever needed


def test_local_read_write_exists(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "f.bin"
    write_bytes(str(target), b"one")
    write_bytes(str(target), b"two")
    assert read_bytes(str(target)) == b"two"
    assert exists(str(target)) and not exists(str(tmp_path / "deep"))  # a directory is not an object
    assert file_size(str(target)) == 3 and file_size(str(tmp_path / "nope")) is None
    assert sorted(os.listdir(target.parent)) == ["f.bin"]  # no temporary files left behind
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing.bin"))
    fs, path = resolve(f"file://{target}")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(target)


def test_s3_read_write_exists(s3_config: S3Config, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/a/b.bin"
    write_bytes(uri, b"payload", s3=s3_config)
    assert read_bytes(uri, s3=s3_config) == b"payload"
    assert exists(uri, s3=s3_config) and not exists(f"s3://{s3_bucket}/a", s3=s3_config)
    assert file_size(uri, s3=s3_config) == 7
    with pytest.raises(FileNotFoundError):
        read_bytes(f"s3://{s3_bucket}/missing", s3=s3_config)
    with pytest.raises(FileNotFoundError):
        read_bytes("s3://no-such-bucket-ood/x", s3=s3_config)


def test_s3_settings_from_environment(s3_env: dict[str, str], s3_bucket: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert read_bytes(f"s3://{s3_bucket}/k") == b"v"  # endpoint and keys found in AWS_* variables
    assert s3_client_bucket_names(iofs.s3_client()) >= {s3_bucket}


def s3_client_bucket_names(client: Any) -> set[str]:
    return {b["Name"] for b in client.list_buckets()["Buckets"]}


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_s3_special_keys_round_trip(s3_config: S3Config, s3_bucket: str, s3_client: Any, key: str) -> None:
    uri = f"s3://{s3_bucket}/{key}"
    write_bytes(uri, key.encode(), s3=s3_config)
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == key.encode()
    assert read_bytes(uri, s3=s3_config) == key.encode()
