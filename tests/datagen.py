"""Small generated image sets for tests: two easy classes of stripes, and noise as OOD."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def stripe_image(cls: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    a = np.zeros((size, size, 3), np.uint8)
    period = 4 + int(rng.integers(0, 3))
    if cls == 0:
        a[:, ::period] = 200
    else:
        a[::period, :] = 200
    return np.clip(a.astype(int) + rng.integers(0, 40, a.shape), 0, 255).astype(np.uint8)


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def labelled_images(n_per_class: int, seed: int = 0, size: int = 32) -> dict[str, bytes]:
    """{"class0/0.png": bytes, ...} for two stripe classes."""
    rng = np.random.default_rng(seed)
    return {f"class{c}/{i:04d}.png": png_bytes(stripe_image(c, rng, size))
            for c in range(2) for i in range(n_per_class)}


def write_local(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def upload(client, bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)
    return f"s3://{bucket}/{prefix}"
