"""The streamed size cap every object read goes through (README "Exit codes / failures"): a body is never held
past ``max_bytes`` plus one chunk, stored or once inflated. Used by :mod:`ood_audit.io.reader` for S3's one
GET per object and for GCS and Azure input streams."""

from __future__ import annotations

import zlib
from typing import Any

from ood_audit.io.decode import DecodeResult

CHUNK = 1 << 20
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def capped_body(resp: Any, max_bytes: int) -> tuple[bytes | None, DecodeResult | None]:
    """The body of a 200 answer, never holding more than ``max_bytes`` plus one chunk.

    The body is read as stored (urllib3 is told not to decode it): a stored size (``Content-Length``) over
    the limit is refused unread; a body without one is read until it passes the limit. A ``gzip`` or
    ``deflate`` body is inflated a chunk at a time, zlib's ``max_length`` stopping one byte past the limit,
    so a bomb is ``too_large`` after at most ``max_bytes + 1`` inflated bytes. Other encodings pass as
    stored (the decoder tells what they are). An inflated body under the limit is copied once into ``bytes``.
    """
    length = resp.headers.get("Content-Length")
    if length is not None and int(length) > max_bytes:
        return None, DecodeResult("too_large", f"{int(length)} bytes exceeds max_bytes={max_bytes}")
    encoding = (resp.headers.get("Content-Encoding") or "").strip().lower()
    if encoding not in _WBITS:
        if length is not None:
            return resp.read(decode_content=False), None
        data = bytearray()  # no Content-Length (chunked): stop one chunk past the limit
        for part in resp.stream(CHUNK, decode_content=False):
            data += part
            if len(data) > max_bytes:
                return None, DecodeResult("too_large", f"more than max_bytes={max_bytes} bytes")
        return bytes(data), None
    inflate = _Inflater(encoding, max_bytes)
    try:
        for part in resp.stream(CHUNK, decode_content=False):
            if not inflate.feed(part):
                return None, DecodeResult("too_large", f"Content-Encoding {encoding}: inflates to more than "
                                                       f"max_bytes={max_bytes} bytes")
        return inflate.result(), None
    except zlib.error as exc:
        return None, DecodeResult("decode_error", f"Content-Encoding {encoding}: {exc}")


class _Inflater:
    """Incremental gzip/deflate inflation that stops one byte past ``limit`` (:func:`_capped_body`)."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.wbits = _WBITS[encoding]
        self.limit = limit
        self.out = bytearray()
        self.inflater: Any = None
        self.members = 0  # gzip members finished; bytes after the first that do not inflate are ignored

    def feed(self, data: bytes) -> bool:
        """Inflate ``data``; False once the output is over the limit."""
        while data:
            if self.inflater is None:
                wbits = self.wbits
                if wbits == zlib.MAX_WBITS and not _zlib_header(data):
                    wbits = -zlib.MAX_WBITS  # "deflate" sent as a raw stream, as some servers do
                self.inflater = zlib.decompressobj(wbits)
            try:
                # at most one chunk per step: a whole step's output is held twice while it is appended
                self.out += self.inflater.decompress(data, min(CHUNK, self.limit + 1 - len(self.out)))
            except zlib.error:
                if self.members:  # trailing bytes after a complete stream (padding): ignored, as urllib3 does
                    return True
                raise
            if len(self.out) > self.limit:
                return False
            if self.inflater.eof:  # one stream (gzip member) done; another may follow
                self.members += 1
                data, self.inflater = self.inflater.unused_data, None
            else:
                data = self.inflater.unconsumed_tail
        return True

    def result(self) -> bytes:
        if self.inflater is not None and not self.members:
            raise zlib.error("the compressed stream ends early")
        return bytes(self.out)


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


# -- per-object refusals ---------------------------------------------------------------------------------

# Refusals about the object's own state, never the principal's: archived (Glacier, Deep Archive) and the
# object's KMS key. Any other refusal of a GET (AccessDenied, an SSE-C object read without its key, which S3
# answers 400 InvalidRequest) is per object only if the bucket is seen answering (_bucket_answers).
