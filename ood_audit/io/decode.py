"""Decode image bytes into uint8 RGB arrays, safely, with one status per object (SPEC §11).

Statuses:

- ``ok``: decoded; ``array`` holds the preprocessed image (and ``working``, when asked for, the working copy
  below).
- ``too_large``: more than ``max_bytes`` bytes (not decoded at all), or a header that claims more than
  ``max_pixels`` pixels (refused before any pixel is decoded: decompression bombs).
- ``unsupported``: not an image we can read: text, PDF, archives, HEIC/AVIF/JPEG XL, ...
- ``decode_error``: looks like an image (or is unrecognisable binary) but cannot be decoded: empty,
  truncated, corrupt.
- ``missing`` is never produced here; the reader (:mod:`ood_audit.io.reader`) sets it.
- ``refused``: never produced here either; the reader sets it when the store refuses this one object
  (archived, its KMS key, SSE-C, a key-level deny) while the bucket answers others. Retried by the next run,
  like ``missing`` and ``too_large`` (an archived object may be restored).

Conversions, so that every image is an ``H×W×3`` uint8 RGB array:

- EXIF orientation is applied (``ImageOps.exif_transpose``); ``width``/``height`` are the stored size
  from the file header, before rotation, so that every status reports the same numbers.
- Transparency (RGBA, LA, palette or greyscale with a transparent colour) is composited onto **black**:
  the colour hidden under fully transparent pixels is arbitrary, and black makes it irrelevant.
- 16-bit greyscale (``I;16*``) is scaled to 8 bits by ``v·255/65535`` (rounded); 32-bit integer ``I`` is
  clipped to ``0..65535`` first; float ``F`` is taken as ``0..1`` when it fits there, else ``0..255``.
- CMYK, palette, bilevel, greyscale and other modes go through Pillow's ``convert("RGB")``.
- Animated images: the first frame.

Resizing follows :class:`~ood_audit.preprocess.Preprocess` (the box of its ``crop_box``, resampled once).
JPEGs much larger than the target are decoded at 1/2, 1/4 or 1/8
scale by libjpeg first (``Image.draft``), which is several times faster on photos; the result is still
at least the target size before the final bilinear resize.

Working copy (SPEC §14). With ``working_size``, the result also holds ``working``: the whole frame (after
EXIF rotation and the RGB conversion, before the model's crop or resize) reduced by
:func:`ood_audit.io.quality.working_factor` (box average, longer side ≤ ``working_size``), made from the
same decoded image: one decode per object. The quality checks measure it, not the model's array, because
a crop drops the image's borders and a small model size (32 px) leaves too few pixels to tell blur or
entropy. Why the draft rule is what it is:

- The draft is sized for the model, so a 32 px bundle would draft a 640×480 JPEG to 80×60 and the working
  copy would be 80×60 too. :attr:`Preprocess.jpeg_draft_longer` (256, the SPEC working size) makes the draft
  also keep the longer side ≥ 256, so that for an image at least 256 px long the working copy's longer
  side is in (128, 256], as it is for a full decode. The cost is a larger draft only where the model size
  alone allowed a smaller one: at 224 px only for images whose sides both fall in [224·k, 256·k) for a
  draft factor k; at 32 px for most photos, where ``benchmarks/quality.py`` measured the 32 px decode of
  300-640 px JPEGs at +51 % (about 0.4 ms per image).
- The draft changes the model's pixels, so the rule depends on :class:`Preprocess` alone, never on whether
  a working copy is asked for: ``array`` is the same with or without ``working_size``, so calibration,
  training, evaluation and the scan feed the model identical pixels whatever each of them measures. The
  field is stored with the bundle's preprocess; a bundle written before it has none and decodes with
  ``jpeg_draft_longer=0`` (the model size alone), exactly as it was calibrated.
- A drafted JPEG's working copy is the reduction of the drafted frame, so it is not bit-identical to a full
  decode's; calibration and the scan decode alike, so the calibrated ``blurry`` threshold and the scan's
  measures are on the same scale.

Pillow's ``DecompressionBombWarning`` is silenced process-wide on import (see below): our own
``max_pixels`` check is the limit. Images over Pillow's hard limit report no width/height.

Truncated files must fail: Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` would fill them with
grey, so decoding refuses to run while it is True.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ood_audit.errors import ConfigError
from ood_audit.preprocess import Preprocess, ResizeMode
from ood_audit.io.quality import working_factor

Status = Literal["ok", "decode_error", "missing", "too_large", "unsupported", "refused"]
STATUSES: tuple[str, ...] = ("ok", "decode_error", "missing", "too_large", "unsupported", "refused")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Below Pillow's own warning threshold (~89.5 M), so Pillow's check never decides for us by default.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "STATUSES", "DecodeResult", "Preprocess", "ResizeMode",
           "Status", "as_preprocess", "decode_file", "decode_image", "draft_request"]
_MAX_ERROR_CHARS = 200

# decode_image enforces max_pixels itself, before decoding, so Pillow's warning for large images is
# noise. It is silenced once, here, for the whole process: ``warnings.catch_warnings`` around each
# call would not be thread-safe, and decoding runs on thread pools. Pillow's hard limit
# (DecompressionBombError, at twice its warning threshold) still applies and is reported as too_large;
# so is the warning when a caller turns warnings into errors.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class DecodeResult:
    """One object's outcome. ``array`` is uint8 ``H×W×3`` RGB when ``status == "ok"``, else None;
    ``working`` is the SPEC §14 working copy (uint8 RGB, the whole frame) when it was asked for and ok."""

    status: Status
    error: str | None = None
    width: int | None = None
    height: int | None = None
    array: np.ndarray | None = None
    working: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def as_preprocess(size: Preprocess | int | tuple[int, int] | None) -> Preprocess:
    return size if isinstance(size, Preprocess) else Preprocess(size=size)


def decode_image(
    data: bytes,
    *,
    size: Preprocess | int | tuple[int, int] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    working_size: int | None = None,
) -> DecodeResult:
    """Decode ``data`` into an RGB uint8 array sized by ``size`` (see :class:`Preprocess`).

    With ``working_size``, also the SPEC §14 working copy (``DecodeResult.working``: the whole frame, longer
    side ≤ ``working_size``) from the same decode; ``array`` is the same either way (module docstring).
    Never raises for bad data: every problem becomes a status (module docstring). Raises
    ``ConfigError`` only for bad arguments or when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is True.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images would "
            "decode as grey instead of failing; set it back to False"
        )
    pre = as_preprocess(size)
    if working_size is not None and working_size < 1:
        raise ConfigError(f"working_size must be positive, got {working_size}")
    n = len(data)
    if n > max_bytes:
        return DecodeResult("too_large", f"{n} bytes exceeds max_bytes={max_bytes}")
    if n == 0:
        return DecodeResult("decode_error", "empty file (0 bytes)")

    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return DecodeResult("too_large", _short(exc))
    except UnidentifiedImageError:
        return _unidentified(data)
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is a status
        return DecodeResult("decode_error", _short(exc))
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            return DecodeResult("decode_error", f"invalid size {width}x{height}", width, height)
        if width * height > max_pixels:
            return DecodeResult(
                "too_large",
                f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
                width,
                height,
            )
        try:
            array, working = _decode_loaded(im, pre, working_size)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return DecodeResult("too_large", _short(exc), width, height)
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data raises many types
            return DecodeResult("decode_error", _short(exc), width, height)
    return DecodeResult("ok", None, width, height, array, working)


