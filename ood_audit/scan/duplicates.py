"""Scan stage 5: exact duplicates, ``duplicate_of`` (issue "data-quality findings"; digests of SPEC §14's pass).

``duplicate_of`` is the first URI whose bytes have the same ``content_sha256``, in this run or in an earlier
run under the same output root. It is null for that first URI itself, and for a URI that an earlier run
scanned with the same bytes: the same object scanned again is not a duplicate.

"First" means: the URI an earlier run recorded in the output root's digest index
(:mod:`ood_audit.store.digests`); for a digest new to the index, this run's lowest plan position.

Why a pass after the last commit rather than a value written with each row: rows stream through the
pipeline in no fixed order, so when a row is written, the object that comes first in the plan may not have
been read yet. Writing the value later keeps it a function of the plan, not of the timing.

1. **Staging** (write tasks, :func:`stage_digests`): beside each part file, ``runs/<run_id>/digests/`` gets
   a file of the same name holding its fetched rows' (``sha256``, ``uri``, ``order``), sorted by digest, one
   row group per digest partition (the leading ``prefix_chars`` hex digits). It has its part's name, so a
   retried task overwrites it, and a staging file whose part was never committed is ignored.
2. **Resolve** (driver, one digest partition at a time on a thread pool): the committed staging files' row
   groups of that partition, looked up in the digest index (only the index row groups whose digest range
   brackets a wanted digest are read). Digests new to the index are added, with this run's first URI. The
   rows whose ``duplicate_of`` is not null are written to ``runs/<run_id>/duplicates/p=<hh>.parquet``
   (``part``, ``uri``, ``duplicate_of``, sorted by part).
3. **Patch**: each part file that has such rows is read, its ``duplicate_of`` column set, and written back
   under the same name, all-or-nothing (:func:`~ood_audit.store.schema.write_part`). Row counts, names and
   commit markers do not change.
4. **Compact** the index partitions that have collected many files.

Why this is exactly once: each step is a function of committed state (the plan, the markers, the staging
files of committed parts) and of the index's entries from *other* runs (the index never gains a digest
another run already holds, so this run's own additions cannot change its answers), and it writes
deterministic content under deterministic names. A driver killed anywhere in this pass re-runs it with the
same ``--run-id`` and gets the same files. The run's summary says ``complete`` only after it.

Memory: the driver holds, per thread, one digest partition of this run (about 1/16 of its fetched objects,
~150 bytes each; 1/256 for runs over :data:`WIDE_RUN_OBJECTS`), never the index and never the reports.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ood_audit.io.fs import S3Config, resolve, write_bytes
from ood_audit.io.uri import join_uri
from ood_audit.store.digests import DigestIndex
from ood_audit.store.records import DuplicateStats
from ood_audit.store.schema import write_part

log = logging.getLogger(__name__)

STAGING_DIR, PATCH_DIR = "digests", "duplicates"
WIDE_RUN_OBJECTS = 1 << 22  # above this, 256 digest partitions instead of 16 (memory per partition)
COMPACT_MIN_FILES = 8
_STAGED = pa.schema([("sha256", pa.string()), ("uri", pa.string()), ("order", pa.int64())])
_PATCH = pa.schema([("part", pa.string()), ("uri", pa.string()), ("duplicate_of", pa.string())])


def prefix_chars_for(objects: int) -> int:
    """Digest partitions of a run's staging: 16 (one hex digit), or 256 for runs of many objects."""
    return 1 if objects <= WIDE_RUN_OBJECTS else 2


def plan_order(chunk: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """An object's plan position as one int64: ``chunk << 32 | seq``."""
    return (np.asarray(chunk, dtype=np.int64) << 32) | np.asarray(seq, dtype=np.int64)


def staging_uri(staging: str, part: str) -> str:
    """A part file's staging file: the same name, in the run's staging directory."""
    return join_uri(staging, part)


def stage_digests(sha256: pa.Array, uri: pa.Array, order: np.ndarray, target: str, *, prefix_chars: int,
                  s3: S3Config | None = None) -> None:
    """Write one part file's (sha256, uri, order) rows, null digests left out, to ``target`` (step 1)."""
    table = pa.table({"sha256": sha256, "uri": uri, "order": pa.array(order, pa.int64())}, schema=_STAGED)
    table = table.filter(pc.is_valid(table.column("sha256")))
    table = table.take(pc.sort_indices(table, sort_keys=[("sha256", "ascending"), ("order", "ascending")]))
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, _STAGED, write_statistics=["sha256"]) as writer:
        if table.num_rows == 0:
            writer.write_table(table)
        keys = pc.utf8_slice_codeunits(table.column("sha256"), 0, prefix_chars).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.array([], int)
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), keys.size]):
            writer.write_table(table.slice(a, b - a))  # one row group per digest partition
    write_bytes(target, buf.getvalue(), s3=s3)


