"""Filesystems for URIs: one resolver for local and S3, and the S3 settings every process shares.

``S3Config`` is a frozen dataclass of plain values, so it pickles into Ray tasks and actors. Each process
builds (and caches) its own pyarrow filesystem and boto3 client from it; neither is ever shipped.

Where settings come from, first match wins:

- endpoint: the explicit argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS;
- region: the explicit argument, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``;
- credentials: explicit keys, else ``None``, which means the standard AWS chain (environment variables,
  ``~/.aws``, instance metadata) on whichever machine uses the config. Keys found in the environment are
  not copied into the config, so secrets do not travel in task arguments unless you put them there.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ood_audit.errors import ConfigError
from ood_audit.io.uri import ParsedUri, parse_uri

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Config:
    """Where S3 is and how to sign requests. Plain values only: safe to pickle and to hash."""

    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _split_endpoint(self.endpoint_url)  # validate early, with a message naming the field
        if (self.access_key is None) != (self.secret_key is None):
            raise ConfigError("S3 access_key and secret_key must be given together (or both left unset)")

    @classmethod
    def from_env(
        cls,
        endpoint_url: str | None = None,
        *,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> S3Config:
        """Explicit arguments first, then the ``AWS_*`` environment (see the module docstring)."""
        env = os.environ if environ is None else environ
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        return cls(endpoint, region, access_key, secret_key, session_token)

    def pyarrow_fs(self) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem for these settings (cached per process)."""
        return _pyarrow_s3(self, os.getpid())

    def client(self, **config_kwargs: Any) -> Any:
        """A boto3 S3 client (used for listings with ETags and presigned URLs).

        Without ``config_kwargs`` the client is cached per process (boto3 clients are thread-safe);
        ``config_kwargs`` go to ``botocore.config.Config`` and give a fresh client.
        """
        if not config_kwargs:
            return _boto3_client(self, os.getpid())
        return _make_boto3_client(self, config_kwargs)

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables equivalent to this config, for subprocesses and Ray ``runtime_env``."""
        out = {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        if self.endpoint_url:
            out["AWS_ENDPOINT_URL"] = self.endpoint_url
            out["AWS_ENDPOINT_URL_S3"] = self.endpoint_url
        if self.access_key is not None and self.secret_key is not None:
            out["AWS_ACCESS_KEY_ID"] = self.access_key
            out["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        if self.session_token:
            out["AWS_SESSION_TOKEN"] = self.session_token
        return out


def _split_endpoint(endpoint_url: str) -> tuple[str, str]:
    """``http://127.0.0.1:9000`` -> (``http``, ``127.0.0.1:9000``), the form pyarrow wants."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"S3 endpoint_url {endpoint_url!r} must look like http://host:port or https://host "
            "(set it with --s3-endpoint or AWS_ENDPOINT_URL)"
        )
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"S3 endpoint_url {endpoint_url!r} must not have a path or query")
    return parts.scheme, parts.netloc


@functools.lru_cache(maxsize=16)
def _pyarrow_s3(config: S3Config, pid: int) -> pafs.S3FileSystem:
    # pid is part of the key: filesystems and clients must not be reused across fork().
    kwargs: dict[str, Any] = {"region": config.region}
    if config.endpoint_url:
        scheme, netloc = _split_endpoint(config.endpoint_url)
        kwargs.update(endpoint_override=netloc, scheme=scheme)
    if config.access_key is not None:
        kwargs.update(
            access_key=config.access_key,
            secret_key=config.secret_key,
            session_token=config.session_token,
        )
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=16)
def _boto3_client(config: S3Config, pid: int) -> Any:
    return _make_boto3_client(config, {})


def _make_boto3_client(config: S3Config, config_kwargs: Mapping[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}, "max_pool_connections": 32}
    if config.endpoint_url:
        # Custom endpoints (SeaweedFS, MinIO, moto) rarely resolve bucket.host names.
        options["s3"] = {"addressing_style": "path"}
    options.update(config_kwargs)
    session = boto3.session.Session(
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        aws_session_token=config.session_token,
        region_name=config.region,
    )
    return session.client("s3", endpoint_url=config.endpoint_url, config=Config(**options))


def s3_client(s3: S3Config | None = None) -> Any:
    """A boto3 S3 client from ``s3``, or from the environment when ``s3`` is None."""
    return (s3 or S3Config.from_env()).client()


def resolve(uri: str | os.PathLike[str], s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for ``uri``.

    ``s3`` is used for ``s3://`` URIs; when None, settings come from the environment.
    """
    return _resolve_parsed(parse_uri(uri), s3)


def _resolve_parsed(parsed: ParsedUri, s3: S3Config | None) -> tuple[pafs.FileSystem, str]:
    if parsed.is_s3:
        return (s3 or S3Config.from_env()).pyarrow_fs(), parsed.fs_path
    return pafs.LocalFileSystem(), parsed.fs_path


def read_bytes(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> bytes:
    """The whole object. Raises ``FileNotFoundError`` when it does not exist (local or S3)."""
    parsed = parse_uri(uri)
    fs, path = _resolve_parsed(parsed, s3)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if _is_not_found(exc) or not _exists(fs, path):
            raise FileNotFoundError(f"{parsed} does not exist") from exc
        raise


def write_bytes(uri: str | os.PathLike[str], data: bytes, *, s3: S3Config | None = None) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one.

    Locally: a temporary file in the same directory, then ``os.replace``. On S3 a PUT (or a completed
    multipart upload) is already all-or-nothing.
    """
    parsed = parse_uri(uri)
    if parsed.is_s3:
        fs, path = _resolve_parsed(parsed, s3)
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    directory = os.path.dirname(parsed.key)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(parsed.key)}.tmp-{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, parsed.key)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def exists(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> bool:
    """True when ``uri`` is an existing object or file (a prefix or directory does not count)."""
    fs, path = resolve(uri, s3)
    return fs.get_file_info(path).type == pafs.FileType.File


def file_size(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> int | None:
    """Size in bytes, or None when ``uri`` is not an existing object or file."""
    fs, path = resolve(uri, s3)
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError:
        return True  # cannot tell: let the original error through


def _is_not_found(exc: OSError) -> bool:
    text = str(exc)
    return "NoSuchKey" in text or "NO_SUCH_KEY" in text or "Path does not exist" in text
