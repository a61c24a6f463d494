"""Filesystems for URIs: one resolver for local paths, S3, GCS and Azure, and the storage settings every
process shares (``S3Config``, which also carries the GCS and Azure settings of :mod:`ood_audit.io.clouds`).

``S3Config`` is a frozen dataclass of plain values, so it pickles into Ray tasks and actors. Each process
builds (and caches) its own pyarrow filesystem and boto3 client from it; neither is ever shipped.

Where settings come from, first match wins:

- endpoint: the explicit argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS;
- region: the explicit argument, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``;
- credentials: explicit keys, else ``None``, which means the standard AWS chain (environment variables,
  ``~/.aws``, instance metadata) on whichever machine uses the config. Keys found in the environment are
  not copied into the config, so secrets do not travel in task arguments unless you put them there.

**Retries.** ``retry_s`` is the outage a request rides out, in all layers together (pyarrow's, boto3's and
the reader's urllib3 GETs), kept by :mod:`ood_audit.io.storage_errors`: an endpoint that has not answered
yet in this run gets a short first-contact window instead. That the endpoint has answered travels with the
config into Ray tasks, so a worker's first request during an outage still gets the whole window.

**Errors.** :func:`storage_error` (from :mod:`ood_audit.io.storage_errors`, where the table of codes lives)
turns pyarrow's ``OSError`` texts and botocore's exceptions into a :class:`~ood_audit.errors.StorageError`
with a kind and a one-line message naming the endpoint, bucket and key.
"""

from __future__ import annotations

import functools
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ood_audit.errors import ConfigError, StorageError
from ood_audit.io import storage_errors as budget
from ood_audit.io.clouds import AzureConfig, GcsConfig, azure_filesystem, gcs_filesystem, gcs_subdirectories
from ood_audit.io.storage_errors import storage_error
from ood_audit.io.uri import ParsedUri, parse_uri

DEFAULT_REGION = "us-east-1"
DEFAULT_RETRY_S = 120.0
_T = TypeVar("_T")
_CONNECT_TIMEOUT_S = 10.0  # boto3's default of 60 s would outlast a first-contact window by itself


