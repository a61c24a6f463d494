"""Where a lease lives: one store class per kind of location, each with the same five operations (probe,
create, replace, read, delete) that :class:`~ood_audit.io.lease.Lease` runs its protocol on (see its module
docstring for the protocol, and why each condition is what it is).

- :class:`S3LeaseStore`: boto3's ``If-None-Match`` / ``If-Match`` on PutObject and DeleteObject;
- :class:`CloudLeaseStore`: GCS generations and Azure ETags, through :mod:`ood_audit.io.conditional`;
- :class:`LocalLeaseStore`: a complete file linked into place, ``flock``-guarded compare-and-replace.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from ood_audit.errors import ConfigError
from ood_audit.io.conditional import Conflict, objects_for
from ood_audit.io.fs import S3Config
from ood_audit.io.storage_errors import storage_error
from ood_audit.io.uri import parse_uri

_Conflict = Conflict  # a refused conditional write, whichever store refused it


def lease_store(uri: str, s3: S3Config | None) -> Any:
    """The store for a lease at ``uri``."""
    parsed = parse_uri(uri)
    if parsed.is_s3:
        return S3LeaseStore(uri, s3)
    return CloudLeaseStore(uri, s3) if parsed.is_remote else LocalLeaseStore(parsed.key)


def _encode(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8")


def _decode(data: bytes) -> dict[str, Any]:
    """The lease document; ``{}`` (stale as unreadable) for anything else."""
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


_PROBED: set[tuple[str, str]] = set()  # (endpoint, bucket) that refused a second put-if-absent
_PROBE_LOCK = threading.Lock()


class S3LeaseStore:
    """Conditional writes with boto3 (``If-None-Match`` / ``If-Match`` on PutObject and DeleteObject). The
    client's retries keep the storage budget; a failure of the store is a :class:`~ood_audit.errors.StorageError`."""

    def __init__(self, uri: str, s3: S3Config | None) -> None:
        p = parse_uri(uri)
        self.uri, self.s3 = uri, s3
        self.bucket, self.key = p.bucket, p.key
        self.endpoint = (s3 or S3Config.from_env()).endpoint_url or "aws"
        self.client = (s3 or S3Config.from_env()).client()

    def probe(self) -> None:
        """Once per endpoint and bucket: a second put-if-absent of one key must be refused (412), else
        ``ConfigError``. The probe key sits beside the lease (same permissions) and is deleted."""
        with _PROBE_LOCK:
            if (self.endpoint, self.bucket) in _PROBED:
                return
            key = f"{self.key}.probe-{secrets.token_hex(4)}"
            try:
                self._put_key(key, b"probe\n", IfNoneMatch="*")
                try:
                    self._put_key(key, b"probe again\n", IfNoneMatch="*")
                except _Conflict:
                    _PROBED.add((self.endpoint, self.bucket))
                    return
            finally:
                with self._storage_failures():
                    self.client.delete_object(Bucket=self.bucket, Key=key)
        raise ConfigError(f"object storage {self.endpoint} bucket {self.bucket} accepted a second put-if-absent "
                          f"(If-None-Match: *) of {key}: it does not honour conditional writes, so a lease "
                          f"cannot keep two runs apart; not starting")

    def create(self, doc: dict[str, Any]) -> str:
        return self._put_key(self.key, _encode(doc), IfNoneMatch="*")

    def replace(self, doc: dict[str, Any], etag: str | None) -> str:
        return self._put_key(self.key, _encode(doc), IfMatch=etag or '"none"')

    def read(self) -> tuple[dict[str, Any] | None, str | None, float]:
        """The lease, its ETag, and its age on the store's clock (the answer's ``Date`` - ``LastModified``)."""
        with self._storage_failures():
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except self.client.exceptions.NoSuchKey:
                return None, None, 0.0
            body = r["Body"].read()
        date = r.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")  # S3 always sends one
        now = parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
        age = (now - r["LastModified"]).total_seconds()
        return _decode(body), r["ETag"], age

    def delete(self, etag: str | None) -> None:
        with self._storage_failures():
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag or '"none"')

    def _put_key(self, key: str, body: bytes, **condition: str) -> str:
        with self._storage_failures():
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)["ETag"]

    @contextmanager
    def _storage_failures(self) -> Iterator[None]:
        """A refused condition (412, or 409 for a concurrent one) is :class:`_Conflict`; other failures of the
        store are a ``StorageError``."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - only failures of the store are translated
            resp = getattr(exc, "response", None)  # botocore's ClientError
            code = resp.get("Error", {}).get("Code") if isinstance(resp, dict) else None
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise _Conflict() from None
            err = storage_error(exc, s3=self.s3, uri=self.uri)
            if err is None:
                raise
            raise err from None


class CloudLeaseStore:
    """The same protocol on GCS (generation preconditions) and Azure (ETag conditions), through
    :mod:`ood_audit.io.conditional`; the probe is S3's."""

    def __init__(self, uri: str, s3: S3Config | None) -> None:
        p = parse_uri(uri)
        self.key, self.where = p.key, (p.cloud, p.account, p.bucket)
        self.objects = objects_for(p, s3)
        self.label = str(p.with_key(""))

    def probe(self) -> None:
        with _PROBE_LOCK:
            if self.where in _PROBED:
                return
            key = f"{self.key}.probe-{secrets.token_hex(4)}"
            self.objects.create(key, b"probe\n")
            try:
                try:
                    self.objects.create(key, b"probe again\n")
                except _Conflict:
                    _PROBED.add(self.where)
                    return
            finally:
                current = self.objects.read(key)
                if current is not None:
                    self.objects.delete(key, current[1])
        raise ConfigError(f"object storage {self.label} accepted a second create-only write of {key}: it does not "
                          "honour conditional writes, so a lease cannot keep two runs apart; not starting")

    def create(self, doc: dict[str, Any]) -> str:
        return self.objects.create(self.key, _encode(doc))

    def replace(self, doc: dict[str, Any], etag: str | None) -> str:
        return self.objects.replace(self.key, _encode(doc), etag)

    def read(self) -> tuple[dict[str, Any] | None, str | None, float]:
        got = self.objects.read(self.key)
        return (None, None, 0.0) if got is None else (_decode(got[0]), got[1], got[2])

    def delete(self, etag: str | None) -> None:
        self.objects.delete(self.key, etag)