def resolve_duplicates(output: str, run_id: str, run_dir: str, partition: str, parts: Sequence[str], *,
                       prefix_chars: int, s3: S3Config | None = None, threads: int = 8) -> DuplicateStats:
    """Steps 2–4 (module docstring) for the committed part files ``parts`` of run ``run_id``."""
    start = time.perf_counter()
    stats = DuplicateStats()
    staging, patches = join_uri(run_dir, STAGING_DIR), join_uri(run_dir, PATCH_DIR)
    fs, staging_path = resolve(staging, s3)
    present = {i.base_name for i in fs.get_file_info(pafs.FileSelector(staging_path, allow_not_found=True))}
    staged = [p for p in parts if p in present]
    stray = present - set(staged)
    for name in sorted(stray):  # staging of parts that were never committed (a failed pass): never read
        fs.delete_file(f"{staging_path}/{name}")
    stats.unstaged_files = len(parts) - len(staged)
    if stats.unstaged_files:
        log.warning("%d committed part file(s) of run %s have no digest staging (written by an older version); "
                    "their rows get no duplicate_of", stats.unstaged_files, run_id)
    index = DigestIndex(output, s3=s3, prefix_chars=2, threads=4)
    prefixes = [f"{i:0{prefix_chars}x}" for i in range(16 ** prefix_chars)]

    def one(prefix: str) -> tuple[dict[str, int], set[str], set[str]]:
        return _resolve_partition(prefix, staged, staging, patches, index, run_id, s3)

    touched: set[str] = set()
    with_patches: list[str] = []
    added: set[str] = set()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for prefix, (counts, parts_hit, index_prefixes) in zip(prefixes, pool.map(one, prefixes)):
            for key, value in counts.items():
                setattr(stats, key, getattr(stats, key) + value)
            touched |= parts_hit
            added |= index_prefixes
            if parts_hit:
                with_patches.append(prefix)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        stats.files_rewritten = sum(pool.map(lambda p: _patch_part(partition, p, patches, with_patches, s3),
                                             sorted(touched)))
    index.compact(min_files=COMPACT_MIN_FILES, prefixes=added)  # only the partitions this run added to
    stats.seconds = time.perf_counter() - start
    return stats


def _resolve_partition(prefix: str, parts: Sequence[str], staging: str, patches: str, index: DigestIndex,
                       run_id: str, s3: S3Config | None) -> tuple[dict[str, int], set[str], set[str]]:
    """One digest partition: its counts, the parts that have copies, and the index partitions added to.
    Its patch file is written only when it has rows (the patch step reads only the partitions that do)."""
    fs, _ = resolve(staging, s3)
    tables = []
    for part in parts:
        t = _read_prefix(fs, resolve(staging_uri(staging, part), s3)[1], prefix)
        if t.num_rows:
            tables.append(t.append_column("part", pa.array([part] * t.num_rows, pa.string())))
    counts = {"rows": 0, "within_run": 0, "earlier_runs": 0, "digests_added": 0}
    rows: list[tuple[str, str, str]] = []
    if tables:
        t = pa.concat_tables(tables)
        t = t.take(pc.sort_indices(t, sort_keys=[("sha256", "ascending"), ("order", "ascending"),
                                                 ("uri", "ascending")]))
        sha, uri, order, part = (t.column(c).to_pylist() for c in ("sha256", "uri", "order", "part"))
        found = index.entries(sorted(set(sha)))
        known = {d: e for d, e in found.items() if e.run_id != run_id}
        new: list[tuple[str, str, int]] = []
        first = None
        for i, d in enumerate(sha):
            if i == 0 or d != sha[i - 1]:  # rows are grouped by digest, lowest plan order first
                e = known.get(d)
                first, earlier = (e.first_uri, True) if e is not None else (uri[i], False)
                if e is None:
                    new.append((d, uri[i], order[i]))
            if uri[i] != first:
                rows.append((part[i], uri[i], first))
                counts["earlier_runs" if earlier else "within_run"] += 1
        counts["rows"] = len(rows)
        counts["digests_added"] = index.add(run_id, new, known=found) if new else 0
        added = {d[: index.prefix_chars] for d, _, _ in new} if counts["digests_added"] else set()
    else:
        added = set()
    if rows:
        rows.sort()
        table = pa.table({"part": [r[0] for r in rows], "uri": [r[1] for r in rows],
                          "duplicate_of": [r[2] for r in rows]}, schema=_PATCH)
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=4096, write_statistics=["part"])
        write_bytes(join_uri(patches, f"p={prefix}.parquet"), buf.getvalue(), s3=s3)
    return counts, {r[0] for r in rows}, added


def _read_prefix(fs: pafs.FileSystem, path: str, prefix: str) -> pa.Table:
    """The row groups of one staging file whose digests start with ``prefix`` (one per partition)."""
    with fs.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        groups = []
        for g in range(pf.num_row_groups):
            st = pf.metadata.row_group(g).column(0).statistics
            if st is None or not st.has_min_max or (st.min[: len(prefix)] <= prefix <= st.max[: len(prefix)]):
                groups.append(g)
        if not groups:
            return _STAGED.empty_table()
        t = pf.read_row_groups(groups)
    return t.filter(pc.starts_with(t.column("sha256"), prefix))


def _patch_part(partition: str, part: str, patches: str, prefixes: Sequence[str], s3: S3Config | None) -> int:
    """Set ``duplicate_of`` in one part file from every partition's patch rows for it (step 3)."""
    mapping: dict[str, str] = {}
    fs, _ = resolve(patches, s3)
    for prefix in prefixes:
        _, path = resolve(join_uri(patches, f"p={prefix}.parquet"), s3)
        t = pq.read_table(path, filesystem=fs, filters=[("part", "=", part)])
        mapping.update(zip(t.column("uri").to_pylist(), t.column("duplicate_of").to_pylist()))
    uri = join_uri(partition, part)
    pfs, ppath = resolve(uri, s3)
    with pfs.open_input_file(ppath) as fh:
        table = pq.read_table(fh)
    col = table.schema.get_field_index("duplicate_of")
    if col < 0:
        return 0
    values = pa.array([mapping.get(u) for u in table.column("uri").to_pylist()], pa.string())
    if values.equals(table.column(col).combine_chunks()):
        return 0  # already written by an earlier run of this pass
    write_part(table.set_column(col, table.schema.field(col), values), uri, s3=s3)
    return 1
