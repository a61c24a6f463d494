"""SQS sink (SPEC §12): JSON bodies, ``send_message_batch`` calls of at most 10 entries.

Delivery, and what each failure does:

- *Transport errors* (connection refused, timeouts, throttling, 5xx) are retried by botocore itself
  (``standard`` retry mode, bounded attempts). When they persist, the export stops with one line naming the
  endpoint; the entries confirmed so far in the batch are recorded, the rest are not.
- *Entries the service reports as failed* inside a successful call are retried alone, up to
  ``entry_attempts`` times with exponential backoff; a sender fault (a message the service will never
  accept) is not retried. Entries still failing stop the export the same way.
- *FIFO queues* (``.fifo``) get ``MessageDeduplicationId`` = the item's key, a digest of
  ``(uri, etag, bundle_id)``, so a batch resent after a crash is absorbed by the queue within its
  deduplication window; ``MessageGroupId`` is the predicted class, so each class arrives in anomaly order
  and consumers can work on classes in parallel. Standard queues rely on the ledger alone.

The endpoint is ``--sqs-endpoint``, else ``AWS_ENDPOINT_URL_SQS``, else ``AWS_ENDPOINT_URL``, else AWS; the
region and credentials follow the standard AWS chain, as for S3 (:class:`~ood_audit.io.fs.S3Config`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ood_audit.errors import ConfigError, OodAuditError
from ood_audit.io.fs import DEFAULT_REGION
from ood_audit.io.storage_errors import kind_of, kind_of_code
from ood_audit.sinks.items import ExportError, ExportItem, PartialSend, sqs_body

log = logging.getLogger(__name__)

MAX_BATCH = 10  # the service's limit per SendMessageBatch


def sqs_endpoint(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return explicit or env.get("AWS_ENDPOINT_URL_SQS") or env.get("AWS_ENDPOINT_URL") or None


def sqs_client(endpoint: str | None, *, region: str | None = None, max_attempts: int = 5,
               connect_timeout: float = 5.0, read_timeout: float = 30.0) -> Any:
    """A boto3 SQS client with botocore's ``standard`` retries (transport errors, throttling)."""
    import boto3
    from botocore.config import Config

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    cfg = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=connect_timeout,
                 read_timeout=read_timeout)
    return boto3.session.Session(region_name=region).client("sqs", endpoint_url=endpoint, config=cfg)


class SqsSink:
    """Sends items to one queue (a name or a queue URL); ``batch_size`` items per ledger batch."""

    kind = "sqs"

    def __init__(self, queue: str, *, endpoint: str | None = None, batch_size: int = 100, entry_attempts: int = 5,
                 backoff_s: float = 0.2, client: Any = None, max_attempts: int = 5) -> None:
        if not queue:
            raise ConfigError("--to sqs needs --queue NAME_OR_URL")
        if batch_size <= 0:
            raise ConfigError(f"--batch-size must be > 0, got {batch_size}")
        self.queue, self.endpoint, self.batch_size = queue, sqs_endpoint(endpoint), batch_size
        self.entry_attempts, self.backoff_s = entry_attempts, backoff_s
        self.client = client or sqs_client(self.endpoint, max_attempts=max_attempts)
        self.queue_url = queue if queue.startswith(("http://", "https://")) else ""
        self.destination = self.queue_url
        self.calls = 0

    @property
    def fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @property
    def where(self) -> str:
        return self.endpoint or "AWS"

    def open(self) -> None:
        """Resolve the queue URL (or check it exists): fails before anything is sent."""
        try:
            if not self.queue_url:
                self.queue_url = self.client.get_queue_url(QueueName=self.queue)["QueueUrl"]
            else:
                self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        except Exception as exc:  # noqa: BLE001 - every botocore failure becomes one line
            raise self._error(exc, "open the queue") from None
        self.destination = self.queue_url

    def begin(self, run_id: str, items: Sequence[ExportItem]) -> None:
        pass

    def send(self, items: Sequence[ExportItem]) -> None:
        confirmed: list[str] = []
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start:start + MAX_BATCH]
            try:
                confirmed += self._send_chunk(chunk)
            except PartialSend as exc:
                raise PartialSend(str(exc), confirmed + exc.confirmed) from None

    def _send_chunk(self, chunk: Sequence[ExportItem]) -> list[str]:
        """Send one call's worth; retry the entries reported failed; the keys confirmed."""
        pending = {str(i): item for i, item in enumerate(chunk)}
        confirmed: list[str] = []
        for attempt in range(self.entry_attempts):
            try:
                resp = self.client.send_message_batch(QueueUrl=self.queue_url,
                                                      Entries=[self._entry(i, it) for i, it in pending.items()])
            except Exception as exc:  # noqa: BLE001 - botocore already retried transport errors
                raise PartialSend(str(self._error(exc, "send")), confirmed) from None
            self.calls += 1
            for ok in resp.get("Successful", ()):
                confirmed.append(pending.pop(ok["Id"]).key)
            failed = resp.get("Failed", ())
            fatal = [f for f in failed if f.get("SenderFault")]
            if fatal:
                f = fatal[0]
                raise PartialSend(f"SQS at {self.where} refused a message for {pending[f['Id']].uri}: "
                                  f"{f.get('Code')}: {f.get('Message', '')}", confirmed)
            if not pending:
                return confirmed
            log.debug("SQS: %d entries failed (attempt %d), retrying them", len(pending), attempt + 1)
            time.sleep(min(self.backoff_s * 2 ** attempt, 5.0))
        codes = sorted({f.get("Code", "?") for f in failed})
        raise PartialSend(f"SQS at {self.where}: {len(pending)} messages still failing after "
                          f"{self.entry_attempts} attempts ({', '.join(codes)}) on {self.queue_url}", confirmed)

    def _entry(self, entry_id: str, item: ExportItem) -> dict[str, Any]:
        e: dict[str, Any] = {
            "Id": entry_id, "MessageBody": json.dumps(sqs_body(item), allow_nan=False, separators=(",", ":")),
            "MessageAttributes": {"policy": {"DataType": "String", "StringValue": item.policy},
                                  "bundle_id": {"DataType": "String", "StringValue": item.bundle_id}}}
        if self.fifo:
            e["MessageDeduplicationId"] = item.key
            e["MessageGroupId"] = f"class-{item.pred_class if item.pred_class is not None else 'none'}"
        return e

    def _error(self, exc: BaseException, doing: str) -> OodAuditError:
        from botocore.exceptions import ClientError, NoCredentialsError

        # The kinds are the storage table's (io.storage_errors); an export failure keeps its own exit status.
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                return ConfigError(f"--queue {self.queue!r}: no such queue at {self.where}")
            if kind_of_code(code) in ("credentials", "denied"):
                return ExportError(f"SQS at {self.where} rejected the credentials ({code}) while trying to {doing}")
            return ExportError(f"SQS at {self.where} could not {doing} ({code}: "
                               f"{exc.response.get('Error', {}).get('Message', '')})")
        if isinstance(exc, NoCredentialsError):
            return ExportError(f"no AWS credentials for SQS at {self.where} (set AWS_ACCESS_KEY_ID or a profile)")
        if kind_of(exc) == "unreachable":
            return ExportError(f"cannot reach SQS at {self.where} ({type(exc).__name__}) while trying to {doing}")
        return ExportError(f"SQS at {self.where}: {type(exc).__name__} while trying to {doing}: "
                           f"{' '.join(str(exc).split())[:200]}")

    def close(self) -> None:
        pass
