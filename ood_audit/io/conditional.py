"""Create-only and compare-and-swap writes on GCS and Azure: what the lease and the bundle need that pyarrow's
filesystems do not offer (SPEC §9's lease protocol, README "Scheduling it nightly").

Each cloud's own client does the conditional request, the way S3's ``If-None-Match`` / ``If-Match`` do:

- **GCS** (``google-cloud-storage``, the ``gcs`` extra): create with ``ifGenerationMatch=0``; replace and
  delete with ``ifGenerationMatch=<generation read>``. The version is the object's generation.
- **Azure** (``azure-storage-blob``, the ``azure`` extra): create with ``If-None-Match: *``
  (``overwrite=False``); replace and delete with ``If-Match: <ETag read>``. The version is the ETag.

A refused condition (GCS 412; Azure 409 on create, 412 otherwise) is :class:`Conflict`. Every other failure of
the store is a :class:`~ood_audit.errors.StorageError` with the same kinds and exit statuses as S3's.

``read`` returns the object's age **on the store's clock**: the answer's ``Date`` minus the object's
``Last-Modified``, both stamped by the service, as the lease's staleness rule requires. Credentials: Google's
default chain (anonymous against an emulator), and for Azure the account key or SAS token of the settings,
else ``DefaultAzureCredential``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import quote

from ood_audit.errors import ConfigError, StorageError
from ood_audit.io.clouds import AzureConfig, gcs_client, needs_extra
from ood_audit.io.storage_errors import cloud_error
from ood_audit.io.uri import ParsedUri


class Conflict(Exception):
    """The store refused a conditional write: the object exists, or changed since it was read."""


class CloudObjects(Protocol):
    """Conditional operations on the objects of one bucket or container."""

    def create(self, key: str, body: bytes) -> str: ...
    def replace(self, key: str, body: bytes, version: str | None) -> str: ...
    def read(self, key: str) -> tuple[bytes, str, float] | None: ...
    def delete(self, key: str, version: str | None) -> None: ...


def objects_for(parsed: ParsedUri, s3: Any) -> CloudObjects:
    """The conditional-write client for the bucket or container of a ``gs://`` or ``az://`` URI. ``s3`` is the
    process's :class:`~ood_audit.io.fs.S3Config` (its ``gcs`` and ``azure`` settings), or None."""
    from ood_audit.io.fs import S3Config

    config = s3 or S3Config.from_env()
    if parsed.cloud == "gcs":
        return GcsObjects(parsed, config)
    if parsed.cloud == "azure":
        return AzureObjects(parsed, config)
    raise ConfigError(f"{parsed} is not on GCS or Azure")


def _age(date: str | None, last_modified: datetime) -> float:
    now = parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
    return (now - last_modified).total_seconds()


# -- GCS ---------------------------------------------------------------------------------------------------

class GcsObjects:
    """Conditional writes in one GCS bucket; the version is the generation."""

    def __init__(self, parsed: ParsedUri, s3: Any) -> None:
        self.parsed, self.s3 = parsed, s3
        self.client = gcs_client(s3.gcs_settings)
        self.bucket = self.client.bucket(parsed.bucket)

    def create(self, key: str, body: bytes) -> str:
        return self._upload(key, body, 0)

    def replace(self, key: str, body: bytes, version: str | None) -> str:
        return self._upload(key, body, int(version or -1))  # deleted since read: 412, the condition fails

    def _upload(self, key: str, body: bytes, generation: int) -> str:
        blob = self.bucket.blob(key)
        # A multipart upload: the emulator honours the precondition on it, not on a bare media upload.
        try:
            with self._failures(key):
                blob.upload_from_string(body, content_type="application/json", if_generation_match=generation)
        except FileNotFoundError:  # an upload is answered 404 only for its bucket
            raise cloud_error("no_bucket", str(self.parsed.with_key(key)), s3=self.s3, detail="404") from None
        return str(blob.generation)

    def read(self, key: str) -> tuple[bytes, str, float] | None:
        # One GET of the media through the client's authorised session: body, generation and the service's
        # Date and Last-Modified in one answer (the object API would need two requests and gives no Date).
        url = (f"{self.client._connection.API_BASE_URL}/download/storage/v1/b/{quote(self.parsed.bucket, safe='')}"
               f"/o/{quote(key, safe='')}?alt=media")
        with self._failures(key):
            resp = self.client._http.get(url, timeout=30)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._status_error(key, resp.status_code, resp.text[:200])
        modified = parsedate_to_datetime(resp.headers["Last-Modified"])
        return resp.content, resp.headers["X-Goog-Generation"], _age(resp.headers.get("Date"), modified)

    def delete(self, key: str, version: str | None) -> None:
        try:
            with self._failures(key):
                self.bucket.blob(key).delete(if_generation_match=int(version or -1))
        except FileNotFoundError:
            pass  # already gone

    def _status_error(self, key: str, status: int, detail: str) -> StorageError:
        kind = {401: "credentials", 403: "denied"}.get(status, "unreachable" if status >= 500 else "denied")
        return cloud_error(kind, str(self.parsed.with_key(key)), s3=self.s3, detail=f"HTTP {status} {detail}")

    @contextmanager
    def _failures(self, key: str) -> Iterator[None]:
        from google.api_core import exceptions as gex

        try:
            yield
        except gex.PreconditionFailed:
            raise Conflict() from None
        except gex.NotFound as exc:
            if "bucket" in str(exc).lower():
                raise cloud_error("no_bucket", str(self.parsed.with_key(key)), s3=self.s3, detail="404") from None
            raise FileNotFoundError(str(self.parsed.with_key(key))) from None
        except gex.GoogleAPICallError as exc:
            raise self._status_error(key, int(exc.code or 500), exc.message[:200]) from None
        except Exception as exc:  # noqa: BLE001 - transport and credential failures of the client
            raise _translated(exc, str(self.parsed.with_key(key)), self.s3) from None


