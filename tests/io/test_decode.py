"""decode_image: one status per object, safe on hostile input, uint8 RGB out (SPEC §11)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from ood_audit.errors import ConfigError
from ood_audit.io.decode import DecodeResult, Preprocess, decode_file, decode_image


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose IHDR claims width×height RGB pixels; decoding it would need gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def assert_ok(result: DecodeResult, shape: tuple[int, int, int]) -> np.ndarray:
    assert result.status == "ok", result.error
    assert result.array is not None
    assert result.array.dtype == np.uint8
    assert result.array.shape == shape
    return result.array


def test_jpeg_ok_resized_and_original_size_reported() -> None:
    r = decode_image(encode(noise(300, 400), "JPEG"), size=32)
    assert_ok(r, (32, 32, 3))
    assert (r.width, r.height) == (400, 300)
    assert r.error is None


def test_no_size_keeps_original() -> None:
    arr = assert_ok(decode_image(encode(noise(7, 5), "PNG")), (7, 5, 3))
    assert np.array_equal(arr, np.asarray(noise(7, 5)))


def test_zero_bytes_is_decode_error() -> None:
    r = decode_image(b"", size=32)
    assert r.status == "decode_error" and r.array is None
    assert "empty" in (r.error or "")


def test_truncated_jpeg_is_decode_error_not_grey() -> None:
    data = encode(noise(256, 256), "JPEG", quality=95)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    r = decode_image(data[: len(data) // 2], size=32)
    assert r.status == "decode_error"
    assert "truncated" in (r.error or "").lower()
    assert (r.width, r.height) == (256, 256)  # the header was intact


def test_truncated_header_is_decode_error() -> None:
    r = decode_image(encode(noise(64, 64), "JPEG")[:40])
    assert r.status == "decode_error"


def test_refuses_to_run_when_truncated_images_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(encode(noise(8, 8), "PNG"))


def test_garbage_bytes_named_jpg_is_decode_error() -> None:
    garbage = np.random.default_rng(1).bytes(4096)
    assert decode_image(garbage).status == "decode_error"
    # Garbage after a valid JPEG signature: corrupt JPEG, still decode_error.
    assert decode_image(b"\xff\xd8\xff\xe0" + garbage).status == "decode_error"


def test_text_and_documents_are_unsupported() -> None:
    text = decode_image("name,label\nfoo.jpg,cat\nß ünïcode\n".encode() * 20)
    assert text.status == "unsupported" and "text" in (text.error or "")
    assert decode_image(b"%PDF-1.7\n" + bytes(range(256)) * 4).status == "unsupported"
    heic = b"\x00\x00\x00\x18ftypheic" + bytes(100)
    assert decode_image(heic).status == "unsupported"


def test_too_many_bytes_is_refused_without_decoding() -> None:
    r = decode_image(b"\x00" * 1001, max_bytes=1000)
    assert r.status == "too_large" and r.width is None
    assert "max_bytes" in (r.error or "")


@pytest.mark.parametrize("warnings_as", ["ignore", "error"])
@pytest.mark.parametrize("width,height", [(12_000, 10_000), (20_000, 20_000), (9_000, 8_000)])
def test_decompression_bomb_header_is_refused_before_decoding(
    width: int, height: int, warnings_as: str
) -> None:
    warnings.simplefilter(warnings_as, Image.DecompressionBombWarning)  # pytest restores the filters
    data = png_with_header(width, height)
    assert len(data) < 100
    r = decode_image(data, size=32)
    assert r.status == "too_large"
    assert r.array is None
    # Past Pillow's limits (its error, or its warning raised as an error) the size is not known.
    pillow_limit = Image.MAX_IMAGE_PIXELS * (2 if warnings_as == "ignore" else 1)
    if width * height <= pillow_limit:
        assert (r.width, r.height) == (width, height)


def test_max_pixels_is_ours_to_set() -> None:
    data = encode(noise(20, 30), "PNG")
    assert decode_image(data, max_pixels=600).status == "ok"
    r = decode_image(data, max_pixels=599)
    assert r.status == "too_large" and (r.width, r.height) == (30, 20)


def test_png_alpha_is_composited_on_black() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[:2, :, 3] = 255  # top half opaque
    rgba[2:, :, 3] = 0  # bottom half transparent (its hidden colour must not leak)
    arr = assert_ok(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")), (4, 4, 3))
    assert arr[0, 0].tolist() == [200, 100, 0]
    assert arr[3, 3].tolist() == [0, 0, 0]


def test_half_transparent_palette_and_greyscale_alpha() -> None:
    la = Image.fromarray(np.stack([np.full((2, 2), 200, np.uint8), np.full((2, 2), 128, np.uint8)], -1), "LA")
    arr = assert_ok(decode_image(encode(la, "PNG")), (2, 2, 3))
    assert arr[0, 0].tolist() == [100, 100, 100]
    pal = Image.new("P", (3, 3), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    arr = assert_ok(decode_image(encode(pal, "PNG", transparency=1)), (3, 3, 3))
    assert arr.max() == 0
    rgb = Image.new("RGB", (2, 1), (10, 20, 30))
    rgb.putpixel((1, 0), (40, 50, 60))
    arr = assert_ok(decode_image(encode(rgb, "PNG", transparency=(10, 20, 30))), (1, 2, 3))
    assert arr.tolist() == [[[0, 0, 0], [40, 50, 60]]]  # the tRNS colour is transparent


def test_16bit_png_scaled_to_8bit() -> None:
    values = np.array([[0, 257, 32896], [65535, 1000, 65280]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = assert_ok(decode_image(data), (2, 3, 3))
    assert arr[..., 0].tolist() == [[0, 1, 128], [255, 4, 254]]
    assert np.array_equal(arr[..., 0], arr[..., 2])


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=100)
    arr = assert_ok(decode_image(data), (16, 16, 3))
    r, g, b = arr[8, 8].tolist()
    assert r > 200 and g < 60 and b < 60  # red


def test_greyscale_palette_bilevel_and_1x1() -> None:
    assert_ok(decode_image(encode(Image.new("L", (5, 7), 128), "PNG"), size=(4, 6)), (4, 6, 3))
    assert_ok(decode_image(encode(Image.new("1", (9, 9), 1), "PNG"), size=8), (8, 8, 3))
    gif = encode(noise(20, 20).convert("P"), "GIF")
    assert_ok(decode_image(gif, size=16), (16, 16, 3))
    one = assert_ok(decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), size=5), (5, 5, 3))
    assert (one == np.array([1, 2, 3], np.uint8)).all()


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    r = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=100))
    arr = assert_ok(r, (40, 20, 3))  # displayed portrait
    assert (r.width, r.height) == (40, 20)  # as stored
    assert arr[2, 10, 2] > 200 and arr[37, 10, 0] > 200  # blue on top after the rotation


def test_other_formats_decode() -> None:
    im = noise(30, 40)
    for fmt in ("BMP", "WEBP", "TIFF", "PPM"):
        assert_ok(decode_image(encode(im, fmt), size=16), (16, 16, 3))


def test_crop_mode_takes_the_centre() -> None:
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, 10:20] = 255  # white centre square of a wide image
    out = assert_ok(decode_image(encode(Image.fromarray(arr), "PNG"), size=10), (10, 10, 3))
    assert out.min() == 255
    stretched = decode_image(encode(Image.fromarray(arr), "PNG"), size=Preprocess(10, mode="resize"))
    out = assert_ok(stretched, (10, 10, 3))
    assert out[:, 0].max() < 128 and out[:, 5].min() > 200


def test_resize_shorter_then_crop() -> None:
    pre = Preprocess(size=224, resize_shorter=256)
    assert_ok(decode_image(encode(noise(300, 500), "JPEG"), size=pre), (224, 224, 3))
    with pytest.raises(ConfigError, match="resize_shorter"):
        Preprocess(size=224, resize_shorter=200)
    assert Preprocess.from_dict(pre.to_dict()) == Preprocess(size=(224, 224), resize_shorter=256)


def test_jpeg_draft_is_close_to_full_decode() -> None:
    grad = np.linspace(0, 255, 1200, dtype=np.float32)
    img = np.stack(np.broadcast_arrays(grad[None, :], grad[:, None], 128 * np.ones((1200, 1200))), -1)
    data = encode(Image.fromarray(img.astype(np.uint8)), "JPEG", quality=95)
    fast = assert_ok(decode_image(data, size=Preprocess(64)), (64, 64, 3))
    full = assert_ok(decode_image(data, size=Preprocess(64, jpeg_draft=False)), (64, 64, 3))
    assert np.abs(fast.astype(int) - full.astype(int)).max() <= 6


def test_decode_file(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "a.png"  # type: ignore[operator]
    path.write_bytes(encode(noise(8, 8), "PNG"))
    assert decode_file(str(path), size=4).status == "ok"
    assert decode_file(str(path), max_bytes=10).status == "too_large"
    assert decode_file(str(tmp_path / "gone.png")).status == "missing"  # type: ignore[operator]
