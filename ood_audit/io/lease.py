"""One holder at a time for a piece of work under an output root: a lease object beside the work's state.

Used by the nightly job (:mod:`ood_audit.nightly.run`, one night at a time per output root) and by the scan
(one driver per run id, ``<output>/runs/<run_id>/lease.json``). The lease object is::

    {"holder": <random token>, "host", "pid", "run", "acquired_at", "renewed_at", "ttl_s"}

- **Acquire** writes it with a conditional write that fails when the object exists (S3 ``If-None-Match:
  *``; locally a complete file linked into place). Of two starters, exactly one wins.
- **Held** by another run: the second run stops with :class:`LeaseHeld` (its own exit status), naming the
  holder and when the lease would become stale. It touches nothing else.
- **Renew**: while it runs, the holder rewrites the lease every ``ttl_s / 3`` with a conditional write on
  the ETag it last wrote (S3 ``If-Match``). A live holder's lease is therefore never older than a third of
  its TTL.
- **Stale** means both: not renewed for ``ttl_s`` (so its holder is dead, or hung beyond recovery), and,
  when the holder ran on this host, its process is gone. With ``dead_holder_is_stale`` a holder on this
  host whose process is gone is stale at once, whatever its age (a scan driver killed and started again by
  hand resumes at once; from another host it waits for the TTL). So is a lease of this very process that
  it no longer holds (its release failed, e.g. while storage was down). A stale lease is taken over by a conditional
  write on the ETag that was read, so of two runs taking over, exactly one wins.
- **Lost**: if a renewal finds another holder (this run was presumed dead, e.g. frozen past its TTL), the
  run is told at its next stage boundary (:meth:`Lease.check`) and stops instead of racing the new holder.
- **Release** deletes the lease if it is still ours; a run killed without releasing leaves a lease that
  becomes stale after ``ttl_s``.

Locally (a path, not ``s3://``) the compare-and-replace is guarded by an ``flock`` on a side file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from ood_audit.errors import EXIT_LEASE_HELD, OodAuditError
from ood_audit.io.fs import S3Config
from ood_audit.io.storage_errors import storage_error
from ood_audit.io.uri import parse_uri

log = logging.getLogger(__name__)


class LeaseHeld(OodAuditError):
    """Another live run holds the lease."""

    exit_code = EXIT_LEASE_HELD


class LeaseLost(OodAuditError):
    """This run's lease was taken over while it ran (it was presumed dead)."""


_LIVE: set[str] = set()  # tokens of the leases this process holds now


class _Conflict(Exception):
    """A conditional write lost its race."""


