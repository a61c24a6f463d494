"""Find image datasets: labelled in-distribution sets for training and calibration, unlabelled OOD sets.

Labelled sources:

- a class-folder prefix, ``<prefix>/<class>/<file>`` (files may sit deeper inside a class folder), local
  or on S3. Classes are the folder names in sorted order; label ``i`` is ``class_names[i]``;
- a manifest (Parquet or CSV) with ``uri`` and ``label`` columns. ``label`` holds integer class indices
  (``0..K-1``) or class names (strings, indexed in sorted order).

Files whose extension is not an image's are skipped and counted (``skipped``), with one warning.
Files that fail to decode are skipped later, by :func:`decode_dataset`, which counts them too.
All rows come back in a deterministic order (the listing order, or the manifest's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_audit.errors import DataError
from ood_audit.io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Preprocess, as_preprocess
from ood_audit.io.fs import S3Config
from ood_audit.io.listing import MANIFEST_SUFFIXES, iter_listing_pages, read_manifest
from ood_audit.io.reader import load_images
from ood_audit.io.uri import parse_uri, separator

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
LABELLED_SCHEMA = pa.schema([("uri", pa.string()), ("label", pa.int32())])


def has_image_extension(uri: str) -> bool:
    """True for names ending in a known image extension (case-insensitive)."""
    return os.path.splitext(uri)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class LabelledDataset:
    """``table`` has columns ``uri`` (string) and ``label`` (int32, index into ``class_names``)."""

    table: pa.Table
    class_names: tuple[str, ...]
    source: str
    skipped: int = 0

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def uris(self) -> list[str]:
        return self.table.column("uri").to_pylist()

    def labels(self) -> np.ndarray:
        return self.table.column("label").to_numpy().astype(np.int64)


@dataclass(frozen=True)
class ImageList:
    """An unlabelled set. ``table`` has the listing columns ``uri``, ``etag``, ``size``."""

    table: pa.Table
    source: str
    skipped: int = 0

    def __len__(self) -> int:
        return self.table.num_rows

    def uris(self) -> list[str]:
        return self.table.column("uri").to_pylist()


def is_manifest(uri: str) -> bool:
    return str(uri).lower().endswith(MANIFEST_SUFFIXES)


def load_labelled(source: str, *, s3: S3Config | None = None) -> LabelledDataset:
    """A manifest (by its suffix) or else a class-folder prefix."""
    if is_manifest(source):
        return labelled_from_manifest(source, s3=s3)
    return discover_class_folders(source, s3=s3)


def discover_class_folders(prefix: str, *, s3: S3Config | None = None) -> LabelledDataset:
    """Read the ``<prefix>/<class>/<file>`` layout.

    Raises ``DataError`` when the prefix is missing or empty, when images sit directly under it (no
    class folders), or when fewer than two classes hold images.
    """
    root = str(parse_uri(prefix))
    sep = separator(root)
    base = root if root.endswith(("/", os.sep)) else root + sep
    chunks: list[pa.Table] = []
    uris: list[str] = []
    folders: list[str] = []
    loose = 0
    loose_example = ""
    skipped = 0
    for page in iter_listing_pages(root, s3=s3):
        for uri in page.column("uri").to_pylist():
            if not has_image_extension(uri):
                skipped += 1
                continue
            rel = uri[len(base):] if uri.startswith(base) else os.path.basename(uri)
            folder, slash, _ = rel.partition(sep)
            if not slash:
                loose += 1
                loose_example = loose_example or uri
                continue
            uris.append(uri)
            folders.append(folder)
        if len(uris) >= 1 << 16:
            chunks.append(pa.table({"uri": uris, "folder": folders}))
            uris, folders = [], []
    chunks.append(pa.table({"uri": pa.array(uris, pa.string()), "folder": pa.array(folders, pa.string())}))
    table = pa.concat_tables(chunks)
    names = sorted(set(pc.unique(table.column("folder")).to_pylist()))
    if loose:
        raise DataError(
            f"{loose} image(s) sit directly under {root} (e.g. {loose_example}); a labelled dataset needs "
            f"one folder per class: {base}<class>/<image>, or a manifest with uri and label columns"
        )
    if len(names) < 2:
        found = f"only the class folder {names[0]!r}" if names else "no images in class folders"
        raise DataError(
            f"{root} has {found}; a labelled dataset needs at least two class folders "
            f"({base}<class>/<image>)"
        )
    labels = pc.index_in(table.column("folder"), value_set=pa.array(names, pa.string())).cast(pa.int32())
    _warn_skipped(skipped, root)
    return LabelledDataset(
        pa.table([table.column("uri"), labels], schema=LABELLED_SCHEMA), tuple(names), root, skipped
    )


def labelled_from_manifest(
    uri: str,
    *,
    s3: S3Config | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelledDataset:
    """Read a manifest with ``uri`` and ``label`` columns.

    Integer labels are class indices; ``class_names`` names them (default ``"0"``, ``"1"``, …). String
    labels are class names, indexed in sorted order unless ``class_names`` fixes the order. Any other
    label type (floats, e.g. from a column with NaN) or a null label raises ``DataError`` naming the column.
    Rows whose URI lacks an image extension are skipped and counted.
    """
    table = read_manifest(uri, s3=s3)
    source = str(parse_uri(uri))
    if "label" not in table.column_names:
        raise DataError(f"manifest {source} has no 'label' column; a labelled dataset needs uri and label")
    keep = pa.array([has_image_extension(u) for u in table.column("uri").to_pylist()], pa.bool_())
    skipped = table.num_rows - pc.sum(keep).as_py() if table.num_rows else 0
    table = table.filter(keep)
    label = table.column("label")
    if pa.types.is_dictionary(label.type):
        label = label.cast(label.type.value_type)
    nulls = label.null_count
    if pa.types.is_integer(label.type) and not nulls:
        indices, names = _integer_labels(label, source, class_names)
    elif (pa.types.is_string(label.type) or pa.types.is_large_string(label.type)) and not nulls:
        indices, names = _string_labels(label, source, class_names)
    else:
        detail = f" with {nulls} null value(s)" if nulls else ""
        raise DataError(
            f"manifest {source} column 'label' has type {label.type}{detail}; expected integer class "
            "indices (0..K-1) or string class names, with no missing values"
        )
    present = pc.unique(indices).to_pylist()
    if len(present) < 2:
        shown = [names[i] for i in present]
        raise DataError(
            f"manifest {source} column 'label' has fewer than two classes with images ({shown}); "
            "a labelled dataset needs at least two"
        )
    _warn_skipped(skipped, source)
    out = pa.table([table.column("uri"), indices], schema=LABELLED_SCHEMA)
    return LabelledDataset(out, tuple(names), source, int(skipped))


def _integer_labels(
    label: pa.ChunkedArray, source: str, class_names: Sequence[str] | None
) -> tuple[pa.Array, list[str]]:
    values = label.to_numpy().astype(np.int64)
    if values.size == 0:
        raise DataError(f"manifest {source} has no image rows")
    lo, hi = int(values.min()), int(values.max())
    if lo < 0:
        raise DataError(f"manifest {source} column 'label' has the negative class index {lo}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(hi + 1)]
    if hi >= len(names):
        raise DataError(
            f"manifest {source} column 'label' has class index {hi} but only {len(names)} class names"
        )
    missing = sorted(set(range(len(names))) - set(np.unique(values).tolist()))
    if missing:
        log.warning("manifest %s: classes %s have no rows", source, missing[:20])
    return pa.array(values.astype(np.int32)), names


def _string_labels(
    label: pa.ChunkedArray, source: str, class_names: Sequence[str] | None
) -> tuple[pa.Array, list[str]]:
    present = sorted(set(pc.unique(label).to_pylist()))
    names = list(class_names) if class_names is not None else present
    index = {name: i for i, name in enumerate(names)}
    unknown = [p for p in present if p not in index]
    if unknown:
        raise DataError(f"manifest {source} column 'label' has unknown class names {unknown[:10]}")
    return pc.index_in(label, value_set=pa.array(names, label.type)).cast(pa.int32()).combine_chunks(), names


def list_images(
    prefixes: str | Sequence[str],
    *,
    s3: S3Config | None = None,
    allow_empty: bool = False,
) -> ImageList:
    """Every image under the prefixes, recursively (flat folders and class-folder layouts alike).

    Non-image extensions are skipped and counted. Raises ``DataError`` when no image is found, unless
    ``allow_empty``.
    """
    sources = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    pages: list[pa.Table] = []
    skipped = 0
    for page in iter_listing_pages(sources, s3=s3, allow_empty=allow_empty):
        keep = pa.array([has_image_extension(u) for u in page.column("uri").to_pylist()], pa.bool_())
        kept = page.filter(keep)
        skipped += page.num_rows - kept.num_rows
        pages.append(kept)
    table = pa.concat_tables(pages) if pages else pa.schema(
        [("uri", pa.string()), ("etag", pa.string()), ("size", pa.int64())]
    ).empty_table()
    label = ", ".join(str(parse_uri(s)) for s in sources)
    if table.num_rows == 0 and not allow_empty:
        raise DataError(f"no images under {label} ({skipped} non-image file(s) skipped)")
    _warn_skipped(skipped, label)
    return ImageList(table, label, skipped)


@dataclass
class DecodedImages:
    """Decoded pixels: ``images`` is ``N×H×W×3`` uint8; rows that failed to decode are left out."""

    images: np.ndarray
    uris: list[str]
    labels: np.ndarray | None = None
    skipped: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (uri, status, error), first 100


def decode_dataset(
    uris: Sequence[str],
    *,
    size: Preprocess | int | tuple[int, int],
    labels: np.ndarray | Sequence[int] | None = None,
    s3: S3Config | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 8,
) -> DecodedImages:
    """Fetch and decode ``uris`` in memory (small sets: tests, evaluation); failures are skipped and counted."""
    pre = as_preprocess(size)
    if pre.output_hw is None:
        raise DataError("decode_dataset needs a fixed size so the images can be stacked")
    h, w = pre.output_hw
    results = load_images(
        list(uris), size=pre, s3=s3, max_bytes=max_bytes, max_pixels=max_pixels, threads=threads
    )
    keep = [i for i, r in enumerate(results) if r.ok]
    failures = [(uris[i], r.status, r.error or "") for i, r in enumerate(results) if not r.ok]
    if failures:
        log.warning(
            "skipped %d of %d image(s) that could not be decoded (first: %s: %s)",
            len(failures), len(results), failures[0][0], failures[0][2],
        )
    images = (
        np.stack([results[i].array for i in keep]) if keep else np.zeros((0, h, w, 3), np.uint8)
    )
    out_labels = None if labels is None else np.asarray(labels, dtype=np.int64)[keep]
    return DecodedImages(images, [uris[i] for i in keep], out_labels, len(failures), failures[:100])


def _warn_skipped(skipped: int, source: str) -> None:
    if skipped:
        log.warning("skipped %d file(s) under %s whose extension is not an image's", skipped, source)
