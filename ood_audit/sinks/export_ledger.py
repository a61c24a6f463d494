"""The export ledger: which samples a destination already has, so that each is sent once (SPEC §12).

Layout under the scan's output root (local or ``s3://``)::

    <output>/exports/<kind>-<digest>/destination.json          what the digest stands for (informational)
    <output>/exports/<kind>-<digest>/<queue>/<run_id>.<keys digest>.parquet
                                                                one file per confirmed batch: key, uri, etag, bundle_id

``<kind>`` is the sink (``label-studio``, ``sqs``, ``jsonl``), ``<digest>`` 12 hex digits of SHA-256 of the
normalised destination (project URL, queue URL, manifest prefix), and ``<queue>`` the selection's queue
(``outliers`` or ``disagreement``). So a new destination, or the disagreement queue, starts empty and gets
everything; the same destination on a later night skips what it already has.

Why a sample is never lost and never sent twice (beyond one batch's window):

- *S3 has no append.* Each confirmed batch gets its own small immutable file, written only after the sink
  confirmed the batch; all files are read once at the start. A PUT is all-or-nothing, and locally the file
  is written beside and renamed into place, so a reader never sees half a batch.
- *A sink that fails halfway* records only what it confirmed (for SQS, the entries that came back
  ``Successful``), then the export stops with one line. Re-running sends exactly the rest.
- *A retry of the same batch* (the process died between the send and the ledger write) produces the same
  file name, because it is a digest of the batch's keys: it overwrites rather than adds. That one batch can be
  sent twice: the ledger write can only follow the send. SQS FIFO queues absorb it with
  ``MessageDeduplicationId`` (the same key); for other sinks it is the documented at-least-once window.
- *Keys* are :func:`~ood_audit.sinks.items.item_key` of ``(uri, etag, bundle_id)``: a changed object or a new
  bundle is a new key, which is exactly when SPEC §12 wants a sample sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from ood_audit.io.fs import S3Config, read_bytes, resolve, write_bytes
from ood_audit.io.uri import join_uri
from ood_audit.sinks.items import ExportItem
from ood_audit.store.schema import write_part

log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
DESTINATION_JSON = "destination.json"
_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("uri", pa.string(), nullable=False),
                     pa.field("etag", pa.string()), pa.field("bundle_id", pa.string(), nullable=False)])


def destination_digest(kind: str, destination: str) -> str:
    return hashlib.sha256(f"{kind}\n{destination}".encode("utf-8")).hexdigest()[:12]


class ExportLedger:
    """The sent keys of one (sink kind, destination, queue) under one output root."""

    def __init__(self, output: str, kind: str, destination: str, queue: str, *, s3: S3Config | None = None):
        self.output, self.kind, self.destination, self.queue, self.s3 = output, kind, destination, queue, s3
        self.scope = join_uri(output, EXPORTS_DIR, f"{kind}-{destination_digest(kind, destination)}")
        self.root = join_uri(self.scope, queue)

    def files(self) -> list[str]:
        """The ledger's batch files (names only), sorted."""
        fs, path = resolve(self.root, self.s3)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                      and i.base_name.endswith(".parquet") and not i.base_name.startswith("."))

    def load(self) -> set[str]:
        """Every key recorded so far (all batch files, read in one parallel scan)."""
        names = self.files()
        if not names:
            return set()
        fs, path = resolve(self.root, self.s3)
        ds = pads.dataset([f"{path}/{n}" for n in names], format="parquet", filesystem=fs, schema=_SCHEMA)
        return set(ds.to_table(columns=["key"]).column("key").to_pylist())

    def record(self, run_id: str, items: Sequence[ExportItem]) -> str | None:
        """Write one immutable batch file for ``items`` (confirmed sent); returns its URI."""
        if not items:
            return None
        self._describe()
        keys = sorted(i.key for i in items)
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        uri = join_uri(self.root, f"{run_id}.{digest}.parquet")
        meta = {"ood_audit.export_run_id": run_id, "ood_audit.sent_at": _now(),
                "ood_audit.destination": self.destination}
        table = pa.table({"key": [i.key for i in items], "uri": [i.uri for i in items],
                          "etag": [i.etag for i in items], "bundle_id": [i.bundle_id for i in items]},
                         schema=_SCHEMA.with_metadata(meta))
        write_part(table, uri, s3=self.s3)
        log.debug("ledger: %d keys -> %s", len(items), uri)
        return uri

    def _describe(self) -> None:
        uri = join_uri(self.scope, DESTINATION_JSON)
        try:
            read_bytes(uri, s3=self.s3)
            return
        except FileNotFoundError:
            pass
        doc = {"kind": self.kind, "destination": self.destination, "created_at": _now()}
        write_bytes(uri, json.dumps(doc, indent=2).encode(), s3=self.s3)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["EXPORTS_DIR", "ExportLedger", "destination_digest"]
