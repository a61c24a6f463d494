"""The storage settings every process shares: ``S3Config``, which also carries the GCS and Azure settings of
:mod:`ood_audit.io.clouds`, and the S3 clients and pyarrow filesystem each process builds from it.

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
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ood_audit.errors import ConfigError
from ood_audit.io import storage_errors as budget
from ood_audit.io.clouds import AzureConfig, GcsConfig

DEFAULT_REGION = "us-east-1"
DEFAULT_RETRY_S = 120.0
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


