"""Small JPEG thumbnails: for the bundle's kNN-bank sources and the report's grid (SPEC §13).

Thumbnails keep the image's own aspect ratio (the longer side becomes ``max_side``), so explanations drawn
on them (the CSD view's box) sit where the model looked.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMB_SIDE = 64
THUMB_QUALITY = 85


def thumbnail_jpeg(image: Image.Image | np.ndarray, max_side: int = THUMB_SIDE, quality: int = THUMB_QUALITY) -> bytes:
    """A JPEG whose longer side is ``max_side`` px (smaller images are scaled up, nearest-neighbour, so
    8 px digits stay legible), from a PIL image or a uint8 H×W×3 array."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
    im = im.convert("RGB")
    w, h = im.size
    scale = max_side / max(w, h, 1)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    out = io.BytesIO()
    im.resize(size, resample).save(out, format="JPEG", quality=quality)
    return out.getvalue()
