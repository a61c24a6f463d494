"""Thumbnails of scanned objects for the report's grid, fetched from the objects themselves.

The report is written after the scan, sometimes long after, so an object may be gone or replaced. A
thumbnail never fails the report: an object deleted since the scan, one that no longer decodes, or one too
large to preview gets a placeholder that says why, drawn at the image's recorded aspect ratio (its
``width``/``height`` from the scan) so the CSD box still lands where it should. Each thumbnail carries the
image's stored size after EXIF orientation (``Thumb.stored``), from which the CSD box is computed. Objects are read in
parallel on a bounded thread pool; each is read once, decoded, shrunk and dropped, so memory holds one
object per thread plus the small JPEGs. Reads go through the scan's reader (:func:`ood_audit.io.reader.read_object`),
so an object over :data:`MAX_PREVIEW_BYTES`, stored or once inflated, is stopped while it streams, never
read whole. Like the scan's decode, thumbnails apply EXIF orientation, so the
CSD box is drawn on the image the model saw.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageOps

from ood_audit.errors import OodAuditError
from ood_audit.io.fs import S3Config
from ood_audit.io.reader import read_object
from ood_audit.io.thumbs import thumbnail_jpeg
from ood_audit.report.explain import data_uri

THUMB_SIDE = 128
MAX_PREVIEW_BYTES = 64 * 1024 * 1024
MAX_PREVIEW_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class Thumb:
    """A thumbnail as a data URI, its displayed size (the image's aspect ratio), and why it is a placeholder."""

    src: str
    width: int
    height: int
    note: str | None = None  # None for a real thumbnail
    stored: tuple[int, int] | None = None  # the image's (width, height) after EXIF orientation, for the CSD box


def object_thumbs(uris: Sequence[str], *, sizes: Mapping[str, tuple[int | None, int | None]] | None = None,
                  s3: S3Config | None = None, max_side: int = THUMB_SIDE, threads: int = 16) -> dict[str, Thumb]:
    """A :class:`Thumb` for each of ``uris`` (``sizes``: the scan's recorded width and height, for placeholders)."""
    sizes = sizes or {}

    def one(uri: str) -> Thumb:
        return object_thumb(uri, size=sizes.get(uri, (None, None)), s3=s3, max_side=max_side)

    unique = list(dict.fromkeys(uris))
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(unique) or 1))) as pool:
        return dict(zip(unique, pool.map(one, unique)))


def object_thumb(uri: str, *, size: tuple[int | None, int | None] = (None, None), s3: S3Config | None = None,
                 max_side: int = THUMB_SIDE) -> Thumb:
    """One object's thumbnail, or a placeholder saying why there is none."""
    try:  # the scan's reader: streamed under the cap, so an object over it (or one that inflates past it)
        # is never held whole
        data, failed = read_object(uri, s3=s3, max_bytes=MAX_PREVIEW_BYTES)
    except OodAuditError as exc:  # the store itself failed (StorageError): still only this thumbnail
        return placeholder(f"cannot be read now: {_short(exc)}", size, max_side)
    if failed is not None:
        if failed.status == "too_large":
            return placeholder("too large to preview", size, max_side)
        if failed.status == "missing" and failed.error == "object does not exist":
            return placeholder("deleted since the scan", size, max_side)
        return placeholder(f"cannot be read now: {failed.status}: {failed.error}", size, max_side)
    assert data is not None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PREVIEW_PIXELS:
                return placeholder("too large to preview", size, max_side)
            stored = _upright_size(im)  # before the draft shrinks it
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            jpeg = thumbnail_jpeg(_upright(im), max_side)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged data
        return placeholder(f"does not decode now: {_short(exc)}", size, max_side)
    with Image.open(io.BytesIO(jpeg)) as t:
        w, h = t.size
    return Thumb(data_uri(jpeg, "image/jpeg"), w, h, stored=stored)


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation: orientations 5-8 turn the image by a quarter (as
    ``ImageOps.exif_transpose``); a broken EXIF block counts as none, as in :func:`_upright`."""
    try:
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - PIL raises many types for damaged EXIF
        turned = False
    return (im.height, im.width) if turned else (im.width, im.height)


def _upright(im: Image.Image) -> Image.Image:
    """The image as the scan saw it: EXIF orientation applied (a broken EXIF block is ignored, as there)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - PIL raises many types for damaged EXIF
        return im


def placeholder(note: str, size: tuple[int | None, int | None] = (None, None), max_side: int = THUMB_SIDE) -> Thumb:
    """A grey, crossed-out PNG at the recorded aspect ratio (square when unknown)."""
    w0, h0 = size
    known = bool(w0 and h0 and w0 > 0 and h0 > 0)
    w0, h0 = (w0, h0) if known else (1, 1)
    scale = max_side / max(w0, h0)
    w, h = max(8, round(w0 * scale)), max(8, round(h0 * scale))
    im = Image.new("RGB", (w, h), (225, 225, 225))
    draw = ImageDraw.Draw(im)
    draw.line([(0, 0), (w - 1, h - 1)], fill=(170, 170, 170), width=2)
    draw.line([(0, h - 1), (w - 1, 0)], fill=(170, 170, 170), width=2)
    draw.rectangle([(0, 0), (w - 1, h - 1)], outline=(150, 150, 150))
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=True)
    return Thumb(data_uri(out.getvalue(), "image/png"), w, h, note=note,
                 stored=(int(w0), int(h0)) if known else None)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
