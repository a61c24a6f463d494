"""Real photos for the quality tests: scikit-image's and scikit-learn's bundled samples (no downloads)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Sharp, normally exposed colour photos. skimage's hubble_deep_field (dark) and colorwheel (a smooth
# graphic) are left out on purpose: they are not "normal photos" under SPEC §14.
_SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def photos() -> dict[str, np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = {name: getattr(skimage.data, name)() for name in _SKIMAGE}
    china, flower = load_sample_images().images
    out.update(china=china, flower=flower)
    return out


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
