"""FiftyOne sink (SPEC §12): adds the selected samples to a FiftyOne dataset, for browsing in its App.

The dataset is created when missing (``persistent=True``); an existing one is added to. Each sample is tagged
``ood_audit`` and has these fields, whose names are stable (those of a JSONL manifest line,
:func:`~ood_audit.sinks.items.manifest_line`, wherever FiftyOne allows them):

- ``filepath``: the object, as FiftyOne can read it. A local path as it is; an ``s3://`` URI as it is where
  the installed FiftyOne reads object storage itself, through its media cache (``fiftyone.core.storage``
  does not take the URI for a local path). Open-source FiftyOne reads local files only and would store
  ``s3://b/k`` as the path ``<cwd>/s3:/b/k``, so there the object is copied once, as the scan's reader
  fetches it, to ``<fiftyone default_dataset_dir>/ood-audit-media/<dataset>/`` under a name
  made from its URI and etag, and ``filepath`` is that copy (the object as it is at export time, as the
  report's thumbnails show it). ``uri`` is the object's URI either way.
- ``export_key``: the dedupe key of ``(uri, etag, bundle_id)`` (as Label Studio's ``export_key``);
- ``uri``, ``etag``, ``run_id``, ``bundle_id``, ``policy``, ``queue``, ``anomaly``, ``flagged``,
  ``flag_reasons``, ``flagged_by``, ``pred_class``, ``csd_view`` (0-5), ``quality_issues``,
  ``duplicate_of``, ``near_duplicate_of_id``, every score by its name (``csd``, ``msp+fn``, ...) and its
  percentile as ``pct_<score>``: as in the manifest (null where the run has none);
- ``label``: a ``Classification``, ``outlier`` for flagged rows, ``in-distribution`` otherwise, with the
  anomaly as its confidence (the manifest's ``label``, as a label the App shows and a labeler can edit);
- ``csd_box``: ``Detections`` with one ``Detection`` whose label is the deciding CSD view's name (``q00``
  ... ``centre``) and whose ``bounding_box`` is ``[x, y, w, h]`` relative to the image, top-left origin.
  It is the report's box (:func:`~ood_audit.report.explain.csd_box`, from the bundle's preprocess and the
  image's size after EXIF orientation read as the report reads it), divided by 100: no geometry here.
  Empty when the view or the geometry is unknown;
- ``nearest_uris``, ``nearest_distances``: the nearest kNN-bank (training) images' URIs, closest first,
  and their distances (null for bundles without bank sources);
- ``media_error``: why the object cannot be shown, in the report's words (``deleted since the scan``, ...),
  else null; the box then uses the size the scan recorded, as the report's placeholder does.

Each sample is added once, by two guards. The ledger (:mod:`~ood_audit.sinks.export_ledger`) skips what it
recorded. And because a process can die after FiftyOne added a batch but before the ledger recorded it, the
sink has ``present(keys)``: the export notes each batch in flight and, at the next export, records those of
its keys the dataset already has (``export_key``, indexed); ``send`` also looks the batch's keys up first
and adds only the missing ones. So a re-run adds nothing, whatever point the last one died at. One sample
per key: a second queue (``disagreement``) sending a key the dataset has does not add it again.

FiftyOne is an optional extra (``pip install 'ood-audit[fiftyone]'``), imported only when the sink opens.
Any failure of FiftyOne (its database cannot start or be reached, a field of another type) ends the export
with one line; the destination (and so the ledger) names the database without credentials.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ood_audit.errors import BundleError, ConfigError
from ood_audit.io.fs import S3Config
from ood_audit.sinks.items import ExportError, ExportItem, manifest_line

log = logging.getLogger(__name__)

INSTALL_HINT = "--to fiftyone needs FiftyOne: pip install 'ood-audit[fiftyone]'"
TAG = "ood_audit"
KEY_FIELD = "export_key"
MEDIA_DIR = "ood-audit-media"
READ_THREADS = 8
_CREDENTIALS = re.compile(r"(?<=://)[^@/\s]*@")
_REMOTE = re.compile(r"(?!(?i:file)://)[A-Za-z][A-Za-z0-9+.-]*://")  # s3:// (or another store), not a local path


def fiftyone_available() -> bool:
    """Whether FiftyOne can be imported here (without importing it: that takes seconds)."""
    return importlib.util.find_spec("fiftyone") is not None


@dataclass(frozen=True)
class _Media:
    filepath: str
    stored: tuple[int, int] | None  # (width, height) after EXIF orientation, as the report's thumbnails read it
    error: str | None


@dataclass(frozen=True)
class _BundleView:
    geometry: Any            # ood_audit.report.explain.CsdGeometry, or None
    bank_uris: list[str] | None


class FiftyOneSink:
    """Adds samples to the FiftyOne dataset ``dataset`` (module docstring). ``output`` is the scan's output
    root: the sink reads the rows' sizes and neighbours, and the bundle, from it."""

    kind = "fiftyone"

    def __init__(self, dataset: str, *, output: str, s3: S3Config | None = None, batch_size: int = 500) -> None:
        if not fiftyone_available():
            raise ConfigError(INSTALL_HINT)
        if not dataset or not dataset.strip():
            raise ConfigError("--to fiftyone needs --fiftyone-dataset NAME")
        if batch_size <= 0:
            raise ConfigError(f"--batch-size must be > 0, got {batch_size}")
        self.name, self.output, self.s3, self.batch_size = dataset, output, s3, batch_size
        self.destination = f"fiftyone:{dataset}"  # made exact (the database too) by open()
        self._fo: Any = None
        self._ds: Any = None
        self._media_root = ""
        self._is_local: Any = None
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}  # (run id, uri) -> size and neighbours
        self._views: dict[str, _BundleView | None] = {}          # run id -> its bundle's geometry and bank
        self._bundles: dict[str, _BundleView | None] = {}        # bundle URI -> the same, read once

    def open(self) -> None:
        try:
            import fiftyone as fo
            import fiftyone.core.storage as fos
        except Exception as exc:  # noqa: BLE001 - a broken install: one line, not a traceback
            raise ExportError(f"cannot import FiftyOne: {_short(exc)}") from None
        self._fo, self._is_local = fo, fos.is_local
        self.destination = f"{_database(fo)}#{self.name}"
        with self._failing("cannot open the dataset"):
            if fo.dataset_exists(self.name):
                ds = fo.load_dataset(self.name)
            else:
                try:
                    ds = fo.Dataset(self.name, persistent=True)
                except ValueError:  # created meanwhile by another export (the other queue)
                    ds = fo.load_dataset(self.name)
            self._declare(ds, _FIXED_FIELDS)
            ds.create_index(KEY_FIELD)
        self._ds = ds
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip(".-") or "dataset"
        self._media_root = os.path.join(fo.config.default_dataset_dir, MEDIA_DIR, slug)
        log.info("fiftyone: dataset %r (%d samples) in %s", self.name, len(ds), self.destination.split("#")[0])

    def begin(self, run_id: str, items: Sequence[ExportItem]) -> None:
        """Reads what the payload lacks, for the items to send: each row's size and kNN neighbours (from its
        own run's report) and each run's bundle (the CSD geometry and the bank's URIs)."""
        import pyarrow.compute as pc

        from ood_audit.store.runs import find_run, list_runs, run_dataset

        self._rows.clear()
        uris: dict[str, set[str]] = defaultdict(set)
        for item in items:
            uris[item.run_id].add(item.uri)
        runs = list_runs(self.output, s3=self.s3) if uris else []
        for rid, wanted in uris.items():
            run = find_run(self.output, rid, s3=self.s3, runs=runs)
            ds = run_dataset(run, s3=self.s3)
            cols = [c for c in ("uri", "width", "height", "knn_nn", "knn_nn_dist") if c in ds.schema.names]
            rows = ds.to_table(columns=cols, filter=(pc.field("status") == "ok")
                               & pc.field("uri").isin(sorted(wanted))).to_pylist()
            for r in rows:
                self._rows.setdefault((rid, r["uri"]), r)
            self._views[rid] = self._bundle(run.bundle_uri)

    def present(self, keys: set[str]) -> set[str]:
        """The keys of ``keys`` that samples of the dataset already carry."""
        if not keys:
            return set()
        from fiftyone import ViewField as F

        with self._failing("cannot look up samples"):
            return set(self._ds.match(F(KEY_FIELD).is_in(sorted(keys))).distinct(KEY_FIELD))

    def send(self, items: Sequence[ExportItem]) -> None:
        if not items:
            return
        have = self.present({i.key for i in items})
        todo = [i for i in items if i.key not in have]
        if have:
            log.info("fiftyone: %d of %d already in dataset %r (added before the ledger recorded them)",
                     len(have), len(items), self.name)
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(todo))) as pool:
            media = list(pool.map(self._media, todo))
        fo = self._fo
        samples = [self._sample(fo, i, m) for i, m in zip(todo, media)]
        scores = {n: _SCORE for i in todo for s in i.scores for n in (s, f"pct_{s}")}
        with self._failing("cannot add samples", batch=True):
            self._declare(self._ds, scores)
            self._ds.add_samples(samples, progress=False)
        log.info("fiftyone: added %d sample(s) to dataset %r", len(samples), self.name)

    def close(self) -> None:
        self._ds = None  # FiftyOne keeps its connection; its database stops with the process

    # -- one sample ---------------------------------------------------------------------------------------------

    def _sample(self, fo: Any, item: ExportItem, media: _Media) -> Any:
        from ood_audit.report.explain import csd_box

        doc = manifest_line(item)
        doc.pop("source-ref")
        key, choice = doc.pop("key"), doc.pop("label")
        row = self._rows.get((item.run_id, item.uri), {})
        view = self._views.get(item.run_id)
        box = csd_box(item.csd_view, view.geometry if view else None, media.stored)
        detections = [] if box is None else [fo.Detection(label=box.view, bounding_box=[
            box.left / 100.0, box.top / 100.0, box.width / 100.0, box.height / 100.0])]
        bank = view.bank_uris if view else None
        dists = list(row.get("knn_nn_dist") or [])
        pairs = [(bank[r], dists[j] if j < len(dists) else None) for j, r in enumerate(row.get("knn_nn") or [])
                 if bank is not None and 0 <= r < len(bank)]
        fields = {**doc, KEY_FIELD: key,
                  "label": fo.Classification(label=choice, confidence=_finite(item.anomaly)),
                  "csd_box": fo.Detections(detections=detections),
                  "nearest_uris": None if bank is None else [u for u, _ in pairs],
                  "nearest_distances": None if bank is None else [_finite(d) for _, d in pairs],
                  "media_error": media.error}
        return fo.Sample(filepath=media.filepath, media_type="image", tags=[TAG], **fields)

    def _media(self, item: ExportItem) -> _Media:
        """Where FiftyOne reads the object (copied first where it cannot read the URI), and the object's size
        after EXIF orientation, read as the report reads it (its placeholders fall back to the recorded size)."""
        from ood_audit.io.decode import DEFAULT_MAX_BYTES
        from ood_audit.io.reader import read_object
        from ood_audit.report.previews import object_thumb

        row = self._rows.get((item.run_id, item.uri), {})
        recorded = (row.get("width"), row.get("height"))
        if not (_REMOTE.match(item.uri) and self._is_local(item.uri)):
            thumb = object_thumb(item.uri, size=recorded, s3=self.s3, max_side=16)
            return _Media(item.uri, thumb.stored, thumb.note)
        path = self._copy_path(item)
        if not os.path.isfile(path):
            data, _ = read_object(item.uri, s3=self.s3, max_bytes=DEFAULT_MAX_BYTES)
            if data is None:  # gone, too large, refused: the report's placeholder says which, and its size
                thumb = object_thumb(item.uri, size=recorded, s3=self.s3, max_side=16)
                return _Media(path, thumb.stored, thumb.note)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            part = f"{path}.part-{os.getpid()}-{threading.get_ident()}"
            with open(part, "wb") as fh:
                fh.write(data)
            os.replace(part, path)  # whole or absent: a copy is never half written
        thumb = object_thumb(path, size=recorded, max_side=16)
        return _Media(path, thumb.stored, thumb.note)

    def _copy_path(self, item: ExportItem) -> str:
        """The local copy of a remote object: named by a digest of (uri, etag), so a changed object gets a new
        copy and no key (``..``, odd characters) can reach outside the media folder; the extension kept."""
        digest = hashlib.sha256(f"{item.uri}\x1f{item.etag or ''}".encode()).hexdigest()[:32]
        base = item.uri.rsplit("/", 1)[-1]
        ext = os.path.splitext(base)[1].lower()
        ext = ext if re.fullmatch(r"\.[a-z0-9]{1,8}", ext) else ""
        return os.path.join(self._media_root, digest[:2], digest + ext)

    def _bundle(self, uri: str) -> _BundleView | None:
        if uri in self._bundles:
            return self._bundles[uri]
        from ood_audit.bundle.files import open_bundle
        from ood_audit.report.explain import csd_geometry

        view = None
        if uri:
            try:
                bundle = open_bundle(uri, s3=self.s3, verify=False)
                sources = bundle.bank_sources()
                view = _BundleView(csd_geometry(bundle.info),
                                   None if sources is None else sources.column("uri").to_pylist())
            except BundleError as exc:
                log.warning("fiftyone: the bundle cannot be read (%s): samples get no CSD box or neighbours", exc)
        self._bundles[uri] = view
        return view

    # -- FiftyOne's schema and errors ---------------------------------------------------------------------------

    def _declare(self, ds: Any, fields: dict[str, tuple[str, str | None]]) -> None:
        """Declares ``fields`` the dataset lacks, so each has its type even while every value is null."""
        fo = self._fo
        have = ds.get_field_schema()
        for name, (kind, sub) in fields.items():
            if name in have:
                continue
            if kind == "list":
                ds.add_sample_field(name, fo.ListField, subfield=getattr(fo, sub))
            elif kind == "embedded":
                ds.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=getattr(fo, sub))
            else:
                ds.add_sample_field(name, getattr(fo, kind))

    @contextmanager
    def _failing(self, what: str, batch: bool = False) -> Iterator[None]:
        """Any FiftyOne exception as one ``ExportError`` line (ours pass through)."""
        try:
            yield
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - FiftyOne, pymongo and mongoengine raise many types
            tail = "; nothing of this batch recorded, re-run to add it" if batch else ""
            where = self.destination.rsplit("#", 1)[0] if "#" in self.destination else "FiftyOne"
            raise ExportError(f"fiftyone dataset {self.name!r} ({where}): {what}: {_short(exc)}{tail}") from None


