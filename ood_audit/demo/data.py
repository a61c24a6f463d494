"""The demo's data: real images only, all bundled with scikit-learn and scikit-image (nothing downloaded).

- **ID**: scikit-learn's 1797 handwritten digits (8×8, upscaled to 32 px), in ``digit_<c>/`` class folders.
- **Incoming** (night 1), one folder per kind: unseen digits (held out of training), and outliers of five
  kinds: letters (rendered glyphs), photo crops (scikit-learn's and scikit-image's photographs), textures
  (scikit-image's brick, grass and gravel), faces (scikit-image's ``lfw_subset``) and noise; plus broken
  files (truncated, empty, not an image, a key with markup), and copies (:func:`demo_files`).
- **Night 2** adds new objects under ``digits/``: more unseen digits, and faces that a careless upstream
  job dropped into the digits folder. The digits prefix's flagged rate jumps, which the report's drift
  section must catch.

:data:`KINDS` gives the truth for each incoming object from its name, for the demo's per-kind metrics.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 32
OUTLIER_KINDS = ("letters", "photos", "textures", "faces", "noise")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """1797 real 8x8 digits as 32x32 RGB uint8 (white strokes on black), with labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the demo extra
        raise SystemExit("the demo needs scikit-learn: pip install -e '.[demo]'") from e
    d = load_digits()
    imgs = (d.images / 16.0 * 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(a).resize((SIZE, SIZE), Image.BILINEAR)) for a in imgs])
    return np.repeat(big[..., None], 3, axis=3), d.target


