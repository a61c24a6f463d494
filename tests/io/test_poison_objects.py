"""Poison objects become rows (real SeaweedFS): a gzip bomb is ``too_large`` without its inflation ever being
held, a per-key refusal is a ``refused`` row while the bucket answers, and a bucket-wide refusal still stops
the run. Peak memory is measured with ``tracemalloc`` around the one call that reads the object."""
from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from ood_audit.errors import StorageError
from ood_audit.io.decode import Preprocess
from ood_audit.io.fs import S3Config
from ood_audit.io.reader import read_object
from ood_audit.report import previews
from ood_audit.scan.read import load_one

from tests.datagen import labelled_images
from tests.io.s3_relay import deny_bucket, deny_key, relay

MAX_BYTES = 8 << 20  # large enough that the body, held whole, would dominate the measured peak
PRE = Preprocess(size=32)


def gzip_bomb(inflated: int, block: int = 1 << 20) -> bytes:
    """A valid gzip member of ``inflated`` zero bytes (a multiple of ``block``), built without compressing
    all of them: after a full flush a raw deflate stream keeps no history, so each block of zeros compresses
    to the same bytes, and those bytes are repeated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(block)
    piece = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    n = inflated // block
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + piece * n + co.flush() + struct.pack("<II", crc, (n * block) & 0xFFFFFFFF)


def peak_bytes(call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()`` and the peak of Python-allocated memory while it ran (zlib's buffers included)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = call()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_gzip_bomb_builder_inflates_to_zeros() -> None:
    """The bomb's construction, checked on a small one: it inflates (CRC and size included) to the zeros."""
    import gzip

    assert gzip.decompress(gzip_bomb(5 << 16, block=1 << 16)) == bytes(5 << 16)


