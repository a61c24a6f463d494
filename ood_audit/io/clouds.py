"""Google Cloud Storage and Azure Blob Storage settings, and their pyarrow filesystems (``gs://``, ``az://``,
``abfs[s]://``).

They ride along in :class:`~ood_audit.io.fs.S3Config` (its ``gcs`` and ``azure`` fields), the one settings
object every process gets, so a Ray task reaches the same stores as its driver. Plain values only: they pickle
into tasks; each process builds (and caches) its own filesystem from them.

Where settings come from, first match wins (each cloud's standard chain; explicit values for tests and
emulators):

- **GCS**: the endpoint from ``STORAGE_EMULATOR_HOST`` (the variable Google's own clients read for an
  emulator; requests are then anonymous), else Google's; credentials from Google's chain
  (``GOOGLE_APPLICATION_CREDENTIALS``, then the metadata server), which pyarrow resolves in each process.
- **Azure**: ``AZURE_STORAGE_CONNECTION_STRING`` (``AccountName``, ``AccountKey`` or
  ``SharedAccessSignature``, ``BlobEndpoint``), else ``AZURE_STORAGE_ACCOUNT_NAME`` with
  ``AZURE_STORAGE_ACCOUNT_KEY`` or ``AZURE_STORAGE_SAS_TOKEN`` and an optional ``AZURE_STORAGE_BLOB_ENDPOINT``;
  with neither key nor SAS, ``DefaultAzureCredential`` (environment, workload identity, managed identity).
  An ``abfs://container@account.dfs.core.windows.net/`` URI names its account itself. As with AWS keys, a key
  found in the environment is not copied into the settings: it does not travel in task arguments.

Retries: GCS requests ride out ``retry_s`` (the same window as S3's, pyarrow's ``retry_time_limit``); Azure's
client retries on its own schedule (about 6 s before it gives up on a dead endpoint, measured here).
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ood_audit.errors import ConfigError

GCS_ENDPOINT_ENV = "STORAGE_EMULATOR_HOST"
AZURE_ENV = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
             "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_BLOB_ENDPOINT")


def _endpoint_parts(value: str, name: str) -> tuple[str, str]:
    """``http://127.0.0.1:4443`` -> (``http``, ``127.0.0.1:4443``); a bare ``host:port`` means http."""
    text = value if "://" in value else f"http://{value}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} {value!r} must look like http://host:port or https://host")
    return parts.scheme, parts.netloc


