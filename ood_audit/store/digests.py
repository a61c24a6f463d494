"""The exact-duplicate index under an output root: which URI first had each content digest (``duplicate_of``).

Layout::

    <output>/digests/p=<hh>/<run_id>-<key>.parquet     sha256, first_uri, run_id, order

``sha256`` is :func:`content_sha256` of the object's bytes (lower-case hex). ``p=<hh>`` is the digest's
first ``prefix_chars`` hex characters (256 partitions by default), so a lookup opens only the partitions
its digests fall in. Each file is sorted by ``sha256`` in row groups of :data:`ROW_GROUP_ROWS`, and a
lookup reads only the row groups whose min/max statistics bracket one of its digests. Nothing is ever
loaded whole into the caller's process; the cost of a lookup grows with the partitions and row groups it
touches, not with the size of the index.

Which URI is "first":

- *Within a run*, the one with the lowest ``order`` (the object's plan position, e.g.
  ``chunk << 32 | seq``): deterministic whatever order the batches arrive in.
- *Across runs*, the run that added the digest first: :meth:`DigestIndex.add` never writes a digest
  that another run already holds, so each digest normally has one run's entry. Two runs adding the same
  new digest at the same moment (not possible under the nightly lease) both write; a lookup then takes
  the smallest (``run_id``, ``order``), so every reader still agrees.

Why adding is exactly-once, in the way the scan's chunk ledger is (:mod:`ood_audit.scan.driver`):

- *A retry of the same batch* (a task re-run, a pass that failed, the same ``--run-id`` again) writes the
  same rows to the same file name, a digest of the run id and the rows: the file is overwritten, never
  added beside. Writes are all-or-nothing (:func:`~ood_audit.io.fs.write_bytes`).
- *The same objects in a different grouping* (a resumed run batches its chunks differently) find their
  digests already present for this run at an order no higher, and write nothing.
- *A batch that failed half way* (some partitions written) writes only the partitions still missing
  on retry, with the same content, so the same names.
- The plan never changes within a run, so a re-run adds the same (digest, URI, order) triples.

Each add writes one file per partition it touches, so :meth:`DigestIndex.compact` merges every partition
into one file after a run; lookups give the same answers before, during and after it.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ood_audit.errors import ConfigError, DataError
from ood_audit.io.fs import S3Config, resolve, subdirectories, write_bytes
from ood_audit.io.uri import join_uri

DIGESTS_DIR = "digests"
ROW_GROUP_ROWS = 4096
SCHEMA = pa.schema([("sha256", pa.string()), ("first_uri", pa.string()), ("run_id", pa.string()),
                    ("order", pa.int64())])
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def content_sha256(data: bytes) -> str:
    """``content_sha256`` of an object: SHA-256 of its bytes as stored, lower-case hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, order=True)
class DigestEntry:
    """One index row. Ordering is the "first" rule: smallest (run_id, order) wins on a conflict."""

    run_id: str
    order: int
    first_uri: str


@dataclass
class LookupStats:
    """What the last lookup opened (for tests and logs)."""

    partitions: int = 0
    files: int = 0
    row_groups: int = 0


