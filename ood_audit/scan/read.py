"""Scan stages 1–2 (Ray Data read tasks): the run's plan, then fetch + decode, with one status per object.

- :class:`PlanDatasource` turns the stored plan (:mod:`ood_audit.store.run_ledger`) into read tasks, one per
  row group of a chunk's plan file, so the driver only ever holds slice descriptors, never keys.
- :func:`fetch_decode` is a ``map_batches`` function (CPU tasks, separate from the scoring actors): it
  fetches a batch's objects on a thread pool, so many requests are in flight, and decodes each with the
  bundle's :class:`~ood_audit.io.decode.Preprocess`. Pixels stay uint8 until the model stage.

Per-object failures never raise; they become statuses (SPEC §11):

- ``too_large``: the listed size is over ``max_bytes`` (no request), or the size in the GET's response is
  (the body is not read; one GET per object, no HEAD: :mod:`ood_audit.io.reader`), or the header claims
  more than ``max_pixels`` pixels (refused before decoding: decompression bombs);
- ``missing``: deleted (or unreadable) between listing and reading;
- ``decode_error`` / ``unsupported``: see :mod:`ood_audit.io.decode`.

In the same task, every fetched object gets its ``content_sha256`` (the digest index's key,
:mod:`ood_audit.store.digests`) and every decoded one its SPEC §14 quality issues
(:mod:`ood_audit.io.quality`, on the decoder's working copy of the whole frame, at most 256 px on the
longer side whatever the model size, with the original size for ``tiny`` and ``odd_aspect_ratio``):
findings only, they never change a status. Calibration measures its held-out images the same way
(:class:`~ood_audit.calibration.workers.ScoreWorker`), so the calibrated ``blurry`` threshold is on the
scale the scan measures.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ood_audit.io.decode import DecodeResult, Preprocess, decode_image
from ood_audit.io.fs import S3Config, resolve
from ood_audit.io.quality import QualityConfig, quality_issues
from ood_audit.io.reader import read_object
from ood_audit.scan.rows import CHUNK, DIGEST, PIXELS, QUALITY, READ_S, SEQ, issue_lists
from ood_audit.store.digests import content_sha256

_ROW_BYTES_ESTIMATE = 160  # uri + etag + size, for Ray Data's memory planning


@dataclass(frozen=True)
class PlanSlice:
    """Rows ``[start, start + rows)`` of chunk ``chunk``: row group ``row_group`` of the file at ``uri``."""

    uri: str
    chunk: int
    row_group: int
    start: int
    rows: int


class PlanDatasource(Datasource):
    """The plan's slices as read tasks. Each block has ``uri``, ``etag``, ``size``, ``_chunk``, ``_seq``."""

    def __init__(self, slices: list[PlanSlice], s3: S3Config | None = None) -> None:
        super().__init__()
        self._slices = slices
        self._s3 = s3

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(s.rows for s in self._slices) * _ROW_BYTES_ESTIMATE

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        # One task per slice whatever the requested parallelism: slices are already small, and a
        # slice's rows must stay together with their chunk number and positions.
        s3 = self._s3
        tasks = []
        for piece in self._slices:
            meta = BlockMetadata(num_rows=piece.rows, size_bytes=piece.rows * _ROW_BYTES_ESTIMATE,
                                 exec_stats=None, input_files=None)
            tasks.append(ReadTask(lambda piece=piece: [read_slice(piece, s3)], meta))
        return tasks


def read_slice(piece: PlanSlice, s3: S3Config | None) -> pa.Table:
    fs, path = resolve(piece.uri, s3)
    with fs.open_input_file(path) as fh:
        table = pq.ParquetFile(fh).read_row_group(piece.row_group, columns=["uri", "etag", "size"])
    if table.num_rows != piece.rows:
        raise RuntimeError(f"plan file {piece.uri} row group {piece.row_group} has {table.num_rows} rows, "
                           f"expected {piece.rows}; the plan was modified")
    size = table.column("size").fill_null(-1)
    return pa.table({
        "uri": table.column("uri"),
        "etag": table.column("etag"),
        "size": size,
        CHUNK: pa.array(np.full(piece.rows, piece.chunk, dtype=np.int32)),
        SEQ: pa.array(np.arange(piece.start, piece.start + piece.rows, dtype=np.int32)),
    })


_POOL_LOCK = threading.Lock()
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One fetch pool per worker process and size, reused by every batch that process runs."""
    with _POOL_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scan-fetch")
        return pool


@dataclass(frozen=True)
class Loaded:
    """One object's outcome, its content digest (when fetched) and its quality issues (when decoded)."""

    result: DecodeResult
    sha256: str | None = None
    issues: tuple[str, ...] | None = None


