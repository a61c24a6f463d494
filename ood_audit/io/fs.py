"""Filesystems for URIs: one resolver for local and S3, and the S3 settings every process shares.

``S3Config`` is a frozen dataclass of plain values, so it pickles into Ray tasks and actors. Each process
builds (and caches) its own pyarrow filesystem and boto3 client from it; neither is ever shipped.

Where settings come from, first match wins:

- endpoint: the explicit argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS;
- region: the explicit argument, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``;
- credentials: explicit keys, else ``None``, which means the standard AWS chain (environment variables,
  ``~/.aws``, instance metadata) on whichever machine uses the config. Keys found in the environment are
  not copied into the config, so secrets do not travel in task arguments unless you put them there.

**Retries.** ``retry_s`` is the outage a request rides out: pyarrow and boto3 retry a failed request with
exponential backoff (their own strategies, ``AwsDefaultS3RetryStrategy`` and botocore's ``standard``
mode) for at least that long before giving up, so an S3 server that restarts within the window costs a
pause and nothing else. pyarrow's default strategy waits 25 ms·2^i before retry i, so its attempts are the
fewest whose waits add up to ``retry_s`` (at most twice the window); botocore's jittered waits are capped at
20 s, so its attempts are sized by their mean waits.

**Errors.** :func:`storage_error` is the one place where pyarrow's ``OSError`` texts and botocore's
exceptions become a :class:`~ood_audit.errors.StorageError` with a kind (unreachable, credentials,
no_bucket, denied) and a one-line message naming the endpoint, bucket and key. "Not found" is not a
storage error: it is about one object, and callers decide what it means.
"""

from __future__ import annotations

import functools
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ood_audit.errors import ConfigError, StorageError
from ood_audit.io.uri import ParsedUri, parse_uri

DEFAULT_REGION = "us-east-1"
DEFAULT_RETRY_S = 120.0
_PYARROW_BASE_DELAY_S = 0.025  # AWS SDK for C++ DefaultRetryStrategy: 25 ms * 2^i before retry i


@dataclass(frozen=True)
class S3Config:
    """Where S3 is and how to sign requests. Plain values only: safe to pickle and to hash."""

    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    retry_s: float = DEFAULT_RETRY_S  # outage window a request rides out (module docstring)

    def __post_init__(self) -> None:
        if not self.retry_s >= 0:
            raise ConfigError(f"--storage-retry-s must be >= 0, got {self.retry_s}")
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
        retry_s: float = DEFAULT_RETRY_S,
        environ: Mapping[str, str] | None = None,
    ) -> S3Config:
        """Explicit arguments first, then the ``AWS_*`` environment (see the module docstring)."""
        env = os.environ if environ is None else environ
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        return cls(endpoint, region, access_key, secret_key, session_token, retry_s)

    @property
    def endpoint(self) -> str:
        """The endpoint as messages name it."""
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def pyarrow_fs(self) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem for these settings (cached per process)."""
        return _pyarrow_s3(self, os.getpid(), _env_credentials(self))

    def client(self, **config_kwargs: Any) -> Any:
        """A boto3 S3 client (used for listings with ETags and presigned URLs).

        Without ``config_kwargs`` the client is cached per process (boto3 clients are thread-safe);
        ``config_kwargs`` go to ``botocore.config.Config`` and give a fresh client.
        """
        if not config_kwargs:
            return _boto3_client(self, os.getpid(), _env_credentials(self))
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


def pyarrow_attempts(retry_s: float) -> int:
    """Attempts (first try included) whose pyarrow backoff waits add up to at least ``retry_s``."""
    if retry_s <= 0:
        return 1
    # waits before retries 1..n-1 sum to 25 ms * (2^n - 2)
    return max(2, math.ceil(math.log2(retry_s / _PYARROW_BASE_DELAY_S + 2)))


def boto_attempts(retry_s: float) -> int:
    """botocore ``total_max_attempts`` whose mean waits (half of ``min(2^(i-1), 20)`` s) add up to ``retry_s``."""
    total, retries = 0.0, 0
    while total < retry_s:
        retries += 1
        total += min(2.0 ** (retries - 1), 20.0) / 2
    return retries + 1


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


def _env_credentials(config: S3Config) -> tuple[str | None, ...]:
    """The environment's keys when the config has none: part of the cache key, so rotated keys take effect."""
    if config.access_key is not None:
        return ()
    return tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                             "AWS_PROFILE"))


