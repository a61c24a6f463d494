"""A hostile object set for scan tests: every kind of bad input next to good images, with expected statuses."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.datagen import png_bytes, stripe_image


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + _png_chunk(b"IEND", b""))


def hostile_objects(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """{key: (bytes, expected status)} relative to a prefix. ``big.png`` is ``too_large`` under
    :data:`MAX_BYTES`; everything else fits."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(stripe_image(0, rng, 48))
    jpeg = _encode(rgb, "JPEG", quality=90)
    rgba = np.dstack([stripe_image(1, rng, 40), rng.integers(0, 256, (40, 40), dtype=np.uint8)])
    grey16 = (rng.integers(0, 65536, (36, 36))).astype(np.uint16)
    return {
        "bad/zero.jpg": (b"", "decode_error"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "decode_error"),
        "bad/garbage.jpg": (rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "decode_error"),
        "bad/notes.txt": (b"this is a text file, not an image\n" * 20, "unsupported"),
        "bad/bomb.png": (png_bomb(12_000, 12_000), "too_large"),  # 144 M pixels: over max_pixels
        "bad/bigger-bomb.png": (png_bomb(20_000, 20_000), "too_large"),  # 400 M: over Pillow's hard limit too
        "bad/big.png": (png_bytes(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)), "too_large"),
        "odd/alpha.png": (_encode(Image.fromarray(rgba, "RGBA"), "PNG"), "ok"),
        "odd/grey16.png": (_encode(Image.fromarray(grey16), "PNG"), "ok"),
        "odd/cmyk.jpg": (_encode(rgb.convert("CMYK"), "JPEG"), "ok"),
        "odd/grey.png": (_encode(rgb.convert("L"), "PNG"), "ok"),
        "odd/one-pixel.png": (_encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok"),
        "odd/rgb.jpg": (jpeg, "ok"),
        "names/a b c.png": (png_bytes(stripe_image(0, rng)), "ok"),
        "names/ünïcødé-图像.png": (png_bytes(stripe_image(1, rng)), "ok"),
        "names/<script>alert(1)</script>.png": (png_bytes(stripe_image(0, rng)), "ok"),
    }


MAX_BYTES = 100_000  # big.png is ~270 kB; every other object is far smaller