# -- Azure -------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _azure_service(config: AzureConfig, account: str, signing: tuple[str | None, str | None], pid: int) -> Any:
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise needs_extra("azure", "azure-storage-blob") from None
    key, sas = signing
    if config.blob_endpoint:  # an emulator: path-style, http://host:port/<account>
        url = f"{config.blob_endpoint.rstrip('/').removesuffix('/' + account)}/{account}"
    else:
        url = f"https://{account}.blob.core.windows.net"
    if key:
        credential: Any = {"account_name": account, "account_key": key}
    elif sas:
        credential = sas.lstrip("?")
    else:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise needs_extra("azure", "azure-identity") from None
        credential = DefaultAzureCredential()
    return BlobServiceClient(account_url=url, credential=credential)


class AzureObjects:
    """Conditional writes in one Azure container; the version is the ETag."""

    def __init__(self, parsed: ParsedUri, s3: Any) -> None:
        self.parsed, self.s3 = parsed, s3
        settings = s3.azure_settings
        account = parsed.account or settings.account_name
        if not account:
            raise ConfigError("Azure URI without a storage account: set AZURE_STORAGE_ACCOUNT_NAME")
        self.container = _azure_service(settings, account, settings.signing(), os.getpid()) \
            .get_container_client(parsed.bucket)

    def create(self, key: str, body: bytes) -> str:
        with self._failures(key):
            return str(self.container.get_blob_client(key).upload_blob(body, overwrite=False)["etag"])

    def replace(self, key: str, body: bytes, version: str | None) -> str:
        from azure.core import MatchConditions

        try:
            with self._failures(key):
                return str(self.container.get_blob_client(key).upload_blob(
                    body, overwrite=True, etag=version or '"none"',
                    match_condition=MatchConditions.IfNotModified)["etag"])
        except FileNotFoundError:  # deleted since it was read: the condition cannot hold
            raise Conflict() from None

    def read(self, key: str) -> tuple[bytes, str, float] | None:
        date: list[str | None] = []
        try:
            with self._failures(key):
                download = self.container.get_blob_client(key).download_blob(
                    raw_response_hook=lambda r: date.append(r.http_response.headers.get("Date")))
                body = download.readall()
        except FileNotFoundError:
            return None
        props = download.properties
        return body, str(props.etag), _age(date[0] if date else None, props.last_modified)

    def delete(self, key: str, version: str | None) -> None:
        from azure.core import MatchConditions

        try:
            with self._failures(key):
                self.container.get_blob_client(key).delete_blob(etag=version or '"none"',
                                                                match_condition=MatchConditions.IfNotModified)
        except FileNotFoundError:
            pass  # already gone

    @contextmanager
    def _failures(self, key: str) -> Iterator[None]:
        from azure.core import exceptions as aex

        uri = str(self.parsed.with_key(key))
        try:
            yield
        except (aex.ResourceExistsError, aex.ResourceModifiedError):
            raise Conflict() from None
        except aex.ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise cloud_error("no_bucket", uri, s3=self.s3, detail="ContainerNotFound") from None
            raise FileNotFoundError(uri) from None
        except aex.ClientAuthenticationError as exc:
            raise cloud_error("credentials", uri, s3=self.s3, detail=str(exc.error_code or exc.status_code)) from None
        except aex.HttpResponseError as exc:
            status = int(exc.status_code or 500)
            kind = "unreachable" if status >= 500 else "denied"
            raise cloud_error(kind, uri, s3=self.s3, detail=f"HTTP {status} {exc.error_code or ''}".strip()) from None
        except aex.AzureError as exc:  # no answer: connection refused, DNS, timeouts
            raise cloud_error("unreachable", uri, s3=self.s3, detail=type(exc).__name__) from None


def _translated(exc: BaseException, uri: str, s3: Any) -> BaseException:
    """A client failure without an HTTP answer: credentials the chain could not find, or no connection."""
    name = type(exc).__name__
    if name in ("DefaultCredentialsError", "RefreshError"):  # google.auth: no credentials found, or refused
        return cloud_error("credentials", uri, s3=s3, detail=name)
    if isinstance(exc, OSError) or any(w in name for w in ("Connection", "Timeout", "TransportError")):
        return cloud_error("unreachable", uri, s3=s3, detail=name)
    return exc


def create_only(parsed: ParsedUri, data: bytes, s3: Any) -> None:
    """Write ``data`` at ``parsed`` only if no object is there yet (:class:`Conflict` otherwise)."""
    objects_for(parsed, s3).create(parsed.key, data)