class Lease:
    """The lease object at ``uri``. Use as a context manager: ``with Lease(uri, ttl_s, run=...):``."""

    def __init__(self, uri: str, ttl_s: float, *, run: str = "", s3: S3Config | None = None,
                 now: Any = None, dead_holder_is_stale: bool = False) -> None:
        self.uri = uri
        self.ttl_s, self.run = float(ttl_s), run
        self.dead_holder_is_stale = dead_holder_is_stale
        self.store = _S3Store(self.uri, s3) if parse_uri(self.uri).is_s3 else _LocalStore(parse_uri(self.uri).key)
        self.token = secrets.token_hex(8)
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release ----------------------------------------------------------------------------

    def acquire(self) -> Lease:
        doc = self._doc(acquired=self._now())
        try:
            self._etag = self.store.create(doc)
        except _Conflict:
            current, etag = self.store.read()
            if current is None:  # released between our write and our read: try once more
                return self.acquire()
            why = self._stale(current)
            if why is None:
                raise LeaseHeld(self._held_message(current)) from None
            try:
                self._etag = self.store.replace(doc, etag)
            except _Conflict:
                raise LeaseHeld(f"lease {self.uri} was just taken over by another run; not starting") from None
            log.warning("took over a stale lease of run %s on %s (%s)", current.get("run"), current.get("host"), why)
        _LIVE.add(self.token)
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        _LIVE.discard(self.token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        current, etag = self.store.read()
        if current is not None and current.get("holder") == self.token:
            self.store.delete(etag)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another run took the lease over (call between stages)."""
        if self._lost:
            raise LeaseLost(self._lost)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- renewal ---------------------------------------------------------------------------------------

    def renew(self) -> None:
        """Rewrite the lease with a fresh ``renewed_at``, only if it is still ours."""
        current, etag = self.store.read()
        if current is None or current.get("holder") != self.token:
            holder = "nobody" if current is None else f"run {current.get('run')} on {current.get('host')}"
            self._lost = f"lease {self.uri} now belongs to {holder}; this run stopped to avoid racing it"
            self._stop.set()
            log.error(self._lost)
            return
        try:
            self._etag = self.store.replace(self._doc(acquired=_parse(current["acquired_at"])), etag)
        except _Conflict:
            self._lost = f"lease {self.uri} changed while renewing; this run stopped to avoid racing another"
            self._stop.set()

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(self.ttl_s / 3.0, 0.05)):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next tick
                log.warning("lease renewal failed (%s); retrying", exc)

    # -- helpers ---------------------------------------------------------------------------------------

    def _doc(self, *, acquired: datetime) -> dict[str, Any]:
        return {"holder": self.token, "host": socket.gethostname(), "pid": os.getpid(), "run": self.run,
                "acquired_at": acquired.isoformat(), "renewed_at": self._now().isoformat(), "ttl_s": self.ttl_s}

    def _stale(self, doc: dict[str, Any]) -> str | None:
        """Why ``doc`` is stale, or None while its holder may be alive."""
        try:
            renewed, ttl = _parse(doc["renewed_at"]), float(doc["ttl_s"])
        except (KeyError, TypeError, ValueError):
            return "its content is unreadable"
        age = (self._now() - renewed).total_seconds()
        same_host = doc.get("host") == socket.gethostname()
        if self.dead_holder_is_stale and same_host and not _pid_alive(doc.get("pid")):
            return f"its process {doc.get('pid')} on this host is gone"
        if self.dead_holder_is_stale and same_host and doc.get("pid") == os.getpid() and doc.get("holder") not in _LIVE:
            return "its holder in this process has ended (it could not be released)"
        if age <= ttl:
            return None
        if same_host and _pid_alive(doc.get("pid")):
            return None  # same host, process still there: hung, not dead; a person must decide
        return f"not renewed for {age:.0f} s > ttl {ttl:.0f} s"

    def _held_message(self, doc: dict[str, Any]) -> str:
        try:
            stale_at = _parse(doc["renewed_at"]) + timedelta(seconds=float(doc["ttl_s"]))
            when = f"; it becomes stale at {stale_at.isoformat(timespec='seconds')} if not renewed"
        except (KeyError, TypeError, ValueError):
            when = ""
        return (f"another run holds the lease {self.uri} (run {doc.get('run')!r} on {doc.get('host')} pid "
                f"{doc.get('pid')}, since {doc.get('acquired_at')}){when}; not starting")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _encode(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8")


class _S3Store:
    """Conditional writes with boto3 (``If-None-Match`` / ``If-Match`` on PutObject). The client's retries
    keep the storage budget; a failure of the store is a :class:`~ood_audit.errors.StorageError`."""

    def __init__(self, uri: str, s3: S3Config | None) -> None:
        p = parse_uri(uri)
        self.uri, self.s3 = uri, s3
        self.bucket, self.key = p.bucket, p.key
        self.client = (s3 or S3Config.from_env()).client()

    def create(self, doc: dict[str, Any]) -> str:
        return self._put(doc, IfNoneMatch="*")

    def replace(self, doc: dict[str, Any], etag: str | None) -> str:
        return self._put(doc, IfMatch=etag or '"none"')

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        with self._storage_failures():
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except self.client.exceptions.NoSuchKey:
                return None, None
            body = r["Body"].read()
        try:
            return json.loads(body), r["ETag"]
        except ValueError:
            return {}, r["ETag"]

    def delete(self, etag: str | None) -> None:
        with self._storage_failures():
            self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def _put(self, doc: dict[str, Any], **condition: str) -> str:
        from botocore.exceptions import ClientError

        with self._storage_failures():
            try:
                return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=_encode(doc),
                                              **condition)["ETag"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise _Conflict() from None
                raise

    @contextmanager
    def _storage_failures(self) -> Iterator[None]:
        try:
            yield
        except _Conflict:
            raise
        except Exception as exc:  # noqa: BLE001 - only failures of the store are translated
            err = storage_error(exc, s3=self.s3, uri=self.uri)
            if err is None:
                raise
            raise err from None


class _LocalStore:
    """The same protocol on a local path: create by linking a complete file, ``flock``-guarded compare-and-replace."""

    def __init__(self, path: str) -> None:
        self.path = path

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
        import fcntl

        data = _encode(doc)
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                _, current = self.read()
                if current != etag:
                    raise _Conflict()
                tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return _digest(data)

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), _digest(data)
        except ValueError:
            return {}, _digest(data)

    def delete(self, etag: str | None) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