def test_gzip_bomb_is_too_large_with_bounded_memory(s3_client: Any, s3_bucket: str, s3_config: S3Config) -> None:
    inflated = 200 * MAX_BYTES
    bomb = gzip_bomb(inflated)
    assert len(bomb) < MAX_BYTES // 4 and inflated / len(bomb) >= 200  # passes any check on the stored size
    s3_client.put_object(Bucket=s3_bucket, Key="bomb.png", Body=bomb, ContentEncoding="gzip")
    # Control: a plain object of 3/4 of the limit read the same way shows up whole in the measurement.
    s3_client.put_object(Bucket=s3_bucket, Key="plain.bin", Body=b"\x01" * (MAX_BYTES * 3 // 4))
    uri = f"s3://{s3_bucket}/bomb.png"

    loaded, peak = peak_bytes(lambda: load_one(uri, len(bomb), PRE, s3_config, MAX_BYTES, 1 << 26))
    assert loaded.result.status == "too_large", loaded.result
    assert "gzip" in (loaded.result.error or "") and f"max_bytes={MAX_BYTES}" in (loaded.result.error or "")
    assert peak < 2 * MAX_BYTES, f"peak {peak} bytes for max_bytes={MAX_BYTES}"

    (data, failed), control = peak_bytes(lambda: read_object(f"s3://{s3_bucket}/plain.bin", s3=s3_config,
                                                             max_bytes=MAX_BYTES))
    assert failed is None and data is not None and control >= len(data)
    print(f"bomb: stored {len(bomb)} B, inflates to {inflated} B; peak {peak} B for max_bytes={MAX_BYTES} "
          f"(plain {len(data)} B object: peak {control} B)")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate"])
def test_content_encoded_image_still_decodes(encoding: str, s3_client: Any, s3_bucket: str,
                                             s3_config: S3Config) -> None:
    png = _uncompressed_png(next(iter(labelled_images(1, seed=5).values())))
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = {"gzip": lambda: _gzip(png), "deflate": lambda: zlib.compress(png),
            "raw deflate": lambda: raw.compress(png) + raw.flush()}[encoding]()
    s3_client.put_object(Bucket=s3_bucket, Key="img.png", Body=body, ContentEncoding=encoding.split()[-1])
    uri = f"s3://{s3_bucket}/img.png"
    assert len(body) < len(png)  # so the limits below are about the inflated size
    data, failed = read_object(uri, s3=s3_config, max_bytes=len(png))  # inflated size exactly at the limit
    assert failed is None and data == png
    _, failed = read_object(uri, s3=s3_config, max_bytes=len(png) - 1)
    assert failed is not None and failed.status == "too_large"
    loaded = load_one(uri, len(body), PRE, s3_config, MAX_BYTES, 1 << 26)
    assert loaded.result.status == "ok" and loaded.result.array.shape == (32, 32, 3)


def test_corrupt_gzip_body_is_a_decode_error(s3_client: Any, s3_bucket: str, s3_config: S3Config) -> None:
    body = _gzip(b"x" * 5000)
    s3_client.put_object(Bucket=s3_bucket, Key="cut.png", Body=body[: len(body) // 2], ContentEncoding="gzip")
    s3_client.put_object(Bucket=s3_bucket, Key="junk.png", Body=b"\x1f\x8bnot gzip", ContentEncoding="gzip")
    for key in ("cut.png", "junk.png"):
        data, failed = read_object(f"s3://{s3_bucket}/{key}", s3=s3_config)
        assert data is None and failed is not None and failed.status == "decode_error", (key, failed)
        assert "Content-Encoding gzip" in (failed.error or "")


@pytest.mark.parametrize("status,code", [(403, "AccessDenied"), (403, "InvalidObjectState"),
                                         (400, "InvalidRequest"), (400, "KMS.DisabledException")])
def test_refused_key_is_a_row_while_the_bucket_answers(status: int, code: str, s3_client: Any, s3_bucket: str,
                                                       s3_config: S3Config) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="a.bin", Body=b"a" * 10)
    s3_client.put_object(Bucket=s3_bucket, Key="b.bin", Body=b"b" * 10)
    with relay(s3_config, deny_key(s3_bucket, "b.bin", status, code)) as (server, s3):
        # first with nothing read yet in the bucket (the probe lists), then after a good read (it re-reads that)
        for first in ("b.bin", "a.bin"):
            if first == "a.bin":
                assert read_object(f"s3://{s3_bucket}/a.bin", s3=s3) == (b"a" * 10, None)
            data, failed = read_object(f"s3://{s3_bucket}/b.bin", s3=s3)
            assert data is None and failed is not None and failed.status == "refused", failed
            assert f"HTTP {status} {code}" in (failed.error or "")
        assert server.refused == [("GET", f"/{s3_bucket}/b.bin")] * 2


def test_bucket_wide_refusal_still_raises(s3_client: Any, s3_bucket: str, s3_config: S3Config) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="a.bin", Body=b"a" * 10)
    s3_client.put_object(Bucket=s3_bucket, Key="b.bin", Body=b"b" * 10)
    with relay(s3_config, deny_bucket(s3_bucket)) as (_, s3):  # nothing read fine before: the listing fails
        with pytest.raises(StorageError) as e:
            read_object(f"s3://{s3_bucket}/b.bin", s3=s3)
        assert e.value.kind == "denied" and f"s3://{s3_bucket}/b.bin" in str(e.value)
        assert "AccessDenied" in str(e.value) and "Signature" not in str(e.value)
    rule = {"deny": deny_key(s3_bucket, "none")}
    with relay(s3_config, lambda m, p: rule["deny"](m, p)) as (_, s3):  # a key read fine, then the bucket denied
        assert read_object(f"s3://{s3_bucket}/a.bin", s3=s3) == (b"a" * 10, None)
        rule["deny"] = deny_bucket(s3_bucket)
        with pytest.raises(StorageError) as e:
            read_object(f"s3://{s3_bucket}/b.bin", s3=s3)
        assert e.value.kind == "denied"


def test_thumbnail_of_a_too_large_object_is_a_placeholder_not_a_whole_read(
        monkeypatch: pytest.MonkeyPatch, s3_client: Any, s3_bucket: str, s3_config: S3Config) -> None:
    monkeypatch.setattr(previews, "MAX_PREVIEW_BYTES", MAX_BYTES)
    png = next(iter(labelled_images(1, seed=6).values()))
    bomb = gzip_bomb(8 * MAX_BYTES)
    s3_client.put_object(Bucket=s3_bucket, Key="bomb.png", Body=bomb, ContentEncoding="gzip")
    s3_client.put_object(Bucket=s3_bucket, Key="big.png", Body=png + bytes(MAX_BYTES))  # stored over the cap
    s3_client.put_object(Bucket=s3_bucket, Key="ok.png", Body=png)
    # the bomb is inflated up to the cap and stopped; the stored-too-large one is refused from its size, unread
    for key, bound in (("bomb.png", 2 * MAX_BYTES), ("big.png", MAX_BYTES // 4)):
        thumb, peak = peak_bytes(lambda: previews.object_thumb(f"s3://{s3_bucket}/{key}", size=(20, 10),
                                                               s3=s3_config))
        assert thumb.note == "too large to preview" and (thumb.width, thumb.height) == (128, 64), key
        assert peak < bound, (key, peak)
    assert previews.object_thumb(f"s3://{s3_bucket}/ok.png", s3=s3_config).note is None
    assert previews.object_thumb(f"s3://{s3_bucket}/gone.png", s3=s3_config).note == "deleted since the scan"


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def _uncompressed_png(png: bytes) -> bytes:
    """The same image as a PNG stored without compression, so that a Content-Encoding shrinks it."""
    import io

    from PIL import Image

    out = io.BytesIO()
    with Image.open(io.BytesIO(png)) as im:
        im.save(out, format="PNG", compress_level=0)
    return out.getvalue()
