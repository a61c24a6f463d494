"""What a scan covers: the listing (prefixes or a manifest), minus what is already done, cut into chunks.

Everything here streams pyarrow pages (:data:`~ood_audit.io.listing.LISTING_SCHEMA`: ``uri``, ``etag``,
``size``); no step holds one Python object per key beyond the page in hand.

Incremental scans (:class:`DoneSet`): an object is skipped when an earlier run under the same output root
*committed* a row (a part file a chunk marker names, :func:`~ood_audit.store.runs.committed_parts`; a
stray part file of a crashed attempt is never counted, so its objects are scanned again) for the same
``(uri, etag)`` with the same ``bundle_id`` and a *final* status:

- ``ok``, ``decode_error`` and ``unsupported`` are final: they depend only on the bytes (fixed by the
  etag) and the bundle's preprocessing;
- ``missing``, ``too_large`` and ``refused`` are retried: a read can fail transiently, the size limits are
  options of each run, not properties of the object, and a refused object may be restored or granted.

The committed rows of a run that stopped (exit 4) count as done although that run never finished: the
next night does not scan them again, and the nightly's catch-up export (:mod:`ood_audit.sinks.export`)
sends them, since it selects from every committed row its ledger has not sent, whatever run wrote it.

Objects without an etag (from a manifest that has none) are always scanned. The done set keeps a sorted
64-bit hash per done ``(uri, etag)`` (8 bytes each), read from earlier reports with a pyarrow dataset
filter on ``bundle_id`` and ``status``; a new object collides with a done one with probability about
(listed × done) / 2⁶⁴ (≈ 5·10⁻⁶ for ten million of each).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ood_audit.errors import ConfigError
from ood_audit.io.fs import S3Config
from ood_audit.io.listing import LISTING_SCHEMA, iter_listing_pages, iter_manifest_pages
from ood_audit.io.uri import parse_uri
from ood_audit.store.runs import all_committed_parts, parts_dataset
from ood_audit.store.schema import report_schema

FINAL_STATUSES = ("ok", "decode_error", "unsupported")


def check_inputs(inputs: Sequence[str], output: str | None) -> list[str]:
    """Normalised input prefixes; refuses overlapping prefixes and an output (when given) inside an input."""
    norm = []
    for raw in inputs:
        try:
            norm.append(str(parse_uri(raw)))
        except ConfigError as exc:
            raise ConfigError(f"--input {raw!r}: {exc}") from None
    dirs = [p.rstrip("/") + "/" for p in norm]
    for i, a in enumerate(dirs):
        for j, b in enumerate(dirs):
            if i != j and b.startswith(a):
                raise ConfigError(f"--input {norm[j]} lies inside --input {norm[i]}; its objects would be scanned "
                                  "twice (give each prefix once)")
    if output is None:
        return norm
    out = str(parse_uri(output)).rstrip("/") + "/"
    for prefix, d in zip(norm, dirs):
        if out.startswith(d):
            raise ConfigError(f"--output {output} lies inside --input {prefix}; later scans would list the "
                              "reports themselves")
    return norm


def listing_pages(inputs: Sequence[str], manifest: str | None, *, s3: S3Config | None = None,
                  page_size: int = 1000) -> Iterator[pa.Table]:
    """Pages of the objects to scan: every object under ``inputs``, or every row of ``manifest``."""
    if manifest:
        for page in iter_manifest_pages(manifest, s3=s3, page_size=page_size):
            yield _as_listing(page)
    else:
        yield from iter_listing_pages(list(inputs), s3=s3, page_size=page_size)


def _as_listing(page: pa.Table) -> pa.Table:
    n = page.num_rows
    cols = {
        "uri": page.column("uri"),
        "etag": page.column("etag").cast(pa.string()) if "etag" in page.column_names else pa.nulls(n, pa.string()),
        "size": page.column("size").cast(pa.int64()) if "size" in page.column_names else pa.nulls(n, pa.int64()),
    }
    return pa.table(cols, schema=LISTING_SCHEMA)


def key_hashes(uris: Iterable[str | None], etags: Iterable[str | None]) -> np.ndarray:
    """64-bit hashes of ``(uri, etag)`` pairs (0 where the etag is null: such rows never match)."""
    out = []
    for uri, etag in zip(uris, etags):
        if etag is None or uri is None:
            out.append(0)
            continue
        digest = hashlib.blake2b(f"{uri}\x00{etag}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") | 1)  # never 0
    return np.array(out, dtype=np.uint64)


class DoneSet:
    """The ``(uri, etag)`` pairs already scanned with one bundle under one output root (module docstring)."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = np.unique(np.asarray(hashes, dtype=np.uint64))

    def __len__(self) -> int:
        return int(self.hashes.size)

    @classmethod
    def from_reports(cls, output: str, bundle_id: str, *, s3: S3Config | None = None,
                     exclude_run: str | None = None) -> DoneSet:
        parts = all_committed_parts(output, s3=s3, bundle_id=bundle_id, exclude_run=exclude_run)
        dataset = parts_dataset(parts, s3=s3, schema=report_schema())
        if dataset is None:
            return cls(np.zeros(0, np.uint64))
        cond = (pc.field("bundle_id") == bundle_id) & pc.field("status").isin(list(FINAL_STATUSES))
        parts = []
        scanner = pads.Scanner.from_dataset(dataset, columns=["uri", "etag"], filter=cond, batch_size=1 << 16)
        for batch in scanner.to_batches():
            if batch.num_rows:
                parts.append(key_hashes(batch.column(0).to_pylist(), batch.column(1).to_pylist()))
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.uint64))

    def contains(self, page: pa.Table) -> np.ndarray:
        """Boolean mask: which rows of a listing page are done."""
        h = key_hashes(page.column("uri").to_pylist(), page.column("etag").to_pylist())
        if self.hashes.size == 0:
            return np.zeros(h.size, dtype=bool)
        pos = np.searchsorted(self.hashes, h).clip(max=self.hashes.size - 1)
        return (self.hashes[pos] == h) & (h != 0)


class Skipped:
    """Counts what :func:`skip_done` left out (read after the stream is consumed)."""

    def __init__(self) -> None:
        self.listed = 0
        self.skipped = 0


def skip_done(pages: Iterable[pa.Table], done: DoneSet | None, counter: Skipped) -> Iterator[pa.Table]:
    for page in pages:
        counter.listed += page.num_rows
        if done is not None and len(done):
            mask = done.contains(page)
            counter.skipped += int(mask.sum())
            page = page.filter(pa.array(~mask))
        if page.num_rows:
            yield page


def rechunk(pages: Iterable[pa.Table], chunk_size: int) -> Iterator[pa.Table]:
    """Regroup pages into tables of exactly ``chunk_size`` rows (the last may be shorter)."""
    held: list[pa.Table] = []
    count = 0
    for page in pages:
        while page.num_rows:
            take = min(chunk_size - count, page.num_rows)
            held.append(page.slice(0, take))
            count += take
            page = page.slice(take)
            if count == chunk_size:
                yield pa.concat_tables(held).combine_chunks()
                held, count = [], 0
    if count:
        yield pa.concat_tables(held).combine_chunks()
