"""The export ledger: which samples a destination already has, so that each is sent once (SPEC §12).

Layout under the scan's output root (local or ``s3://``)::

    <output>/exports/<kind>-<digest>/destination.json          what the digest stands for (informational)
    <output>/exports/<kind>-<digest>/<queue>/<run_id>.<keys digest>.parquet
                                        one file per confirmed batch: key, uri, etag, bundle_id, scanned_in
    <output>/exports/<kind>-<digest>/<queue>/lease.json  held while one export sends (one sender at a time)
    <output>/exports/<kind>-<digest>/<queue>/inflight/<run_id>.<keys digest>.parquet
                                        a batch being sent to a sink whose answer can be lost (Label Studio)

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
- *An answer lost in transit* (Label Studio applied the import, the reply never arrived): before such a
  sink sends a batch, the batch is noted under ``inflight/``; the note goes once the batch is recorded.
  A note still there at the next export (under the export lease, so no sender is mid-batch) means the
  answer was lost: the sink is asked which of its keys the destination already has (for Label Studio,
  the ``export_key`` of the project's tasks), those are recorded, and only the rest are sent again.
- *Keys* are :func:`~ood_audit.sinks.items.item_key` of ``(uri, etag, bundle_id)``: a changed object or a new
  bundle is a new key, which is exactly when SPEC §12 wants a sample sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ood_audit.io.fs import S3Config, read_bytes, resolve, subdirectories, write_bytes
from ood_audit.io.uri import join_uri
from ood_audit.sinks.items import ExportItem
from ood_audit.store.schema import write_part

log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
DESTINATION_JSON = "destination.json"
PAIR_SEP = "\x00"  # between uri and etag in sent_pairs (neither holds a NUL)
LEASE_JSON = "lease.json"
INFLIGHT_DIR = "inflight"  # <ledger root>/inflight/: batches sent whose answer has not come back (yet)  # <ledger root>/lease.json: one sender per (destination, queue) (ood_audit.io.lease)
# scanned_in: the run whose row was sent (absent in files written before catch-up exports: read as null)
_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("uri", pa.string(), nullable=False),
                     pa.field("etag", pa.string()), pa.field("bundle_id", pa.string(), nullable=False),
                     pa.field("scanned_in", pa.string())])


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

    @property
    def lease_uri(self) -> str:
        """The lease every sender to this destination and queue takes (``ood-audit export`` and the nightly)."""
        return join_uri(self.root, LEASE_JSON)

    def _dataset(self, names: Sequence[str] | None = None) -> pads.Dataset | None:
        names = self.files() if names is None else names
        if not names:
            return None
        fs, path = resolve(self.root, self.s3)
        return pads.dataset([f"{path}/{n}" for n in names], format="parquet", filesystem=fs, schema=_SCHEMA)

    def load(self) -> set[str]:
        """Every key recorded so far (all batch files, read in one parallel scan)."""
        ds = self._dataset()
        return set() if ds is None else set(ds.to_table(columns=["key"]).column("key").to_pylist())

    def sent_pairs(self, bundle_id: str) -> pa.Array:
        """``uri``, NUL, ``etag`` (a null etag as "", as in the key) of every row sent with ``bundle_id``."""
        ds = self._dataset()
        if ds is None:
            return pa.array([], pa.string())
        t = ds.to_table(columns=["uri", "etag"], filter=pads.field("bundle_id") == bundle_id)
        pairs = pc.binary_join_element_wise(t.column("uri"), pc.coalesce(t.column("etag"), ""), PAIR_SEP)
        return pairs.combine_chunks() if isinstance(pairs, pa.ChunkedArray) else pairs

    def unsent_filter(self, bundle_id: str) -> Any:
        """A scanner expression true for rows of ``bundle_id`` this ledger has not recorded: a catch-up
        selection applies it *before* its budget, so rows already sent never take a budget's place."""
        pair = pc.Expression._call("binary_join_element_wise", [
            pc.field("uri"), pc.Expression._call("coalesce", [pc.field("etag"), pc.scalar("")]),
            pc.scalar(PAIR_SEP)])
        return ~pair.isin(self.sent_pairs(bundle_id))

    def sent_by(self, run_id: str) -> tuple[int, int]:
        """``(rows, rows scanned by an earlier run)`` that export run ``run_id`` recorded here."""
        ds = self._dataset([n for n in self.files() if n.startswith(f"{run_id}.")])
        if ds is None:
            return 0, 0
        scanned = ds.to_table(columns=["scanned_in"]).column("scanned_in")
        earlier = pc.sum(pc.and_kleene(pc.is_valid(scanned), pc.not_equal(scanned, run_id))).as_py() or 0
        return len(scanned), int(earlier)

    def record(self, run_id: str, items: Sequence[ExportItem]) -> str | None:
        """Write one immutable batch file for ``items`` (confirmed sent); returns its URI."""
        return self._write(self.root, run_id, _table(items)) if items else None

    # -- batches in flight (sinks whose answer can be lost after the batch was applied) ---------------------

    def intend(self, run_id: str, items: Sequence[ExportItem]) -> str:
        """Note a batch about to be sent, under ``inflight/``; :meth:`settle` removes the note."""
        return self._write(join_uri(self.root, INFLIGHT_DIR), run_id, _table(items))

    def in_flight(self) -> list[tuple[str, pa.Table]]:
        """The notes of batches whose send never got an answer (the export stopped, or its answer was lost)."""
        fs, path = resolve(join_uri(self.root, INFLIGHT_DIR), self.s3)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        out = []
        for info in sorted(infos, key=lambda i: i.base_name):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
                with fs.open_input_file(info.path) as fh:
                    out.append((join_uri(self.root, INFLIGHT_DIR, info.base_name), pq.read_table(fh)))
        return out

    def settle(self, note: str, table: pa.Table | None = None, present: set[str] | None = None) -> None:
        """Record the rows of in-flight ``note`` whose keys are ``present`` at the destination, then drop
        the note (the others were not delivered: the selection sends them again)."""
        if table is not None and present:
            run_id = (table.schema.metadata or {}).get(b"ood_audit.export_run_id", b"reconciled").decode()
            mask = pc.is_in(table.column("key"), pa.array(sorted(present), pa.string()))
            found = table.filter(mask)
            if found.num_rows:
                self._write(self.root, run_id, found.cast(_SCHEMA))
        fs, path = resolve(note, self.s3)
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass

    def _write(self, folder: str, run_id: str, table: pa.Table) -> str:
        self._describe()
        keys = sorted(table.column("key").to_pylist())
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        uri = join_uri(folder, f"{run_id}.{digest}.parquet")
        meta = {"ood_audit.export_run_id": run_id, "ood_audit.sent_at": _now(),
                "ood_audit.destination": self.destination}
        write_part(table.replace_schema_metadata(meta), uri, s3=self.s3)
        log.debug("ledger: %d keys -> %s", table.num_rows, uri)
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


def export_ledgers(output: str, *, s3: S3Config | None = None) -> list[ExportLedger]:
    """Every ledger (destination and queue) under ``output``, from the ``destination.json`` files."""
    out = []
    for scope in subdirectories(join_uri(output, EXPORTS_DIR), s3):
        try:
            doc = json.loads(read_bytes(join_uri(output, EXPORTS_DIR, scope, DESTINATION_JSON), s3=s3))
        except FileNotFoundError:
            continue  # not a ledger (e.g. a tasks file written under exports/)
        out += [ExportLedger(output, doc["kind"], doc["destination"], q, s3=s3)
                for q in subdirectories(join_uri(output, EXPORTS_DIR, scope), s3)]
    return out


def _table(items: Sequence[ExportItem]) -> pa.Table:
    return pa.table({"key": [i.key for i in items], "uri": [i.uri for i in items], "etag": [i.etag for i in items],
                     "bundle_id": [i.bundle_id for i in items], "scanned_in": [i.run_id for i in items]},
                    schema=_SCHEMA)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["EXPORTS_DIR", "ExportLedger", "destination_digest", "export_ledgers"]