@dataclass(frozen=True)
class S3Config:
    """Where S3 is and how to sign requests. Plain values only: safe to pickle and to hash."""

    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    retry_s: float = DEFAULT_RETRY_S  # outage window a request rides out (module docstring)
    gcs: GcsConfig | None = None      # None: from each process's environment (io/clouds.py)
    azure: AzureConfig | None = None

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
        """Explicit arguments first, then the ``AWS_*`` environment (see the module docstring), and the GCS and
        Azure settings from theirs (:mod:`ood_audit.io.clouds`)."""
        env = os.environ if environ is None else environ
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        return cls(endpoint, region, access_key, secret_key, session_token, retry_s,
                   GcsConfig.from_env(env), AzureConfig.from_env(env))

    @property
    def gcs_settings(self) -> GcsConfig:
        return self.gcs if self.gcs is not None else GcsConfig.from_env()

    @property
    def azure_settings(self) -> AzureConfig:
        return self.azure if self.azure is not None else AzureConfig.from_env()

    @property
    def endpoint(self) -> str:
        """The endpoint as messages name it."""
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def pyarrow_fs(self) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem for these settings (cached per process)."""
        attempts = budget.pyarrow_attempts(budget.window_left_s(self))  # fitted to what is left of the window
        return _pyarrow_s3(self, os.getpid(), _env_credentials(self), attempts)

    def client(self, **config_kwargs: Any) -> Any:
        """A boto3 S3 client (used for listings with ETags and presigned URLs).

        Without ``config_kwargs`` the client is cached per process (boto3 clients are thread-safe);
        ``config_kwargs`` go to ``botocore.config.Config`` and give a fresh client.
        """
        with _CLIENT_LOCK:  # the reader's threads ask at once: one builds the client, the others then reuse it
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
        return {**out, **(self.gcs.env() if self.gcs else {}), **(self.azure.env() if self.azure else {})}

    def __reduce__(self) -> tuple[Callable[..., S3Config], tuple[Any, ...]]:
        # Into Ray tasks and actors: whether the endpoint has answered in this run goes along (module docstring).
        fields = (self.endpoint_url, self.region, self.access_key, self.secret_key, self.session_token, self.retry_s,
                  self.gcs, self.azure)
        return _restore_config, (fields, budget.has_answered(self.endpoint))


def _restore_config(fields: tuple[Any, ...], answered: bool) -> S3Config:
    config = S3Config(*fields)
    if answered:
        budget.mark_answered(config.endpoint, outage_over=False)
    return config


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
    return () if config.access_key is not None else _environment_keys()


def _environment_keys() -> tuple[str | None, ...]:
    return tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                             "AWS_PROFILE"))


@functools.lru_cache(maxsize=64)
def _pyarrow_s3(config: S3Config, pid: int, env_keys: tuple[str | None, ...], attempts: int) -> pafs.S3FileSystem:
    # pid is part of the key: filesystems and clients must not be reused across fork().
    kwargs: dict[str, Any] = {"region": config.region, "retry_strategy": pafs.AwsDefaultS3RetryStrategy(attempts)}
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


_CLIENT_LOCK = threading.RLock()


@functools.lru_cache(maxsize=16)
def _boto3_client(config: S3Config, pid: int, env_keys: tuple[str | None, ...] = ()) -> Any:
    return _make_boto3_client(config, {})


@functools.lru_cache(maxsize=4)
def _boto3_session(pid: int, env_keys: tuple[str | None, ...]) -> Any:
    """One boto3 session per process (and environment keys, so rotated keys take effect).

    A session parses botocore's service model once: a client made from it costs milliseconds, where a
    client from a new session parses the model again (about 0.1 s of CPU, far more when every read thread
    of every Ray worker does it). Sessions are not thread-safe: clients are made under ``_CLIENT_LOCK``."""
    import boto3

    return boto3.session.Session()


def _make_boto3_client(config: S3Config, config_kwargs: Mapping[str, Any]) -> Any:
    from botocore.config import Config

    # One attempt for botocore: retries are the budget's hook's, which asks the outage clock (storage_errors).
    options: dict[str, Any] = {"retries": {"total_max_attempts": 1, "mode": "standard"}, "max_pool_connections": 32,
                               "connect_timeout": _CONNECT_TIMEOUT_S}
    if config.endpoint_url:
        # Custom endpoints (SeaweedFS, MinIO, moto) rarely resolve bucket.host names.
        options["s3"] = {"addressing_style": "path"}
    options.update(config_kwargs)
    # Explicit keys go to the client; without them the session's chain (environment, profile, instance role).
    session = _boto3_session(os.getpid(), _environment_keys())
    client = session.client("s3", region_name=config.region, endpoint_url=config.endpoint_url,
                            aws_access_key_id=config.access_key, aws_secret_access_key=config.secret_key,
                            aws_session_token=config.session_token, config=Config(**options))
    if "retries" not in config_kwargs:  # a caller's own retries (e.g. a readiness poll) are left alone
        client.meta.events.register("needs-retry.s3", budget.boto_retry_hook(config))
    return client


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
        config = s3 or S3Config.from_env()
        if not budget.has_answered(config.endpoint):
            _first_contact(config, parsed)
        return config.pyarrow_fs(), parsed.fs_path
    if parsed.cloud == "gcs":
        config = s3 or S3Config.from_env()
        if not budget.has_answered(config.gcs_settings.endpoint):
            _first_contact_gcs(config, parsed)
        return gcs_filesystem(config.gcs_settings, config.retry_s), parsed.fs_path
    if parsed.cloud == "azure":
        return azure_filesystem((s3 or S3Config.from_env()).azure_settings, parsed.account), parsed.fs_path
    return pafs.LocalFileSystem(), parsed.fs_path


def _first_contact(config: S3Config, parsed: ParsedUri) -> None:
    """Ask the endpoint once through boto3, whose retries the budget watches, before pyarrow's, which it cannot:
    a mistyped endpoint fails within the first-contact window, and any answer (a refusal too) gives pyarrow the
    whole window."""
    try:
        config.client().head_bucket(Bucket=parsed.bucket)
    except Exception as exc:  # noqa: BLE001 - only "no answer" matters here; the request itself tells the rest
        err = storage_error(exc, s3=config, uri=str(parsed))
        if err is not None and err.kind == "unreachable":
            raise err from None


def _first_contact_gcs(config: S3Config, parsed: ParsedUri) -> None:
    """S3's first contact for GCS: Google's client retries a missing credential (no token, no metadata server)
    as a passing outage, for the whole retry window; one lookup of the bucket under the first-contact window
    tells a wrong setup in seconds."""
    fs = gcs_filesystem(config.gcs_settings, budget.FIRST_CONTACT_S)
    try:
        fs.get_file_info(parsed.bucket)
    except OSError as exc:
        err = storage_error(exc, s3=config, uri=str(parsed))
        if err is not None and err.kind in ("unreachable", "credentials"):
            raise err from None
    budget.mark_answered(config.gcs_settings.endpoint)


def read_bytes(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> bytes:
    """The whole object. Raises ``FileNotFoundError`` when it does not exist (local or S3)."""
    parsed = parse_uri(uri)
    fs, path = _resolve_parsed(parsed, s3)
    try:
        return _request(parsed, s3, "reading", lambda: _read_all(fs, path))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(f"{parsed} does not exist") from exc
        if _unreachable(exc):
            raise  # asking again whether it exists would wait out the window a second time
        if not _exists(fs, path):
            raise FileNotFoundError(f"{parsed} does not exist") from exc
        raise


def _read_all(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str | os.PathLike[str], data: bytes, *, s3: S3Config | None = None) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one.

    Locally: a temporary file in the same directory, then ``os.replace``. In object storage an upload (a PUT,
    a completed multipart or resumable upload, a committed block list) is already all-or-nothing.
    """
    parsed = parse_uri(uri)
    if parsed.is_remote:
        fs, path = _resolve_parsed(parsed, s3)

        def put() -> None:
            with fs.open_output_stream(path) as out:
                out.write(data)
        _request(parsed, s3, "writing", put)
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
    return _info(uri, s3).type == pafs.FileType.File


