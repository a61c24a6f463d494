"""Scan stage 4 (Ray Data tasks): write report rows as Parquet part files and report what was written.

:func:`write_parts` is a ``map_batches`` function. For each chunk present in its batch it writes one part
file (:func:`~ood_audit.store.schema.write_part`, all-or-nothing) named after the run, the chunk, the
pipeline pass and a digest of the chunk positions it holds, and returns one *feed* row per file
(:class:`~ood_audit.store.records.FeedRow`). The driver consumes the feed to commit chunks (:mod:`ood_audit.store.run_ledger`).

The name is a function of the rows, so a Ray retry of the same task (after a node loss, say) rewrites the
same file instead of adding a second copy. Beside each part file, the task stages its rows' content digests
under the same name (:func:`~ood_audit.scan.duplicates.stage_digests`), for ``duplicate_of`` once the run is
committed.

A write that fails because the store is down, refuses the credentials or denies the write is not retried
here: pyarrow has already retried it for the configured outage window (``S3Config.retry_s``). It raises
:class:`~ood_audit.errors.StorageError`, the pass fails, and the run stops resumable with its committed
chunks kept. Other write failures are retried a few times.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_audit.io.decode import STATUSES
from ood_audit.io.fs import S3Config, storage_error
from ood_audit.io.uri import join_uri
from ood_audit.scan.duplicates import plan_order, stage_digests, staging_uri
from ood_audit.scan.rows import CHUNK, DIGEST, INTERNAL_COLUMNS, READ_S, SCORE_S, SEQ, WORKER
from ood_audit.store.records import FEED_SCHEMA, FeedRow, feed_table
from ood_audit.store.schema import part_name, write_part

log = logging.getLogger(__name__)

_WRITE_ATTEMPTS = 4

def seq_digest(seqs: np.ndarray) -> str:
    """16 hex digits naming a set of chunk positions (sorted int32)."""
    return hashlib.blake2b(np.ascontiguousarray(seqs, dtype="<i4").tobytes(), digest_size=8).hexdigest()


def write_parts(batch: pa.Table, *, partition: str, run_id: str, attempt: int, staging: str | None = None,
                prefix_chars: int = 1, s3: S3Config | None = None) -> pa.Table:
    """Write ``batch`` (report columns + internal columns) as one file per chunk; return the feed rows.

    With ``staging`` (the run's digest staging directory), each part's digests are staged there after the
    part is written, so a committed part always has its staging file."""
    feed: list[FeedRow] = []
    if batch.num_rows == 0:
        return FEED_SCHEMA.empty_table()
    chunks = batch.column(CHUNK).to_numpy()
    for chunk in np.unique(chunks).tolist():
        part = batch.filter(pa.array(chunks == chunk))
        part = part.take(pc.sort_indices(part.column(SEQ)))
        seqs = part.column(SEQ).to_numpy()
        name = part_name(run_id, int(chunk), attempt, seq_digest(seqs))
        report = part.drop_columns(list(INTERNAL_COLUMNS))
        start = time.perf_counter()
        uri = join_uri(partition, name)
        _write_with_retries(lambda: write_part(report, uri, s3=s3), uri, s3)
        if staging is not None:
            target = staging_uri(staging, name)
            order = plan_order(part.column(CHUNK).to_numpy(), seqs)
            _write_with_retries(lambda: stage_digests(part.column(DIGEST), part.column("uri"), order, target,
                                                      prefix_chars=prefix_chars, s3=s3), target, s3)
        write_s = time.perf_counter() - start
        status = report.column("status").to_numpy(zero_copy_only=False)
        flagged = report.column("flagged").fill_null(False)
        scanned = pc.min_max(report.column("scanned_at").cast(pa.int64())).as_py()
        feed.append(FeedRow(
            chunk=int(chunk), file=name, rows=part.num_rows, seqs=seqs.tolist(),
            counts={s: int((status == s).sum()) for s in STATUSES},
            flagged=int(pc.sum(flagged.cast(pa.int64())).as_py() or 0),
            read_s=float(pc.sum(part.column(READ_S)).as_py() or 0.0),
            score_s=float(pc.sum(part.column(SCORE_S)).as_py() or 0.0),
            write_s=write_s,
            scanned_min=scanned["min"] / 1e6,
            scanned_max=scanned["max"] / 1e6,
            workers=sorted(set(part.column(WORKER).to_pylist()))))
    return feed_table(feed)


def _write_with_retries(write: Callable[[], None], uri: str, s3: S3Config | None,
                        attempts: int = _WRITE_ATTEMPTS) -> None:
    for i in range(attempts):
        try:
            write()
            return
        except OSError as exc:
            err = storage_error(exc, s3=s3, uri=uri)
            if err is not None:
                raise err from None
            if i == attempts - 1:
                raise
            log.warning("writing %s failed (%s); retrying", uri, exc)
            time.sleep(min(2.0 ** i, 10.0))
