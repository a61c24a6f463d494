"""JSONL manifest sink (SPEC §12): one object per line with ``source-ref`` (the ``s3://`` URI) and the scores.

Files go under a prefix (local or ``s3://``), one per batch of at most ``batch_size`` lines::

    <prefix>/<run_id>/<queue>-<digest of the batch's keys>.jsonl

Files are immutable and their names deterministic: a batch retried after a crash (written, but not yet in
the ledger) has the same rows in the same order, so it overwrites its file instead of adding a duplicate.
Each file is written in one PUT (locally: written beside and renamed), so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

from ood_audit.errors import ConfigError
from ood_audit.io.fs import S3Config, write_bytes
from ood_audit.io.uri import join_uri
from ood_audit.sinks.items import ExportError, ExportItem, manifest_line

log = logging.getLogger(__name__)


class ManifestSink:
    """Writes JSONL manifest files under ``prefix``."""

    kind = "jsonl"

    def __init__(self, prefix: str, *, batch_size: int = 10_000, s3: S3Config | None = None) -> None:
        if not prefix:
            raise ConfigError("--to jsonl needs --manifest-prefix (a local folder or s3:// prefix)")
        if batch_size <= 0:
            raise ConfigError(f"--batch-size must be > 0, got {batch_size}")
        self.prefix, self.batch_size, self.s3 = prefix.rstrip("/"), batch_size, s3
        self.destination = self.prefix
        self.files: list[str] = []

    def open(self) -> None:
        pass

    def begin(self, run_id: str, items: Sequence[ExportItem]) -> None:
        pass

    def file_for(self, items: Sequence[ExportItem]) -> str:
        digest = hashlib.sha256("\n".join(i.key for i in items).encode()).hexdigest()[:16]
        return join_uri(self.prefix, items[0].run_id, f"{items[0].queue}-{digest}.jsonl")

    def send(self, items: Sequence[ExportItem]) -> None:
        uri = self.file_for(items)
        body = "".join(json.dumps(manifest_line(i), allow_nan=False, separators=(",", ":")) + "\n" for i in items)
        try:
            write_bytes(uri, body.encode("utf-8"), s3=self.s3)
        except OSError as exc:
            raise ExportError(f"cannot write manifest {uri}: {' '.join(str(exc).split())[:200]}") from None
        self.files.append(uri)
        log.info("wrote %d lines to %s", len(items), uri)

    def close(self) -> None:
        pass