_FIXED_FIELDS: dict[str, tuple[str, str | None]] = {
    KEY_FIELD: ("StringField", None), "uri": ("StringField", None), "etag": ("StringField", None),
    "run_id": ("StringField", None), "bundle_id": ("StringField", None), "policy": ("StringField", None),
    "queue": ("StringField", None), "anomaly": ("FloatField", None), "flagged": ("BooleanField", None),
    "flag_reasons": ("list", "StringField"), "flagged_by": ("StringField", None), "pred_class": ("IntField", None),
    "csd_view": ("IntField", None), "quality_issues": ("list", "StringField"),
    "duplicate_of": ("StringField", None), "near_duplicate_of_id": ("StringField", None),
    "label": ("embedded", "Classification"), "csd_box": ("embedded", "Detections"),
    "nearest_uris": ("list", "StringField"), "nearest_distances": ("list", "FloatField"),
    "media_error": ("StringField", None)}
_SCORE = ("FloatField", None)  # a score, or its percentile


def _database(fo: Any) -> str:
    """Where the dataset lives, without credentials or options: the database URI, or FiftyOne's own local
    database folder; and the database's name."""
    uri = fo.config.database_uri
    where = _CREDENTIALS.sub("", uri).split("?", 1)[0].rstrip("/") if uri else \
        "file://" + os.path.abspath(os.path.expanduser(fo.config.database_dir))
    return f"{where}/{fo.config.database_name}"


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = _CREDENTIALS.sub("", " ".join(f"{type(exc).__name__}: {exc}".split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["INSTALL_HINT", "KEY_FIELD", "TAG", "FiftyOneSink", "fiftyone_available"]
