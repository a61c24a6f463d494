"""Signed webhook sink (SPEC §12): POSTs batches of manifest lines to an HTTP endpoint, signed with HMAC-SHA256.

Each batch is one POST of JSON ``{"batch": ID, "run_id": ..., "queue": ..., "items": [manifest line, ...]}``,
the items exactly as a JSONL manifest has them (:func:`~ood_audit.sinks.items.manifest_line`). Headers:

- ``X-OOD-Audit-Timestamp``: Unix seconds when the batch was signed;
- ``X-OOD-Audit-Signature: sha256=<hex>``: HMAC-SHA256, keyed with the secret, over
  ``<timestamp>.<body>``, so a receiver can refuse replays older than it allows;
- ``Idempotency-Key``: the batch id, a digest of its item keys: a batch sent again (a retry, or a re-run
  after a crash before the ledger recorded it) carries the same id, so a receiver can drop the copy.

Why each answer is treated as it is: a 2xx means the batch was taken, and the ledger records it. 5xx answers
and timeouts are the receiver's passing trouble: retried with exponential backoff (urllib3's ``Retry``, which
also honours ``Retry-After``), the same id each time. A 4xx means the receiver refuses this request as it is
(a wrong secret, a bad URL): retrying cannot help, so the export stops with one line and records nothing.

The secret comes from the environment variable the caller names (``*_SECRET``, so that the log filter,
:class:`~ood_audit.console.RedactSecrets`, masks its value wherever it would appear), never from a flag or a
config file. The destination (and so the ledger) is the URL without credentials or query.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ood_audit.errors import ConfigError
from ood_audit.sinks.items import ExportError, ExportItem, manifest_line

log = logging.getLogger(__name__)

SECRET_ENV = "OOD_AUDIT_WEBHOOK_SECRET"
SECRET_ENV_RULE = re.compile(r"^(?!AWS_)[A-Z][A-Z0-9_]*_SECRET$")  # never one of AWS's own variables
SIGNATURE_HEADER = "X-OOD-Audit-Signature"
TIMESTAMP_HEADER = "X-OOD-Audit-Timestamp"
RETRY_STATUSES = (500, 502, 503, 504)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (module docstring)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def batch_id(items: Sequence[ExportItem]) -> str:
    """A batch's idempotency key: the same items in the same order give the same id."""
    return hashlib.sha256("\n".join(i.key for i in items).encode()).hexdigest()[:32]


def is_http_url(url: str) -> bool:
    """Whether ``url`` can be a webhook: http or https, with a host."""
    parts = urlsplit(url or "")
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_url(url: str) -> str:
    if not is_http_url(url):
        raise ConfigError(f"--webhook-url {_safe(url)!r}: give an http:// or https:// URL")
    return url


def _safe(url: str) -> str:
    """``url`` without credentials, query or fragment: what logs, summaries and the ledger see."""
    parts = urlsplit(url or "")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WebhookSink:
    """POSTs signed batches to ``url`` (module docstring)."""

    kind = "webhook"

    def __init__(self, url: str, *, secret_env: str = SECRET_ENV, batch_size: int = 100, attempts: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 30.0, environ: dict[str, str] | None = None) -> None:
        self.url = _check_url(url)
        if batch_size <= 0:
            raise ConfigError(f"--batch-size must be > 0, got {batch_size}")
        if not SECRET_ENV_RULE.match(secret_env):
            raise ConfigError(f"--webhook-secret-env {secret_env!r}: name an environment variable ending in _SECRET "
                              "(upper case, not AWS_*), whose value the logs then never show")
        env = os.environ if environ is None else environ
        secret = env.get(secret_env, "")
        if not secret:
            raise ConfigError(f"${secret_env} is not set: the webhook's signing secret (--webhook-secret-env names "
                              "the variable)")
        self._secret = secret.encode()
        self.destination = _safe(url)
        self.batch_size, self.attempts, self.backoff_s, self.timeout_s = batch_size, attempts, backoff_s, timeout_s
        self._run_id = ""
        self._pool: Any = None

    def open(self) -> None:
        import urllib3

        retry = urllib3.Retry(total=self.attempts - 1, connect=self.attempts - 1, read=self.attempts - 1,
                              status=self.attempts - 1, status_forcelist=RETRY_STATUSES,
                              allowed_methods=frozenset({"POST"}), backoff_factor=self.backoff_s,
                              raise_on_status=False, respect_retry_after_header=True)
        self._pool = urllib3.PoolManager(retries=retry, timeout=urllib3.Timeout(connect=min(10.0, self.timeout_s),
                                                                                 read=self.timeout_s))

    def begin(self, run_id: str, items: Sequence[ExportItem]) -> None:
        self._run_id = run_id

    def body(self, items: Sequence[ExportItem], batch: str) -> bytes:
        doc = {"batch": batch, "run_id": self._run_id, "queue": items[0].queue if items else None,
               "items": [manifest_line(i) for i in items]}
        return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode("utf-8")

    def send(self, items: Sequence[ExportItem]) -> None:
        import urllib3

        if not items:
            return
        if self._pool is None:
            self.open()
        batch = batch_id(items)
        body, ts = self.body(items, batch), str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(self._secret, ts, body), "Idempotency-Key": batch,
                   "User-Agent": "ood-audit"}
        try:
            resp = self._pool.request("POST", self.url, body=body, headers=headers)
        except urllib3.exceptions.MaxRetryError as exc:
            raise ExportError(f"webhook {self.destination}: no answer after {self.attempts} attempt(s) "
                              f"({_reason(exc.reason)}); nothing of this batch recorded, re-run to send it") from None
        except urllib3.exceptions.HTTPError as exc:
            raise ExportError(f"webhook {self.destination}: {_reason(exc)}; nothing of this batch recorded, "
                              "re-run to send it") from None
        if 200 <= resp.status < 300:
            log.info("webhook %s took %d item(s) (batch %s)", self.destination, len(items), batch[:12])
            return
        what = "refused the batch" if 400 <= resp.status < 500 else f"still failing after {self.attempts} attempt(s)"
        raise ExportError(f"webhook {self.destination} {what}: HTTP {resp.status} {_snippet(resp.data)}".rstrip())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
            self._pool = None


def _reason(exc: BaseException | None) -> str:
    text = " ".join(str(exc or "unknown error").split())
    return text.split(": ", 1)[-1][:200] if "Connection refused" not in text else "connection refused"


def _snippet(data: bytes | None) -> str:
    text = " ".join((data or b"").decode("utf-8", "replace").split())
    return text[:200]


__all__ = ["SECRET_ENV", "SECRET_ENV_RULE", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookSink", "batch_id",
           "is_http_url", "sign"]