def decode_file(
    path: str,
    *,
    size: Preprocess | int | tuple[int, int] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    working_size: int | None = None,
) -> DecodeResult:
    """:func:`decode_image` for a local file; a vanished or unreadable file gives ``missing``."""
    import os

    try:
        n = os.path.getsize(path)
        if n > max_bytes:
            return DecodeResult("too_large", f"{n} bytes exceeds max_bytes={max_bytes}")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grew since its size was read: decode_image refuses it
    except FileNotFoundError:
        return DecodeResult("missing", f"{path} does not exist")
    except OSError as exc:
        return DecodeResult("missing", f"read failed: {_short(exc)}")
    return decode_image(data, size=size, max_bytes=max_bytes, max_pixels=max_pixels, working_size=working_size)


def draft_request(stored: tuple[int, int], pre: Preprocess) -> tuple[int, int] | None:
    """The size asked of libjpeg's draft for a JPEG stored ``(width, height)``, or None for no draft.

    Pillow drafts by the largest of 8, 4, 2, 1 that divides neither side below the request, so: both sides
    stay ≥ the model need (a square: enough whichever way EXIF rotates the image), and the longer side
    stays ≥ ``pre.jpeg_draft_longer`` (rotation does not change which side is longer). Depends on
    ``pre`` only, never on whether a working copy is wanted (module docstring).
    """
    hw = pre.output_hw
    if not pre.jpeg_draft or hw is None:
        return None
    need = pre.resize_shorter or max(hw)
    longer = max(need, pre.jpeg_draft_longer)
    w, h = stored
    return (longer, need) if w >= h else (need, longer)


