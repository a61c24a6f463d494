"""Photographs of every shape the 224 px throughput benchmark uses decode to the model's size.

A centre crop's box once came out a rounding error past the image edge for some aspect ratios (532×440
among them), and Pillow refused it: such photos were ``decode_error`` rows.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ood_audit.io.decode import Preprocess, decode_image


def _bmp(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "BMP")
    return buf.getvalue()


def test_every_crop_shape_decodes() -> None:
    pre = Preprocess(size=224)
    shapes = [(532, 440), (440, 532)] + [(w, 440) for w in range(400, 601)] + [(440, h) for h in range(400, 601)]
    bad = []
    for w, h in shapes:
        r = decode_image(_bmp(w, h), size=pre)
        if r.status != "ok" or r.array is None or r.array.shape != (224, 224, 3):
            bad.append((w, h, r.status, r.error))
    assert not bad, bad[:5]
