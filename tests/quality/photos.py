"""Real photos for the quality tests and benchmarks: scikit-image's and scikit-learn's bundled samples (no downloads)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ood_audit.demo.data import bundled_photos

# Sharp, normally exposed colour photos. hubble_deep_field (dark), camera (grey) and the other bundled
# photos are left out on purpose: they are not "normal colour photos" under SPEC §14.
NORMAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "china", "flower")


def photos() -> dict[str, np.ndarray]:
    """The normal photos, by name, from the one list of bundled photos (:data:`ood_audit.demo.data.PHOTO_SOURCES`)."""
    return bundled_photos(NORMAL_PHOTOS)


def resized(a: np.ndarray, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """``a`` resized to (width, height) ``size``, bilinear, as the decoder does."""
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR))


def random_crops(a: np.ndarray, n: int, rng: np.random.Generator, size: int = 224) -> list[np.ndarray]:
    """``n`` square crops of 50–100 % of the shorter side, each resized to ``size``."""
    im = Image.fromarray(a)
    w, h = im.size
    out = []
    for _ in range(n):
        side = int(rng.uniform(0.5, 1.0) * min(w, h))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        out.append(np.asarray(im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR)))
    return out


def jpeg(a: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
