"""The scan report (SPEC §11): its Parquet schema, its layout under an output root, and part-file writing.

Layout under an output root (local directory or ``s3://bucket/prefix``)::

    <output>/reports/run_date=YYYY-MM-DD/<run_id>.c<chunk>.a<attempt>.<digest>.parquet

``run_date`` is a Hive partition, so ``pyarrow.dataset``, Spark, DuckDB or Athena read
``<output>/reports/`` as one table with a ``run_date`` column (see :func:`open_reports`). Everything a run
keeps for itself (plan, commit markers, summary) lives beside it under ``<output>/runs/<run_id>/``; see
:mod:`ood_audit.store.run_ledger`.

Schema (:func:`report_schema`), one row per listed object, in this order:

========================  ========================  ===================================================
column                    type                      meaning
========================  ========================  ===================================================
``run_id``                string, not null          the scan run
``bundle_id``             string, not null          the audit bundle that scored it
``uri``                   string, not null          ``s3://bucket/key`` or an absolute local path
``etag``                  string                    as listed (null when a manifest gives none)
``size_bytes``            int64                     as listed (null when a manifest gives none)
``status``                string, not null          ``ok | decode_error | missing | too_large | unsupported | refused``
``error``                 string                    why, when ``status`` is not ``ok``
``width``/``height``      int32                     stored size from the image header, when readable
``featurenorm`` …         float64                   scores, higher = more in-distribution; null unless ok
``csd_view``              int8                      the CSD view that decided (0–3 quadrants, 4 global, 5 centre)
``pred_class``            int32                     the classifier's argmax
``knn_nn``                list<int32>               the nearest kNN-bank rows (SPEC §13), closest first
``knn_nn_dist``           list<float32>             their L2 distances (the ``knn`` score's units)
``pct_<score>``           float32                   percent of held-out ID scoring below (0–100)
``flagged``               bool                      any ``flag_on`` score below its union threshold
``flag_reasons``          list<string>              every score below its own per-score threshold
``scanned_at``            timestamp[us, UTC]        when the row was produced
``content_sha256``        string                    SHA-256 of the object's bytes (hex), when fetched
``duplicate_of``          string                    the first URI with the same ``content_sha256`` in this run or an
                                                    earlier run under the output root (:mod:`ood_audit.scan.duplicates`);
                                                    null for that first one; final once the run's summary is complete
``quality_issues``        list<string>              SPEC §14 findings (never a status or a flag); null unless ok
``near_duplicate_of_id``  string                    the nearest kNN-bank image's URI when its distance is
                                                    under the bundle's τ (:mod:`ood_audit.flagging.neardup`), else null
========================  ========================  ===================================================

The score columns are :data:`SPEC_SCORES` (always present, null when a bundle lacks one) followed by any
further score the bundle's scorer produces (e.g. ``msp+fn``, ``energy+fn``), so a score added later flows
through without code changes here. Scores, percentiles, ``flagged`` and ``flag_reasons`` are null for rows
whose status is not ``ok``: nothing was judged.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ood_audit.io.fs import S3Config, resolve
from ood_audit.io.uri import join_uri, parse_uri

REPORT_FORMAT_VERSION = "5"
# "1" lacks the kNN neighbour columns, "1" and "2" lack content_sha256 and quality_issues, "1" to "3" lack
# near_duplicate_of_id, "1" to "4" lack duplicate_of; readers treat absent columns as null.
SUPPORTED_REPORT_FORMATS: tuple[str, ...] = ("1", "2", "3", "4", "5")
REPORTS_DIR = "reports"
PARTITION_KEY = "run_date"
SPEC_SCORES: tuple[str, ...] = ("featurenorm", "csd", "msp", "energy", "maxlogit", "knn")
QUALITY_COLUMN = "quality_issues"  # SPEC §14 findings, a list<string> column
PART_SUFFIX = ".parquet"

_IDENTITY: tuple[pa.Field, ...] = (
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("bundle_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("etag", pa.string()),
    pa.field("size_bytes", pa.int64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
)


def score_columns(score_names: Sequence[str] = ()) -> list[str]:
    """:data:`SPEC_SCORES` first, then the other names in their given order (no duplicates)."""
    return list(dict.fromkeys([*SPEC_SCORES, *score_names]))


def report_schema(score_names: Sequence[str] = ()) -> pa.Schema:
    """The report schema for a scorer producing ``score_names`` (see the module docstring)."""
    scores = score_columns(score_names)
    fields = [
        *_IDENTITY,
        *(pa.field(s, pa.float64()) for s in scores),
        pa.field("csd_view", pa.int8()),
        pa.field("pred_class", pa.int32()),
        pa.field("knn_nn", pa.list_(pa.int32())),
        pa.field("knn_nn_dist", pa.list_(pa.float32())),
        *(pa.field(f"pct_{s}", pa.float32()) for s in scores),
        pa.field("flagged", pa.bool_()),
        pa.field("flag_reasons", pa.list_(pa.string())),
        pa.field("scanned_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("content_sha256", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field(QUALITY_COLUMN, pa.list_(pa.string())),
        pa.field("near_duplicate_of_id", pa.string()),
    ]
    return pa.schema(fields, metadata={"ood_audit.report_format": REPORT_FORMAT_VERSION})


def reports_root(output: str) -> str:
    return join_uri(output, REPORTS_DIR)


def partition_uri(output: str, run_date: str) -> str:
    """The Hive partition directory of one run date."""
    return join_uri(reports_root(output), f"{PARTITION_KEY}={run_date}")


def part_name(run_id: str, chunk: int, attempt: int, digest: str) -> str:
    """A part file's name: the run, the chunk, the pipeline pass that wrote it, and a digest of its rows."""
    return f"{run_id}.c{chunk:06d}.a{attempt:02d}.{digest}{PART_SUFFIX}"