@dataclass(frozen=True)
class GcsConfig:
    """Where GCS is. ``endpoint_url`` set means an emulator, reached without credentials."""

    endpoint_url: str | None = None
    project_id: str | None = None

    def __post_init__(self) -> None:
        if self.endpoint_url:
            _endpoint_parts(self.endpoint_url, "GCS endpoint (STORAGE_EMULATOR_HOST)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GcsConfig:
        env = os.environ if environ is None else environ
        return cls(env.get(GCS_ENDPOINT_ENV) or None,
                   env.get("GOOGLE_CLOUD_PROJECT") or env.get("CLOUDSDK_CORE_PROJECT") or None)

    @property
    def endpoint(self) -> str:
        """The store as messages name it."""
        return self.endpoint_url or "Google Cloud Storage"

    def env(self) -> dict[str, str]:
        out = {GCS_ENDPOINT_ENV: self.endpoint_url} if self.endpoint_url else {}
        if self.project_id:
            out["GOOGLE_CLOUD_PROJECT"] = self.project_id
        return out


@dataclass(frozen=True)
class AzureConfig:
    """Which Azure storage account, how to sign, and (for an emulator) where its blob endpoint is."""

    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    blob_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.account_key and self.sas_token:
            raise ConfigError("Azure: give an account key or a SAS token, not both")
        if self.blob_endpoint:
            _endpoint_parts(self.blob_endpoint, "Azure blob endpoint (AZURE_STORAGE_BLOB_ENDPOINT)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AzureConfig:
        """The account and endpoint (module docstring); keys stay in the environment."""
        env = os.environ if environ is None else environ
        conn = _connection_string(env.get("AZURE_STORAGE_CONNECTION_STRING", ""))
        account = conn.get("AccountName") or env.get("AZURE_STORAGE_ACCOUNT_NAME") or None
        endpoint = conn.get("BlobEndpoint") or env.get("AZURE_STORAGE_BLOB_ENDPOINT") or None
        return cls(account, None, None, endpoint)

    @property
    def endpoint(self) -> str:
        return self.blob_endpoint or f"Azure Blob Storage ({self.account_name or 'no account set'})"

    def env(self) -> dict[str, str]:
        out = {}
        if self.account_name:
            out["AZURE_STORAGE_ACCOUNT_NAME"] = self.account_name
        if self.blob_endpoint:
            out["AZURE_STORAGE_BLOB_ENDPOINT"] = self.blob_endpoint
        if self.account_key:
            out["AZURE_STORAGE_ACCOUNT_KEY"] = self.account_key
        if self.sas_token:
            out["AZURE_STORAGE_SAS_TOKEN"] = self.sas_token
        return out

    def signing(self, environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
        """``(account_key, sas_token)``: explicit ones, else the environment's; both None means the default
        credential chain."""
        if self.account_key or self.sas_token:
            return self.account_key, self.sas_token
        env = os.environ if environ is None else environ
        conn = _connection_string(env.get("AZURE_STORAGE_CONNECTION_STRING", ""))
        key = conn.get("AccountKey") or env.get("AZURE_STORAGE_ACCOUNT_KEY") or None
        sas = conn.get("SharedAccessSignature") or env.get("AZURE_STORAGE_SAS_TOKEN") or None
        return key, (None if key else sas)


def _connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` pairs (values may hold ``=``, as keys and SAS tokens do)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out[name] = value
    return out


def gcs_filesystem(config: GcsConfig, retry_s: float) -> pafs.GcsFileSystem:
    """A pyarrow GCS filesystem for ``config`` (cached per process)."""
    return _gcs(config, max(1, int(retry_s)), os.getpid())


@functools.lru_cache(maxsize=8)
def _gcs(config: GcsConfig, retry_s: int, pid: int) -> pafs.GcsFileSystem:
    kwargs: dict[str, Any] = {"retry_time_limit": datetime.timedelta(seconds=retry_s)}
    if config.project_id:
        kwargs["project_id"] = config.project_id
    if config.endpoint_url:
        scheme, netloc = _endpoint_parts(config.endpoint_url, "GCS endpoint")
        kwargs.update(anonymous=True, endpoint_override=netloc, scheme=scheme)
    return pafs.GcsFileSystem(**kwargs)


def azure_filesystem(config: AzureConfig, account: str = "") -> pafs.AzureFileSystem:
    """A pyarrow Azure filesystem for ``config``'s account, or ``account`` when a URI names one (cached per
    process and signing keys, so rotated keys take effect)."""
    name = account or config.account_name
    if not name:
        raise ConfigError("Azure URI without a storage account: set AZURE_STORAGE_ACCOUNT_NAME (or "
                          "AZURE_STORAGE_CONNECTION_STRING), or write abfs://container@ACCOUNT.dfs.core.windows.net/")
    return _azure(config, name, config.signing(), os.getpid())


@functools.lru_cache(maxsize=8)
def _azure(config: AzureConfig, account: str, signing: tuple[str | None, str | None], pid: int) -> pafs.AzureFileSystem:
    key, sas = signing
    kwargs: dict[str, Any] = {"account_name": account}
    if key:
        kwargs["account_key"] = key
    elif sas:
        kwargs["sas_token"] = sas if sas.startswith("?") else f"?{sas}"  # pyarrow wants the query's "?"
    if config.blob_endpoint:
        # An emulator serves blob and Data Lake calls on one port: without the dfs_* pair pyarrow tries to
        # resolve <account>.dfs.core.windows.net first and waits for it on every call.
        scheme, netloc = _endpoint_parts(config.blob_endpoint, "Azure blob endpoint")
        kwargs.update(blob_storage_authority=netloc, blob_storage_scheme=scheme,
                      dfs_storage_authority=netloc, dfs_storage_scheme=scheme)
    return pafs.AzureFileSystem(**kwargs)


def needs_extra(extra: str, module: str) -> ConfigError:
    """The one line for a cloud feature whose client library is not installed."""
    return ConfigError(f"{module} is needed here (conditional writes and directory listings on "
                       f"{'GCS' if extra == 'gcs' else 'Azure'}): pip install 'ood-audit[{extra}]'")


def gcs_client(config: GcsConfig) -> Any:
    """Google's own storage client for ``config`` (cached per process): the lease's conditional writes and
    directory listings, which pyarrow's GCS filesystem does not offer."""
    return _gcs_client(config, os.getpid())


@functools.lru_cache(maxsize=4)
def _gcs_client(config: GcsConfig, pid: int) -> Any:
    try:
        from google.cloud import storage
    except ImportError:
        raise needs_extra("gcs", "google-cloud-storage") from None
    if config.endpoint_url:  # an emulator: no credentials, its own endpoint
        from google.auth.credentials import AnonymousCredentials

        endpoint = config.endpoint_url if "://" in config.endpoint_url else f"http://{config.endpoint_url}"
        return storage.Client(project=config.project_id or "emulator", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": endpoint})
    return storage.Client(project=config.project_id)


def gcs_subdirectories(config: GcsConfig, bucket: str, prefix: str) -> list[str]:
    """Names of the "directories" right under ``prefix``: the listing's common prefixes. pyarrow's GCS
    filesystem reports only directory-marker objects as directories, never the prefixes that objects imply,
    so a folder a scan wrote (``runs/<id>/...``) would not be found through it."""
    base = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    pages = gcs_client(config).list_blobs(bucket, prefix=base, delimiter="/")
    for _ in pages:  # the prefixes are known once the pages are read
        pass
    return sorted(p[len(base):].rstrip("/") for p in pages.prefixes)