@functools.lru_cache(maxsize=16)
def _pyarrow_s3(config: S3Config, pid: int, env_keys: tuple[str | None, ...] = ()) -> pafs.S3FileSystem:
    # pid is part of the key: filesystems and clients must not be reused across fork().
    kwargs: dict[str, Any] = {"region": config.region,
                              "retry_strategy": pafs.AwsDefaultS3RetryStrategy(pyarrow_attempts(config.retry_s))}
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
def _boto3_client(config: S3Config, pid: int, env_keys: tuple[str | None, ...] = ()) -> Any:
    return _make_boto3_client(config, {})


def _make_boto3_client(config: S3Config, config_kwargs: Mapping[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {"retries": {"total_max_attempts": boto_attempts(config.retry_s), "mode": "standard"},
                               "max_pool_connections": 32}
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


# -- one translation of storage failures ---------------------------------------------------------------

_CODES = (  # (kind, codes as pyarrow's texts or botocore's error codes spell them)
    ("credentials", ("INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH",
                     "SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken", "InvalidToken", "InvalidClientTokenId",
                     "UNRECOGNIZED_CLIENT", "MISSING_AUTHENTICATION_TOKEN")),
    ("no_bucket", ("NO_SUCH_BUCKET", "NoSuchBucket", "Bucket does not exist", "bucket does not exist")),
    ("denied", ("ACCESS_DENIED", "AccessDenied", "AllAccessDisabled", "Forbidden", "Permission denied",
                "Read-only file system")),
    ("unreachable", ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused",
                     "REQUEST_TIMEOUT", "RequestTimeout", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "ServiceUnavailable",
                     "INTERNAL_FAILURE", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                     "ConnectionClosedError", "Could not resolve host", "Timeout was reached")),
)
_UNREACHABLE_TYPES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                      "ConnectionError", "ProxyConnectionError", "SSLError"}
_PYARROW_WHERE = re.compile(r"When (?P<op>[\w ]+?) (?:for |under |from )?key '(?P<key>[^']*)' in bucket "
                            r"'(?P<bucket>[^']*)'")
_PYARROW_BUCKET = re.compile(r"bucket '(?P<bucket>[^']*)'")
_HTTP_STATUS = re.compile(r"HTTP response code:? (\d{3})|status code:? (\d{3})", re.IGNORECASE)
_WHAT = {"unreachable": "cannot reach object storage at {endpoint}",
         "credentials": "object storage at {endpoint} refused the credentials",
         "no_bucket": "no such bucket at {endpoint}",
         "denied": "access denied by {endpoint}"}
_FIX = {"unreachable": "check --s3-endpoint / AWS_ENDPOINT_URL and that the server is up",
        "credentials": "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the session token)",
        "no_bucket": "create it or fix the URI",
        "denied": "check the credentials, grant them access, or choose another location"}


