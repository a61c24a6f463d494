"""Generated image sets for the tests and the benchmarks (one home: the benchmarks import this module).

- stripes: two easy classes (vertical or horizontal stripes plus noise), any size, PNG or JPEG;
- photo crops: JPEG crops of the photographs bundled with scikit-learn and scikit-image, drawn from the one
  list of them, :data:`ood_audit.demo.data.PHOTO_SOURCES`;
- writing a set to a folder or uploading it to S3.

Real digits and the demo's outliers live in :mod:`ood_audit.demo.data` (the product's demo uses them).
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ood_audit.demo.data import bundled_photos


def stripe_image(cls: int, rng: np.random.Generator, size: int = 32, base_period: int = 4) -> np.ndarray:
    """Class 0: vertical stripes, class 1: horizontal, every ``base_period`` + 0–2 px, plus uniform noise."""
    a = np.zeros((size, size, 3), np.uint8)
    period = base_period + int(rng.integers(0, 3))
    if cls == 0:
        a[:, ::period] = 200
    else:
        a[::period, :] = 200
    return np.clip(a.astype(int) + rng.integers(0, 40, a.shape), 0, 255).astype(np.uint8)


def encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    """``a`` as a PNG or a JPEG (quality 90)."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png_bytes(a: np.ndarray) -> bytes:
    return encode(a, "PNG")


def labelled_images(n_per_class: int, seed: int = 0, size: int = 32) -> dict[str, bytes]:
    """{"class0/0000.png": bytes, ...} for two stripe classes."""
    rng = np.random.default_rng(seed)
    return {f"class{c}/{i:04d}.png": png_bytes(stripe_image(c, rng, size))
            for c in range(2) for i in range(n_per_class)}


def stripe_set(n: int, size: int, fmt: str, seed: int) -> dict[str, bytes]:
    """``n`` stripe images of ``size`` px alternating the two classes, 1000 to a folder (benchmark scale);
    the stripe period grows with the size."""
    rng = np.random.default_rng(seed)
    ext = "jpg" if fmt == "JPEG" else "png"
    return {f"class{i % 2}/{i // 1000:03d}/{i:06d}.{ext}": encode(stripe_image(i % 2, rng, size, max(2, size // 8)), fmt)
            for i in range(n)}


# Crops of 400–600 px need photos at least this large: smaller ones are upscaled.
PHOTO_MIN_SIDE = 600
CROP_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
               "motorcycle", "camera", "china", "flower")


def photo_sources(names: tuple[str, ...] = CROP_PHOTOS, min_side: int = PHOTO_MIN_SIDE) -> dict[str, np.ndarray]:
    """Bundled photos (no download) with their shorter side upscaled to at least ``min_side``."""
    out = {}
    for name, a in bundled_photos(names).items():
        short = min(a.shape[:2])
        if short < min_side:  # upscale small photos so that every crop size fits
            scale = min_side / short
            a = np.asarray(Image.fromarray(a).resize((round(a.shape[1] * scale), round(a.shape[0] * scale)),
                                                     Image.BICUBIC))
        out[name] = np.ascontiguousarray(a[..., :3])
    return out


def photo_set(n: int, seed: int, sources: dict[str, np.ndarray] | None = None) -> dict[str, bytes]:
    """``n`` JPEGs (quality 90): random 400-600 px crops (either side) of the bundled photos, some mirrored."""
    sources = sources or photo_sources()
    names = sorted(sources)
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        src = sources[names[i % len(names)]]
        h, w = (int(v) for v in rng.integers(400, 601, size=2))
        y, x = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
        crop = src[y:y + h, x:x + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[f"class{i % 2}/{i // 1000:03d}/{i:06d}.jpg"] = encode(np.ascontiguousarray(crop), "JPEG")
    return out


def lfw_faces(size: int = 32) -> dict[str, bytes]:
    """``face/NNN.png`` and ``other/NNN.png``: scikit-image's ``lfw_subset`` (100 faces, then 100 non-face crops),
    25 px grey -> ``size`` px RGB PNGs."""
    from skimage.data import lfw_subset

    files = {}
    for i, a in enumerate(lfw_subset()):
        im = Image.fromarray((a * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
        files[f"{'face' if i < 100 else 'other'}/{i:03d}.png"] = png_bytes(np.repeat(np.asarray(im)[..., None], 3, 2))
    return files


def write_local(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def upload(client: Any, bucket: str, prefix: str, files: dict[str, bytes], threads: int = 8) -> str:
    """Put ``files`` under ``s3://bucket/prefix/`` (``threads`` requests in flight); returns that URI."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=f"{prefix}/{kv[0]}", Body=kv[1]),
                      files.items()))
    return f"s3://{bucket}/{prefix}"
