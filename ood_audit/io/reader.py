"""Fetch one object and decode it: the per-object step shared by training, calibration and the scan.

:func:`load_image` never raises for a problem with the object itself; it returns a
:class:`~ood_audit.io.decode.DecodeResult` whose status says what happened. ``missing`` means the object
vanished since it was listed or could not be fetched (the error says which).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs

from ood_audit.errors import ConfigError
from ood_audit.io.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodeResult,
    Preprocess,
    _short,
    decode_image,
)
from ood_audit.io.fs import S3Config, _resolve_parsed
from ood_audit.io.uri import parse_uri


def read_object(
    uri: str | os.PathLike[str],
    *,
    s3: S3Config | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[bytes | None, DecodeResult | None]:
    """``(data, None)``, or ``(None, result)`` with status ``missing`` or ``too_large``.

    An object over ``max_bytes`` is refused after one metadata request, without downloading it.
    """
    try:
        parsed = parse_uri(uri)
        fs, path = _resolve_parsed(parsed, s3)
    except ConfigError as exc:
        return None, DecodeResult("missing", f"bad URI: {exc}")
    try:
        with fs.open_input_file(path) as fh:
            size = fh.size()
            if size > max_bytes:
                return None, DecodeResult("too_large", f"{size} bytes exceeds max_bytes={max_bytes}")
            return fh.read(), None
    except FileNotFoundError:
        return None, DecodeResult("missing", "object does not exist")
    except IsADirectoryError:
        return None, DecodeResult("missing", "is a directory, not an object")
    except OSError as exc:
        if _is_directory(fs, path):
            return None, DecodeResult("missing", "is a directory, not an object")
        return None, DecodeResult("missing", f"read failed: {_short(exc)}")


def load_image(
    uri: str | os.PathLike[str],
    *,
    size: Preprocess | int | tuple[int, int] | None = None,
    s3: S3Config | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodeResult:
    """Read ``uri`` and decode it with :func:`~ood_audit.io.decode.decode_image`."""
    data, failed = read_object(uri, s3=s3, max_bytes=max_bytes)
    if failed is not None:
        return failed
    assert data is not None
    return decode_image(data, size=size, max_bytes=max_bytes, max_pixels=max_pixels)


def load_images(
    uris: Sequence[str],
    *,
    size: Preprocess | int | tuple[int, int] | None = None,
    s3: S3Config | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 8,
) -> list[DecodeResult]:
    """:func:`load_image` for many URIs, in order, on a thread pool.

    Fetching is I/O-bound and Pillow releases the GIL while decoding, so threads help even on few cores.
    """
    if threads <= 1 or len(uris) <= 1:
        return [load_image(u, size=size, s3=s3, max_bytes=max_bytes, max_pixels=max_pixels) for u in uris]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(
            pool.map(
                lambda u: load_image(u, size=size, s3=s3, max_bytes=max_bytes, max_pixels=max_pixels),
                uris,
            )
        )


def _is_directory(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except OSError:
        return False
