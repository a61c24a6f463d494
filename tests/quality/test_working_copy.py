"""A 32 px bundle's scan and calibration measure SPEC §14 quality on the whole frame at ≤ 256 px, not on the
model's 32 px crop: blur that downscaling hides, and colour at the borders that the crop drops, are seen."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from ood_audit import build_model, save_weights
from ood_audit.calibration.workers import ScoreWorker
from ood_audit.io.decode import Preprocess, decode_image
from ood_audit.io.quality import blurry_threshold, measure
from ood_audit.models import ModelSpec, block_candidates
from ood_audit.scan.read import fetch_decode
from ood_audit.scan.rows import CHUNK, PIXELS, QUALITY, SEQ

from tests.datagen import png_bytes
from tests.quality.photos import jpeg, photos

PRE = Preprocess(32)  # a small-input bundle's preprocess, as calibration writes it


def _sharp_and_blurred() -> tuple[list[bytes], list[bytes]]:
    sharp, blurred = [], []
    for a in photos().values():
        sharp.append(jpeg(a))
        blurred.append(jpeg(np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(3)))))
    return sharp, blurred


def _write(tmp_path, blobs: list[bytes], ext: str = "jpg") -> list[str]:
    uris = []
    for i, b in enumerate(blobs):
        p = tmp_path / f"{i}.{ext}"
        p.write_bytes(b)
        uris.append(str(p))
    return uris


def _read(uris: list[str], quality: dict | None = None, checks: bool = True) -> dict[str, np.ndarray]:
    n = len(uris)
    batch = {"uri": np.array(uris, dtype=object), "etag": np.array(["e"] * n, dtype=object),
             "size": np.full(n, -1, np.int64), CHUNK: np.zeros(n, np.int32), SEQ: np.arange(n, dtype=np.int32)}
    return fetch_decode(batch, preprocess=PRE.to_dict(), s3=None, max_bytes=1 << 24, max_pixels=1 << 26,
                        threads=2, quality=quality, checks=checks)


def _working_lap(data: bytes) -> float:
    return measure(decode_image(data, size=PRE, working_size=256).working).laplacian_var


def test_blur_hidden_at_32_px_is_found_on_the_working_copy(tmp_path):
    sharp, blurred = _sharp_and_blurred()
    threshold = blurry_threshold(np.array([_working_lap(b) for b in sharp]))  # calibrated as calibration does
    out = _read(_write(tmp_path, sharp + blurred), quality={"blurry": threshold})
    issues = [set(q) for q in out[QUALITY].to_pylist()]
    assert sum("blurry" in q for q in issues[:len(sharp)]) <= 1  # the 1st percentile of 7: at most the least sharp
    assert all("blurry" in q for q in issues[len(sharp):])
    # The property truly differs: at the model's 32 px every blurred photo is sharper than the threshold.
    assert all(measure(px).laplacian_var > threshold for px in out[PIXELS][len(sharp):])


def test_colour_at_the_borders_is_not_grayscale(tmp_path):
    grey = np.repeat(np.asarray(Image.fromarray(photos()["astronaut"]).convert("L"))[..., None], 3, axis=2)
    framed = np.zeros((512, 768, 3), np.uint8)
    framed[:, 128:640] = grey
    framed[:, :100] = (200, 30, 30)
    framed[:, -100:] = (30, 30, 200)  # colour bars outside the 512×512 centre crop
    out = _read(_write(tmp_path, [png_bytes(framed), png_bytes(grey)], "png"),
                quality={"grayscale_id_share": 0.0})  # a colour ID set's bundle: grayscale is reported
    assert out[QUALITY].to_pylist() == [[], ["grayscale"]]
    assert measure(out[PIXELS][0]).grayscale_fraction >= 0.999  # the crop alone would say grayscale


def test_checks_off_gives_the_same_pixels_and_no_issues(tmp_path):
    sharp, _ = _sharp_and_blurred()
    uris = _write(tmp_path, sharp[:3]) + [str(tmp_path / "gone.jpg")]
    on, off = _read(uris), _read(uris, checks=False)
    assert np.array_equal(on[PIXELS], off[PIXELS]) and list(on["status"]) == list(off["status"])
    assert on[QUALITY].to_pylist() == [[], [], [], None] and off[QUALITY].to_pylist() == [None] * 4


@pytest.mark.timeout(120)
def test_calibration_measures_the_same_working_copy(tmp_path):
    sharp, blurred = _sharp_and_blurred()
    blobs = sharp[:2] + blurred[:2]
    uris = _write(tmp_path, blobs)
    torch.manual_seed(0)
    spec = ModelSpec("resnet18", 2, small_input=True, image_size=32)
    model = build_model("resnet18", 2, small_input=True)
    save_weights(model, tmp_path / "m.safetensors")
    worker = ScoreWorker((tmp_path / "m.safetensors").read_bytes(), spec.to_dict(), PRE.to_dict(),
                         block_candidates(model)[-1], states={}, banks={}, threads=1)
    out = worker({"uri": np.array(uris, dtype=object), "index": np.arange(len(uris))})
    want = [_working_lap(b) for b in blobs]
    assert out["laplacian_var"].tolist() == want  # exactly what the scan's read task measures
    model_px = [measure(decode_image(b, size=PRE).array).laplacian_var for b in blobs]
    assert all(abs(w - m) > 1.0 for w, m in zip(want, model_px))  # and not the 32 px model input