def load_one(uri: str, listed_size: int, pre: Preprocess, s3: S3Config | None,
             max_bytes: int, max_pixels: int, quality: QualityConfig | None = None) -> Loaded:
    """One object's outcome; a listed size over ``max_bytes`` is refused without a request.

    ``quality``: the SPEC §14 thresholds; None skips the checks (and the working copy), which the model's
    pixels do not depend on (:mod:`ood_audit.io.decode`)."""
    if listed_size > max_bytes:
        return Loaded(DecodeResult("too_large", f"{listed_size} bytes exceeds max_bytes={max_bytes}"))
    data, failed = read_object(uri, s3=s3, max_bytes=max_bytes)
    if failed is not None:
        return Loaded(failed)
    assert data is not None
    return judge_bytes(data, pre, max_bytes, max_pixels, quality)


def judge_bytes(data: bytes, pre: Preprocess, max_bytes: int, max_pixels: int,
                quality: QualityConfig | None = None) -> Loaded:
    """What the read stage makes of one fetched object: decoded pixels, quality issues, content digest."""
    result = decode_image(data, size=pre, max_bytes=max_bytes, max_pixels=max_pixels,
                          working_size=None if quality is None else quality.working_size)
    issues = None
    if quality is not None and result.ok and result.working is not None:
        original = (result.width, result.height) if result.width and result.height else None
        issues = tuple(quality_issues(result.working, original, quality))
        result = replace(result, working=None)  # measured; only the model's array travels on
    return Loaded(result, content_sha256(data), issues)


def fetch_decode(batch: dict[str, np.ndarray], *, preprocess: dict[str, Any], s3: S3Config | None,
                 max_bytes: int, max_pixels: int, threads: int,
                 quality: dict[str, Any] | None = None, checks: bool = True) -> dict[str, np.ndarray]:
    """Fetch and decode one batch: adds ``status``, ``error``, ``width``, ``height``, ``content_sha256``,
    ``quality_issues``, ``pixels``, ``_read_s``.

    ``pixels`` is uint8 ``N×H×W×3``; rows that did not decode hold zeros there (and a status saying why).
    ``width``/``height`` are -1 when unknown. ``content_sha256`` is None where nothing was fetched;
    ``quality_issues`` is a list of issue names per object (empty for none), None where nothing decoded:
    an Arrow ``list<string>`` array, so its type survives Ray's batches whatever the lists hold.
    ``quality`` holds :class:`~ood_audit.io.quality.QualityConfig` fields (SPEC §14 defaults when None).
    ``checks=False`` skips the quality checks (``quality_issues`` is then None everywhere; the pixels are
    the same): for ``benchmarks/scan.py``, which measures their cost with them on and off.
    """
    start = time.perf_counter()
    pre = Preprocess.from_dict(preprocess)
    qc = QualityConfig.model_validate(quality or {}) if checks else None
    h, w = pre.output_hw  # the run checks that the bundle fixes a size
    uris = [str(u) for u in batch["uri"]]
    sizes = np.asarray(batch["size"], dtype=np.int64).tolist()
    n = len(uris)
    if threads > 1 and n > 1:
        loaded = list(_pool(threads).map(
            lambda args: load_one(args[0], args[1], pre, s3, max_bytes, max_pixels, qc), zip(uris, sizes)))
    else:
        loaded = [load_one(u, s, pre, s3, max_bytes, max_pixels, qc) for u, s in zip(uris, sizes)]
    results = [x.result for x in loaded]
    pixels = np.zeros((n, h, w, 3), dtype=np.uint8)
    for i, r in enumerate(results):
        if r.ok:
            pixels[i] = r.array
    out = {key: batch[key] for key in ("uri", "etag", "size", CHUNK, SEQ)}
    out.update(
        status=np.array([r.status for r in results], dtype=object),
        error=np.array([r.error for r in results], dtype=object),
        width=np.array([-1 if r.width is None else r.width for r in results], dtype=np.int32),
        height=np.array([-1 if r.height is None else r.height for r in results], dtype=np.int32),
    )
    out[DIGEST] = np.array([x.sha256 for x in loaded], dtype=object)
    out[QUALITY] = issue_lists([x.issues for x in loaded])
    out[PIXELS] = pixels
    out[READ_S] = np.full(n, (time.perf_counter() - start) / max(n, 1), dtype=np.float32)
    return out