def digit_variants(n_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_images`` real digits at 32 px with labels: the 1797 originals first, then (for larger sets) copies
    of them shifted by up to 3 px, rotated by up to 12° and scaled by 0.9–1.1, each drawn from ``seed``."""
    images, labels = _digits()
    if n_images <= len(images):
        order = np.random.default_rng(seed).permutation(len(images))[:n_images]
        return images[order], labels[order]
    rng = np.random.default_rng(seed)
    out, out_labels = [images], [labels]
    for i in range(n_images - len(images)):
        j = i % len(images)
        im = Image.fromarray(images[j]).rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR,
                                               translate=tuple(int(t) for t in rng.integers(-3, 4, 2)))
        k = float(rng.uniform(0.9, 1.1))
        side = int(round(SIZE * k))
        im = im.resize((side, side), Image.BILINEAR)
        canvas = Image.new("RGB", (SIZE, SIZE))
        canvas.paste(im, ((SIZE - side) // 2, (SIZE - side) // 2))
        out.append(np.asarray(canvas)[None])
        out_labels.append(labels[j: j + 1])
    return np.concatenate(out), np.concatenate(out_labels)


def write_digit_folders(root: str | os.PathLike[str], n_images: int, seed: int = 0) -> Path:
    """``root/digit_<c>/<i>.png`` for :func:`digit_variants` (a real labelled set for tests and benchmarks)."""
    images, labels = digit_variants(n_images, seed)
    root = Path(root)
    for i, (a, c) in enumerate(zip(images, labels)):
        path = root / f"digit_{c}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(a))
    return root


def _letters(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    font = ImageFont.load_default()
    out = []
    for _ in range(n):
        im = Image.new("L", (SIZE, SIZE), 0)
        ch = chr(int(rng.integers(ord("A"), ord("Z") + 1)))
        ImageDraw.Draw(im).text((int(rng.integers(6, 14)), int(rng.integers(4, 12))), ch, fill=255, font=font)
        im = im.resize((SIZE * 2, SIZE * 2)).crop((SIZE // 2, SIZE // 2, SIZE * 3 // 2, SIZE * 3 // 2))
        out.append(np.repeat(np.asarray(im)[..., None], 3, axis=2))
    return out


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).astype(np.uint8) if a.max() <= 1.0 else a.astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a[..., :3]


def _crops(sources: list[np.ndarray], n: int, rng: np.random.Generator, side: int = 96) -> list[np.ndarray]:
    out = []
    for i in range(n):
        p = sources[i % len(sources)]
        s = min(side, p.shape[0], p.shape[1])
        y, x = int(rng.integers(0, p.shape[0] - s + 1)), int(rng.integers(0, p.shape[1] - s + 1))
        out.append(np.asarray(Image.fromarray(p[y:y + s, x:x + s]).resize((SIZE, SIZE), Image.BILINEAR)))
    return out


# Every photograph bundled with scikit-learn and scikit-image that the demo, the tests and the benchmarks
# draw from (nothing is downloaded); each picks the ones it needs by name.
PHOTO_SOURCES = ("china", "flower", "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                 "hubble_deep_field", "retina", "motorcycle", "camera")


def bundled_photos(names: tuple[str, ...] = PHOTO_SOURCES) -> dict[str, np.ndarray]:
    """``{name: photo}`` for ``names`` of :data:`PHOTO_SOURCES`, uint8 H×W×3 (a grey one on three channels)."""
    from sklearn.datasets import load_sample_images
    from skimage import data

    unknown = set(names) - set(PHOTO_SOURCES)
    if unknown:
        raise ValueError(f"no bundled photo named {sorted(unknown)}; choose from {PHOTO_SOURCES}")
    sample = dict(zip(("china", "flower"), load_sample_images().images)) if {"china", "flower"} & set(names) else {}

    def load(name: str) -> np.ndarray:
        if name in sample:
            return sample[name]
        return data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()

    return {name: _rgb(load(name)) for name in names}


DEMO_PHOTOS = ("china", "flower", "astronaut", "chelsea", "coffee", "rocket")


def _photos(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return _crops(list(bundled_photos(DEMO_PHOTOS).values()), n, rng)


def _textures(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    from skimage import data

    return _crops([_rgb(getattr(data, name)()) for name in ("brick", "grass", "gravel")], n, rng)


def _faces(n: int, offset: int = 0) -> list[np.ndarray]:
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # the first 100 are faces, the rest are not
    return [np.asarray(Image.fromarray(_rgb(faces[(offset + i) % 100])).resize((SIZE, SIZE), Image.BILINEAR))
            for i in range(n)]


REUPLOADS = "reuploads"  # training images uploaded again: seen by the model, so not "unseen digits"


def kind_of(key: str) -> str:
    """The truth for an incoming key: its kind folder, except faces planted under ``digits/`` and training
    images uploaded again there."""
    top, _, name = key.partition("/")
    if top == "digits" and name.startswith("face-"):
        return "faces"
    return REUPLOADS if top == "digits" and name.startswith("reupload-") else top


def demo_files(seed: int = 0, n_incoming_digits: int = 150, per_kind: int = 40, night2_digits: int = 0,
               night2_faces: int = 0, copies: int = 0,
               n_train: int | None = None) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, bytes]]:
    """(ID training files by class folder, night 1's incoming files by kind folder, night 2's new files).

    The ID set is every digit not held out for the incoming data, or the first ``n_train`` of them.

    ``copies`` plants that many of each kind of copy, under their kind's folder: training images uploaded
    again (``digits/reupload-*``: near-duplicates of the calibration set), faces copied within night 1
    (``faces/copy-*``: exact duplicates) and night-1 digits uploaded again on night 2 (``digits/again-*``:
    exact duplicates of an earlier night's objects)."""
    rng = np.random.default_rng(seed)
    images, labels = _digits()
    order = rng.permutation(len(images))
    held, extra = order[:n_incoming_digits], order[n_incoming_digits:n_incoming_digits + night2_digits]
    train = order[n_incoming_digits + night2_digits:][:n_train]
    id_files = {f"digit_{labels[i]}/{i:04d}.png": _png(images[i]) for i in train}
    incoming = {f"digits/{i:04d}.png": _png(images[i]) for i in held}
    incoming.update({f"letters/{j:03d}.png": _png(a) for j, a in enumerate(_letters(per_kind, rng))})
    incoming.update({f"photos/{j:03d}.png": _png(a) for j, a in enumerate(_photos(per_kind, rng))})
    incoming.update({f"textures/{j:03d}.png": _png(a) for j, a in enumerate(_textures(per_kind, rng))})
    incoming.update({f"faces/{j:03d}.png": _png(a) for j, a in enumerate(_faces(per_kind))})
    incoming.update({f"noise/{j:03d}.png": _png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
                     for j in range(per_kind)})
    good = incoming["digits/" + f"{held[0]:04d}.png"]
    incoming.update({"broken/truncated.png": good[: len(good) // 2], "broken/empty.jpg": b"",
                     "broken/notes.txt": b"not an image", "broken/<script>alert(1)</script>.png": b"\x00garbage"})
    night2 = {f"digits/n2-{i:04d}.png": _png(images[i]) for i in extra}
    night2.update({f"digits/face-{j:03d}.png": _png(a) for j, a in enumerate(_faces(night2_faces, offset=per_kind))})
    train_keys, face_keys, digit_keys = sorted(id_files), sorted(k for k in incoming if k.startswith("faces/")), \
        [f"digits/{i:04d}.png" for i in held[1:]]
    for j in range(copies):
        incoming[f"digits/reupload-{j:03d}.png"] = id_files[train_keys[j * 97 % len(train_keys)]]
        incoming[f"faces/copy-{j:03d}.png"] = incoming[face_keys[j % len(face_keys)]]
        night2[f"digits/again-{j:03d}.png"] = incoming[digit_keys[j % len(digit_keys)]]
    return id_files, incoming, night2