def parse_part_name(name: str) -> tuple[str, int, int] | None:
    """``(run_id, chunk, pass)`` of a part file name, or None for any other file."""
    if not name.endswith(PART_SUFFIX):
        return None
    parts = name[: -len(PART_SUFFIX)].split(".")
    if len(parts) != 4 or not parts[1].startswith("c") or not parts[2].startswith("a"):
        return None
    try:
        return parts[0], int(parts[1][1:]), int(parts[2][1:])
    except ValueError:
        return None


def write_part(table: pa.Table, uri: str, *, s3: S3Config | None = None) -> None:
    """Write one part file so that readers see all of it or nothing.

    Object storage: one upload, which becomes visible only when complete. Locally: a dot-file (which dataset readers
    skip) renamed into place.
    """
    parsed = parse_uri(uri)
    fs, path = resolve(uri, s3)
    if parsed.is_remote:
        with fs.open_output_stream(path) as out:
            pq.write_table(table, out)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_parts(partition: str, *, s3: S3Config | None = None, run_id: str | None = None) -> list[str]:
    """Names of the part files in one partition directory (only ``run_id``'s when given)."""
    fs, path = resolve(partition, s3)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    names = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        parsed = parse_part_name(info.base_name)
        if parsed is not None and (run_id is None or parsed[0] == run_id):
            names.append(info.base_name)
    return sorted(names)


def delete_parts(partition: str, names: Sequence[str], *, s3: S3Config | None = None) -> None:
    fs, path = resolve(partition, s3)
    for name in names:
        try:
            fs.delete_file(f"{path}/{name}")
        except FileNotFoundError:
            pass


def count_rows(partition: str, names: Sequence[str], *, s3: S3Config | None = None, threads: int = 16) -> int:
    """Rows in the given part files, from their footers only."""
    fs, path = resolve(partition, s3)

    def rows(name: str) -> int:
        with fs.open_input_file(f"{path}/{name}") as fh:
            return pq.ParquetFile(fh).metadata.num_rows

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(rows, names))


def open_reports(output: str, *, s3: S3Config | None = None, schema: pa.Schema | None = None) -> Any:
    """All reports under ``output`` as one ``pyarrow.dataset.Dataset`` with a string ``run_date`` column.

    ``schema`` (without ``run_date``) fixes the columns, e.g. :func:`report_schema` to read the SPEC
    columns of reports written with different bundles; by default it is taken from the files.
    Returns None when nothing was written there yet.
    """
    fs, path = resolve(reports_root(output), s3)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    partition_schema = pa.schema([(PARTITION_KEY, pa.string())])
    partitioning = pads.partitioning(partition_schema, flavor="hive")
    if schema is not None:
        schema = schema.append(pa.field(PARTITION_KEY, pa.string()))
    return pads.dataset(path, format="parquet", filesystem=fs, partitioning=partitioning, schema=schema)