def _decode_loaded(im: Image.Image, pre: Preprocess,
                   working_size: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    hw = pre.output_hw
    if im.format == "JPEG":
        request = draft_request(im.size, pre)
        if request is not None:
            im.draft(None, request)
    im.load()
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not fail an otherwise good image
        pass
    rgb = _to_rgb(im)
    array = np.asarray(rgb if hw is None else _resize(rgb, hw, pre), dtype=np.uint8)
    if working_size is None:
        return array, None
    factor = working_factor(rgb.width, rgb.height, working_size)
    if factor == 1:
        return array, (array if hw is None else np.asarray(rgb, dtype=np.uint8))
    return array, np.asarray(rgb.reduce(factor), dtype=np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        values = np.clip(values, 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if mode == "F":
        values = np.asarray(im, dtype=np.float32)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im.convert("RGB")
    rgba = np.asarray(im.convert("RGBA"))
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    out = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _resize(im: Image.Image, hw: tuple[int, int], pre: Preprocess) -> Image.Image:
    out_h, out_w = hw
    w, h = im.size
    if pre.mode == "resize":
        if (w, h) == (out_w, out_h):
            return im
        return im.resize((out_w, out_h), Image.Resampling.BILINEAR)
    # Centre crop in source coordinates, resized in one step (no second rounding of a resized copy).
    box = pre.crop_box(w, h)
    if (w, h) == (out_w, out_h) and box == (0.0, 0.0, float(w), float(h)):
        return im
    return im.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)


# Magic numbers: formats Pillow reads (so failure means corrupt data) and formats it does not.
_IMAGE_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WEBP"),
)
_OTHER_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF", "PDF document"),
    (0, b"PK\x03\x04", "ZIP archive"),
    (0, b"\x1f\x8b", "gzip data"),
    (0, b"7z\xbc\xaf", "7z archive"),
    (0, b"\x7fELF", "executable"),
    (4, b"ftyp", "ISO media (HEIC/AVIF/MP4)"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"RIFF", "RIFF media"),
    (0, b"OggS", "Ogg media"),
    (0, b"ID3", "MP3 audio"),
    (0, b"\x1aE\xdf\xa3", "Matroska/WebM video"),
)


def _unidentified(data: bytes) -> DecodeResult:
    head = data[:16]
    for offset, magic, name in _IMAGE_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return DecodeResult("decode_error", f"corrupt {name} data")
    for offset, magic, name in _OTHER_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return DecodeResult("unsupported", f"not a supported image ({name})")
    if _looks_like_text(data[:4096]):
        return DecodeResult("unsupported", "not an image (text)")
    return DecodeResult("decode_error", "unrecognised binary data")


def _looks_like_text(sample: bytes) -> bool:
    if b"\x00" in sample:
        return False
    text = sample.decode("utf-8", errors="replace")
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\t\n\r\f" for ch in text)
    return printable / len(text) >= 0.95


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
