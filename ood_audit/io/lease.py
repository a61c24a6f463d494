"""One holder at a time for a piece of work under an output root: a lease object beside the work's state.

Used by the nightly job (:mod:`ood_audit.nightly.run`, one night at a time per output root) and by the scan
(one driver per run id, ``<output>/runs/<run_id>/lease.json``). The lease object is ``{"holder": <random
token>, "host", "pid", "pid_start", "run", "acquired_at", "renewed_at", "ttl_s"}``; the two times are the
holder's wall clock, for people reading it: no decision uses them.

- **Acquire**: a write that fails when the object exists (S3 ``If-None-Match: *``; locally a complete file
  linked into place); of two starters exactly one wins. First, once per S3 endpoint and bucket in a
  process, :meth:`~ood_audit.io.lease_stores.S3LeaseStore.probe` checks that the store refuses a second put-if-absent with 412; where it
  does not, no lease can keep two runs apart and the run refuses to start (one line).
- **Held** by another run: the second run stops with :class:`LeaseHeld` (its own exit status), touching nothing.
- **Renew** every ``ttl_s / 3`` by a write conditional on the ETag last written (S3 ``If-Match``).
- **Stale** is judged on the *store's* clock: the object's age is the answer's ``Date`` minus its
  ``LastModified`` (locally: the mtime of a side file touched now minus the lease file's, both set by the
  file system, NFS included). Two stamps of one clock: a skewed host can neither steal a lease nor lose
  its own. (Watching the ETag stay unchanged for ``ttl_s`` of the taker's monotonic clock would make every
  taker wait a whole TTL, even for a lease left hours ago.) Older than its ``ttl_s`` is stale, whatever
  its holder's process, which has fenced itself by then (below). With ``dead_holder_is_stale``, a holder
  on this host whose process is gone is stale at once (a scan driver started again by hand resumes at
  once); a process is its pid *and* start time (``/proc``), so a reused pid keeps no dead holder alive.
  So is a lease of this very process that it no longer holds (its release failed). A stale lease is
  taken over by a write conditional on the ETag read: of two takers, exactly one wins.
- **Fence**: :meth:`Lease.check`, called right before each commit and between stages, raises
  :class:`LeaseLost` once another holder was seen, or once ``monotonic() - last successful renewal > 2/3 ·
  ttl_s``. A renewal's time is taken *before* its write is sent, so ``LastModified`` is no earlier, and
  a taker waits ``ttl_s`` after that: a frozen or cut-off holder stops committing ``ttl_s / 3`` before
  anyone can take over, whatever the hosts' clocks say. The TTL must exceed ``--storage-retry-s``
  (:func:`check_ttl`), or a renewal riding out an outage would find its lease taken over; a commit sent
  just before the fence closes lands in time if ``ttl_s / 3`` also covers its retry window, as the
  scan's default TTL does (:meth:`ood_audit.scan.config.ScanConfig.lease_ttl`).
- **Release** deletes the lease only if still ours: re-read and compare the holder, then delete on that
  ETag (S3 ``DeleteObject`` ``If-Match``: boto3 >= 1.35.67, honoured by SeaweedFS; a store ignoring it
  still had the re-read just before). A run killed without releasing leaves a lease stale after ``ttl_s``.

On GCS and Azure the same protocol runs on each cloud's own conditions (:mod:`ood_audit.io.conditional`):
create with ``ifGenerationMatch=0`` / ``If-None-Match: *``, renew, take over and release on the generation or
ETag read, staleness from the service's ``Date`` and ``Last-Modified``.

Locally (a path, not ``s3://``) compare-and-replace and -delete are guarded by an ``flock`` on a side file.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

from ood_audit.errors import EXIT_LEASE_HELD, ConfigError, OodAuditError
from ood_audit.io.conditional import Conflict
from ood_audit.io.fs import S3Config
from ood_audit.io.lease_stores import lease_store

log = logging.getLogger(__name__)

FENCE_SHARE = 2.0 / 3.0  # a holder commits nothing once its last renewal is older than this share of the TTL


class LeaseHeld(OodAuditError):
    """Another live run holds the lease."""

    exit_code = EXIT_LEASE_HELD


class LeaseLost(OodAuditError):
    """This run's lease was taken over, or could not be renewed in time: it must commit nothing more. Its
    status is the held lease's: another run has (or may now take) the work, and this one did its share."""

    exit_code = EXIT_LEASE_HELD


_LIVE: set[str] = set()  # tokens of the leases this process holds now


_Conflict = Conflict  # a refused conditional write, whichever store refused it


def check_ttl(ttl_s: float, retry_s: float, *, ttl_name: str, retry_name: str = "--storage-retry-s") -> None:
    """``ConfigError`` (one line naming both settings) unless the lease TTL is larger than the retry window."""
    if not float(ttl_s) > float(retry_s):
        raise ConfigError(f"{ttl_name} ({ttl_s:g} s) must be larger than {retry_name} ({retry_s:g} s): a renewal "
                          f"that rides out an outage must not find its lease taken over")