def file_size(uri: str | os.PathLike[str], *, s3: S3Config | None = None) -> int | None:
    """Size in bytes, or None when ``uri`` is not an existing object or file."""
    info = _info(uri, s3)
    return info.size if info.type == pafs.FileType.File else None


def _info(uri: str | os.PathLike[str], s3: S3Config | None) -> pafs.FileInfo:
    parsed = parse_uri(uri)
    fs, path = _resolve_parsed(parsed, s3)
    return _request(parsed, s3, "looking up", lambda: fs.get_file_info(path))


def _request(parsed: ParsedUri, s3: S3Config | None, doing: str, call: Callable[[], _T]) -> _T:
    """One pyarrow request. On S3 it is announced if slow, and its answer or failure goes on the outage clock."""
    if not parsed.is_s3:
        return call()
    config = s3 or S3Config.from_env()
    started = budget.clock()
    with budget.announced_if_slow(config, f"{doing} {parsed}"):
        try:
            out = call()
        except OSError as exc:
            if _unreachable(exc):
                budget.note_failure(config, started)
            else:  # the store answered, if only to refuse
                budget.mark_answered(config.endpoint)
            raise
    budget.mark_answered(config.endpoint)
    return out


def _unreachable(exc: OSError) -> bool:
    return budget.kind_of(exc) == "unreachable"


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError:
        return True  # cannot tell: let the original error through


def _is_not_found(exc: OSError) -> bool:
    text = str(exc)
    return "NoSuchKey" in text or "NO_SUCH_KEY" in text or "Path does not exist" in text


def subdirectories(uri: str | os.PathLike[str], s3: S3Config | None = None) -> list[str]:
    """Names of the directories right under ``uri``, sorted (none when it does not exist).

    On S3, Azure and local disk pyarrow's listing reports them; on GCS it reports only directory-marker
    objects, so the names come from the listing's prefixes there (:func:`~ood_audit.io.clouds.gcs_subdirectories`).
    """
    parsed = parse_uri(uri)
    fs, path = _resolve_parsed(parsed, s3)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    names = {i.base_name for i in infos if i.type == pafs.FileType.Directory}
    if parsed.cloud == "gcs":
        names.update(gcs_subdirectories((s3 or S3Config.from_env()).gcs_settings, parsed.bucket, parsed.key))
    return sorted(names)


def store_name(parsed: ParsedUri, s3: S3Config | None) -> str:
    """The store that holds ``parsed``, as messages name it (an endpoint, or the cloud's service)."""
    config = s3 or S3Config.from_env()
    if parsed.cloud == "gcs":
        return config.gcs_settings.endpoint
    if parsed.cloud == "azure":
        return config.azure_settings.endpoint
    return config.endpoint if parsed.is_s3 else "local disk"


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
                err = storage_error(exc, s3=s3)
                response = getattr(exc, "response", None) or {}
                # A listing answered 404 whatever its code: the bucket is what was not found.
                if (err is not None and err.kind == "no_bucket") or \
                        response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise StorageError(f"no such bucket at {(s3 or S3Config.from_env()).endpoint}: s3://{parsed.bucket}"
                                       f" (the output root {root}); create it or fix --output", "no_bucket") from None
                raise
        elif parsed.is_remote:
            fs, _ = _resolve_parsed(parsed, s3)
            if fs.get_file_info(parsed.bucket).type == pafs.FileType.NotFound:
                word = "container" if parsed.cloud == "azure" else "bucket"
                raise StorageError(f"no such {word} at {store_name(parsed, s3)}: {parsed.with_key('')} (the output "
                                   f"root {root}); create it or fix --output", "no_bucket") from None
        write_bytes(probe, b"ood-audit write probe\n", s3=s3)
        fs, path = resolve(probe, s3)
        fs.delete_file(path)
    except StorageError:
        raise
    except OSError as exc:
        if not parsed.is_remote:
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