def _chain(exc: BaseException, depth: int = 8) -> list[BaseException]:
    """``exc`` and its causes (``__cause__``, ``__context__``, Ray's ``cause``), nearest first."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(out) < depth:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return out


def _classify(exc: BaseException) -> tuple[str, str] | None:
    """``(kind, code)`` for a storage failure, None otherwise."""
    names = {c.__name__ for c in type(exc).__mro__}
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = str((response.get("Error") or {}).get("Code") or "")
        for kind, codes in _CODES:
            if code in codes:
                return kind, code
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in ("403",) or status == 403:
            return "denied", code or "403"
        if code in ("404", "NoSuchKey", "NotFound"):
            return None
    if names & _UNREACHABLE_TYPES and "ClientError" not in names:
        return "unreachable", type(exc).__name__
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return None
    if isinstance(exc, PermissionError):
        return "denied", "Permission denied"
    if not isinstance(exc, OSError) and "RayTaskError" not in names and "UserCodeException" not in names:
        return None
    text = str(exc)
    for kind, codes in _CODES:
        for code in codes:
            if code in text:
                return kind, code
    return None


def storage_error(exc: BaseException, *, s3: S3Config | None = None,
                  uri: str | os.PathLike[str] | None = None) -> StorageError | None:
    """The :class:`StorageError` that ``exc`` (or one of its causes) means, or None when it is not a failure of
    the store itself (an object not found, any other error).

    ``uri`` names the object when the exception text does not; ``s3`` names the endpoint.
    """
    chain = _chain(exc)
    for e in chain:
        if type(e) is StorageError:
            return e
    for e in chain:  # Ray's wrapper of a StorageError raised in a worker: its text is a traceback
        if isinstance(e, StorageError):
            return StorageError(_last_line(str(e)), e.kind)
    for e in _chain(exc):
        found = _classify(e)
        if found is not None:
            return StorageError(_message(e, found[0], found[1], s3, uri), found[0])
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else text
    return last.split("StorageError: ", 1)[-1]


def _message(exc: BaseException, kind: str, code: str, s3: S3Config | None, uri: str | os.PathLike[str] | None) -> str:
    text = " ".join(str(exc).split())
    where = None
    m = _PYARROW_WHERE.search(text)
    response = getattr(exc, "response", None)
    if m:
        where = f"s3://{m['bucket']}/{m['key']}" if m["key"] else f"s3://{m['bucket']}"
        what = m["op"]
    elif isinstance(response, Mapping) and (response.get("Error") or {}).get("BucketName"):
        err = response["Error"]
        where = f"s3://{err['BucketName']}/{err.get('Key', '')}".rstrip("/")
        what = getattr(exc, "operation_name", "") or ""
    else:
        b = _PYARROW_BUCKET.search(text)
        where = f"s3://{b['bucket']}" if b else None
        what = getattr(exc, "operation_name", "") or ""
    if uri is not None and (where is None or not str(uri).startswith(where)):
        where = str(parse_uri(uri)) if where is None else where
        if not parse_uri(uri).is_s3:
            return f"{kind.replace('_', ' ')}: {uri} ({code}); {_FIX[kind]}"
    endpoint = (s3 or S3Config.from_env()).endpoint if (where or "s3://").startswith("s3://") else "local disk"
    detail = code if code in ("Permission denied", "Read-only file system") else _short_detail(text, code)
    head = _WHAT[kind].format(endpoint=endpoint)
    target = f": {what} {where}".replace(":  ", ": ") if where else ""
    return f"{head}{target} ({detail}); {_FIX[kind]}"


def _short_detail(text: str, code: str) -> str:
    # pyarrow: "...: AWS Error CODE during Op operation: message" -> "CODE during Op operation: message"
    i = text.find("AWS Error ")
    detail = text[i + len("AWS Error "):] if i >= 0 else text
    if "Traceback" in detail:
        detail = code
    return detail[:200]


def check_writable(root: str | os.PathLike[str], *, s3: S3Config | None = None) -> None:
    """Write and delete a small object under ``root``; a :class:`StorageError` naming it when that fails.

    For S3 the bucket is checked first (some servers create a missing bucket on the first write).
    """
    parsed = parse_uri(root)
    probe = f"{str(parsed).rstrip('/')}/.ood-audit-write-probe-{secrets.token_hex(4)}"
    try:
        if parsed.is_s3:
            client = (s3 or S3Config.from_env()).client()
            try:  # a GET, not a HEAD: its error body says why (unknown key, bad signature, no bucket)
                client.list_objects_v2(Bucket=parsed.bucket, Prefix=parsed.key, MaxKeys=1)
            except Exception as exc:  # noqa: BLE001 - translated below
                status = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
                if status in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(f"no such bucket at {(s3 or S3Config.from_env()).endpoint}: s3://{parsed.bucket}"
                                       f" (the output root {root}); create it or fix --output", "no_bucket") from None
                raise
        write_bytes(probe, b"ood-audit write probe\n", s3=s3)
        fs, path = resolve(probe, s3)
        fs.delete_file(path)
    except StorageError:
        raise
    except OSError as exc:
        if not parsed.is_s3:
            raise StorageError(f"output root {root} is not writable ({exc.strerror or exc}); choose another "
                               "--output or fix its permissions", "denied") from None
        err = storage_error(exc, s3=s3, uri=probe)
        if err is None:
            raise
        raise StorageError(f"output root {root} is not usable: {err}", err.kind) from None
    except Exception as exc:  # noqa: BLE001 - only storage failures are translated; the rest pass through
        err = storage_error(exc, s3=s3, uri=probe)
        if err is None:
            raise
        raise StorageError(f"output root {root} is not usable: {err}", err.kind) from None