class Lease:
    """The lease object at ``uri``. Use as a context manager: ``with Lease(uri, ttl_s, run=...):``.

    ``now`` (the holder's wall clock) only stamps the informational times; tests inject a skewed one."""

    def __init__(self, uri: str, ttl_s: float, *, run: str = "", s3: S3Config | None = None,
                 now: Any = None, dead_holder_is_stale: bool = False) -> None:
        self.uri = uri
        self.ttl_s, self.run = float(ttl_s), run
        self.dead_holder_is_stale = dead_holder_is_stale
        self.store = lease_store(self.uri, s3)
        self.token = secrets.token_hex(8)
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._etag: str | None = None
        self._lost: str | None = None
        self._renewed = time.monotonic()  # monotonic time the last successful write of the lease was sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release ----------------------------------------------------------------------------

    def acquire(self) -> Lease:
        self.store.probe()
        doc = self._doc(acquired=self._now())
        sent = time.monotonic()
        try:
            self._etag = self.store.create(doc)
        except _Conflict:
            current, etag, age = self.store.read()
            if current is None:  # released between our write and our read: try once more
                return self.acquire()
            why = self._stale(current, age)
            if why is None:
                raise LeaseHeld(self._held_message(current, age)) from None
            sent = time.monotonic()
            try:
                self._etag = self.store.replace(doc, etag)
            except _Conflict:
                raise LeaseHeld(f"lease {self.uri} was just taken over by another run; not starting") from None
            log.warning("took over a stale lease of run %s on %s (%s)", current.get("run"), current.get("host"), why)
        self._renewed = sent
        _LIVE.add(self.token)
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        _LIVE.discard(self.token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        current, etag, _ = self.store.read()
        if current is not None and current.get("holder") == self.token:
            try:
                self.store.delete(etag)  # only that version: a taker's lease written since stays
            except _Conflict:
                log.warning("lease %s changed just before its release; left to its new holder", self.uri)

    def check(self) -> None:
        """The fence: raise :class:`LeaseLost` if another run took the lease over, or if the last successful
        renewal is older than 2/3 of the TTL (call right before each commit and between stages)."""
        if self._lost:
            raise LeaseLost(self._lost)
        since = time.monotonic() - self._renewed
        if since > FENCE_SHARE * self.ttl_s:
            raise LeaseLost(f"lease {self.uri} not renewed for {since:.1f} s (more than 2/3 of its ttl "
                            f"{self.ttl_s:g} s): another run may take it over, so this run commits nothing more")

    fence = check

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- renewal ---------------------------------------------------------------------------------------

    def renew(self) -> None:
        """Rewrite the lease with a fresh ``renewed_at``, only if it is still ours."""
        sent = time.monotonic()  # before the read: the write that follows is no earlier than this
        current, etag, _ = self.store.read()
        if current is None or current.get("holder") != self.token:
            holder = "nobody" if current is None else f"run {current.get('run')} on {current.get('host')}"
            self._lost = f"lease {self.uri} now belongs to {holder}; this run stopped to avoid racing it"
            self._stop.set()
            log.error(self._lost)
            return
        try:
            self._etag = self.store.replace(self._doc(acquired=current.get("acquired_at")), etag)
        except _Conflict:
            self._lost = f"lease {self.uri} changed while renewing; this run stopped to avoid racing another"
            self._stop.set()
            return
        self._renewed = sent

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(self.ttl_s / 3.0, 0.05)):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next tick
                log.warning("lease renewal failed (%s); retrying", exc)

    # -- helpers ---------------------------------------------------------------------------------------

    def _doc(self, *, acquired: Any) -> dict[str, Any]:
        acquired = acquired.isoformat() if isinstance(acquired, datetime) else acquired
        return {"holder": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "pid_start": process_start(os.getpid()), "run": self.run, "acquired_at": acquired,
                "renewed_at": self._now().isoformat(), "ttl_s": self.ttl_s}

    def _stale(self, doc: dict[str, Any], age: float) -> str | None:
        """Why ``doc`` (``age`` seconds old on the store's clock) is stale, or None while its holder may live."""
        try:
            ttl = float(doc["ttl_s"])
        except (KeyError, TypeError, ValueError):
            return "its content is unreadable"
        same_host = doc.get("host") == socket.gethostname()
        if self.dead_holder_is_stale and same_host and not holder_alive(doc):
            return f"its process {doc.get('pid')} on this host is gone"
        if self.dead_holder_is_stale and same_host and doc.get("pid") == os.getpid() and doc.get("holder") not in _LIVE:
            return "its holder in this process has ended (it could not be released)"
        if age <= ttl:
            return None
        return f"not renewed for {age:.0f} s > ttl {ttl:g} s (store clock)"

    def _held_message(self, doc: dict[str, Any], age: float) -> str:
        try:
            when = f"; it becomes stale in {max(float(doc['ttl_s']) - age, 0):.0f} s if not renewed"
        except (KeyError, TypeError, ValueError):
            when = ""
        return (f"another run holds the lease {self.uri} (run {doc.get('run')!r} on {doc.get('host')} pid "
                f"{doc.get('pid')}, since {doc.get('acquired_at')}){when}; not starting")


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot, ``/proc/<pid>/stat`` field 22), or None
    where there is no ``/proc``. With the pid it names one process: a pid is reused, the pair is not."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def holder_alive(doc: dict[str, Any]) -> bool:
    """Whether the process named by the lease ``doc`` (pid and start time) still runs on this host."""
    pid = doc.get("pid")
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        pass
    recorded = doc.get("pid_start")
    return recorded is None or process_start(int(pid)) in (None, recorded)