class LocalLeaseStore:
    """The same protocol on a local path: create by linking a complete file, ``flock``-guarded compare-and-replace."""

    def __init__(self, path: str) -> None:
        self.path = path

    def probe(self) -> None:
        """Nothing to probe: ``link()`` refuses an existing name on every POSIX file system."""

    def create(self, doc: dict[str, Any]) -> str:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        data = _encode(doc)
        # Written in full under a private name, then linked into place: link() fails if the lease exists, and
        # a reader never sees a half-written lease (an O_EXCL create would show an empty file for a moment,
        # which a concurrent starter could take for a stale lease and replace).
        tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise _Conflict() from None
        finally:
            os.remove(tmp)
        return _digest(data)

    def replace(self, doc: dict[str, Any], etag: str | None) -> str:
        data = _encode(doc)
        with self._locked():
            if self.read()[1] != etag:
                raise _Conflict()
            tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        return _digest(data)

    def read(self) -> tuple[dict[str, Any] | None, str | None, float]:
        """The lease, its digest, and its age on the file system's clock: the mtime of the lock file,
        touched now (set by the file server on NFS), minus the lease file's."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
                mtime = os.fstat(fh.fileno()).st_mtime
        except FileNotFoundError:
            return None, None, 0.0
        with open(self.path + ".lock", "a") as lock:
            os.utime(lock.fileno())
            age = os.fstat(lock.fileno()).st_mtime - mtime
        return _decode(data), _digest(data), age

    def delete(self, etag: str | None) -> None:
        with self._locked():
            if self.read()[1] != etag:
                raise _Conflict()
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