class DigestIndex:
    """The digest index of one output root (local path or ``s3://``)."""

    def __init__(self, output: str, *, s3: S3Config | None = None, prefix_chars: int = 2,
                 threads: int = 16) -> None:
        if not 1 <= prefix_chars <= 4:
            raise ConfigError(f"digest index prefix_chars must be 1-4, got {prefix_chars}")
        self.root = join_uri(output, DIGESTS_DIR)
        self.s3 = s3
        self.prefix_chars = prefix_chars
        self.threads = threads
        self.last = LookupStats()

    def partition_uri(self, prefix: str) -> str:
        return join_uri(self.root, f"p={prefix}")

    def lookup(self, digests: Sequence[str]) -> list[str | None]:
        """The first URI for each digest (module docstring), None where the index has not seen it."""
        best = self.entries(digests)
        return [e.first_uri if (e := best.get(_check_digest(d))) is not None else None for d in digests]

    def entries(self, digests: Iterable[str]) -> dict[str, DigestEntry]:
        """The winning entry per known digest, reading only the partitions and row groups needed."""
        wanted = sorted({_check_digest(d) for d in digests})
        groups: dict[str, list[str]] = {}
        for d in wanted:
            groups.setdefault(d[: self.prefix_chars], []).append(d)
        self.last = LookupStats(partitions=len(groups))
        fs, _ = resolve(self.root, self.s3)
        jobs = [(prefix, f, ds) for prefix, ds in groups.items() for f in self._files(fs, prefix)]
        self.last.files = len(jobs)
        best: dict[str, DigestEntry] = {}
        if not jobs:
            return best
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(jobs)))) as pool:
            for table, row_groups in pool.map(lambda job: _read_matches(fs, job[1], job[2]), jobs):
                self.last.row_groups += row_groups
                for sha, uri, run, order in zip(*(table.column(c).to_pylist() for c in SCHEMA.names)):
                    entry = DigestEntry(run, int(order), uri)
                    if sha not in best or entry < best[sha]:
                        best[sha] = entry
        return best

    def add(self, run_id: str, entries: Iterable[tuple[str, str, int]],
            known: dict[str, DigestEntry] | None = None) -> int:
        """Record (sha256, uri, order) triples of run ``run_id``; returns the rows written.

        Idempotent: adding what the index already implies writes nothing, and a retry of a batch
        rewrites the same files (module docstring). Within the batch, a digest keeps its lowest order.
        ``known`` is :meth:`entries` of these digests when the caller has just looked them up (one
        lookup instead of two).
        """
        if not run_id or "/" in run_id:
            raise ConfigError(f"digest index run_id must be a non-empty name without '/', got {run_id!r}")
        mine: dict[str, tuple[int, str]] = {}
        for sha, uri, order in entries:
            sha, order = _check_digest(sha), int(order)
            if order < 0:
                raise DataError(f"digest index order must be >= 0, got {order} for {uri}")
            if sha not in mine or (order, uri) < mine[sha]:
                mine[sha] = (order, uri)
        known = self.entries(mine) if known is None else known
        todo: dict[str, list[tuple[str, str, int]]] = {}
        for sha, (order, uri) in mine.items():
            have = known.get(sha)
            if have is not None and (have.run_id != run_id or have.order <= order):
                continue
            todo.setdefault(sha[: self.prefix_chars], []).append((sha, uri, order))
        for prefix, rows in todo.items():
            rows.sort()
            self._write(run_id, prefix, rows)
        return sum(len(rows) for rows in todo.values())

    def _files(self, fs: pafs.FileSystem, prefix: str) -> list[str]:
        _, path = resolve(self.partition_uri(prefix), self.s3)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))

    def compact(self, min_files: int = 2, prefixes: Iterable[str] | None = None) -> int:
        """Merge each partition that holds at least ``min_files`` files into one holding only each digest's
        winning entry; returns the files removed. Lookups are unchanged throughout: the merged file is
        written before the files it replaces are deleted, and a file added meanwhile is not among them.

        Run it after a scan. A ``min_files`` above 2 bounds the files a lookup opens per partition while
        rewriting a partition only every few runs, not on every run (the index grows by one file per
        partition a run touches). ``prefixes`` limits it to those partitions (the ones a run added to)."""
        fs, root = resolve(self.root, self.s3)
        removed = 0
        if prefixes is None:
            prefixes = [name[2:] for name in subdirectories(self.root, self.s3) if name.startswith("p=")]
        for prefix in sorted(set(prefixes)):
            files = self._files(fs, prefix)
            if len(files) < max(2, min_files):
                continue
            best: dict[str, DigestEntry] = {}
            for f in files:  # one partition at a time: about 1/16^prefix_chars of the index
                table = pq.read_table(f, filesystem=fs, columns=SCHEMA.names)
                for sha, uri, run, order in zip(*(table.column(c).to_pylist() for c in SCHEMA.names)):
                    entry = DigestEntry(run, int(order), uri)
                    if sha not in best or entry < best[sha]:
                        best[sha] = entry
            rows = [(sha, e.first_uri, e.run_id, e.order) for sha, e in sorted(best.items())]
            kept = self._write_rows(prefix, "compact", rows)
            for f in files:
                if f.rsplit("/", 1)[-1] != kept:
                    fs.delete_file(f)
                    removed += 1
        return removed

    def _write(self, run_id: str, prefix: str, rows: list[tuple[str, str, int]]) -> None:
        self._write_rows(prefix, run_id, [(sha, uri, run_id, order) for sha, uri, order in rows])

    def _write_rows(self, prefix: str, stem: str, rows: list[tuple[str, str, str, int]]) -> str:
        """Write sorted (sha256, uri, run_id, order) rows as ``<stem>-<digest of the rows>.parquet``;
        returns the file name."""
        h = hashlib.sha256(stem.encode())
        for sha, uri, run, order in rows:
            h.update(f"\n{sha}\t{run}\t{order}\t{uri}".encode())
        table = pa.table({"sha256": [r[0] for r in rows], "first_uri": [r[1] for r in rows],
                          "run_id": [r[2] for r in rows], "order": [r[3] for r in rows]}, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, write_statistics=["sha256"])
        name = f"{stem}-{h.hexdigest()[:24]}.parquet"
        write_bytes(join_uri(self.partition_uri(prefix), name), buf.getvalue(), s3=self.s3)
        return name


def _read_matches(fs: pafs.FileSystem, path: str, digests: list[str]) -> tuple[pa.Table, int]:
    """Rows of one sorted index file whose sha256 is in ``digests`` (sorted), and the row groups read."""
    parts = []
    with fs.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        col = pf.schema_arrow.get_field_index("sha256")
        for g in range(pf.num_row_groups):
            st = pf.metadata.row_group(g).column(col).statistics
            if st is not None and st.has_min_max:
                if bisect.bisect_left(digests, st.min) >= bisect.bisect_right(digests, st.max):
                    continue
            parts.append(pf.read_row_group(g, columns=SCHEMA.names))
    if not parts:
        return SCHEMA.empty_table(), 0
    table = pa.concat_tables(parts)
    mask = pc.is_in(table.column("sha256"), value_set=pa.array(digests, pa.string()))
    return table.filter(mask), len(parts)


def _check_digest(d: str) -> str:
    s = str(d).lower()
    if not _HEX64.match(s):
        raise DataError(f"not a SHA-256 hex digest: {d!r} (64 hex characters expected)")
    return s
