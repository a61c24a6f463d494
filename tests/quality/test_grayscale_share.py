"""SPEC §14: ``grayscale`` is reported only when fewer than half of the held-out ID images are grey, a share
recorded at calibration. A bundle of real digits (grey) does not report it; a bundle of real colour photos
reports a grey copy of a photo; a bundle without the recorded share reports it never."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ood_audit import build_model, save_weights
from ood_audit.bundle.files import load_bundle
from ood_audit.bundle.schema import QualityPart
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.commands.bundle import findings_lines
from ood_audit.io.decode import decode_image
from ood_audit.io.quality import QualityConfig, measure
from ood_audit.models import ModelSpec
from ood_audit.scan.read import fetch_decode
from ood_audit.scan.rows import CHUNK, QUALITY, SEQ

from tests.datagen import png_bytes, write_local
from tests.quality.photos import photos, random_crops

SPEC = ModelSpec("resnet18", 2, small_input=True, image_size=32)


def _model(root) -> str:
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    save_weights(build_model("resnet18", 2, small_input=True), root / "model.safetensors")
    (root / "model.json").write_text(json.dumps(SPEC.to_dict()))
    return str(root / "model.safetensors")


def _grey_png(a: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(a, "L").save(out, format="PNG")
    return out.getvalue()


def _digits() -> list[bytes]:
    """sklearn's 8×8 handwritten digits (levels 0–16) as 8-bit greyscale PNGs, the way they are usually stored."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    return [_grey_png(np.rint(d * 255.0 / 16.0).astype(np.uint8)) for d in images[:80]]


def _calibrate(tmp_path, name: str, files: dict[str, bytes]):
    data = str(write_local(tmp_path / name, files))
    res = calibrate(CalibrateConfig(data=data, model=_model(tmp_path / "m"), output=str(tmp_path / f"{name}-out"),
                                    heldout_fraction=0.4, workers=0, k_knn=5, min_heldout=10))
    return res, load_bundle(res.bundle_uri)


def _expected_share(res, files: dict[str, bytes], root) -> float:
    """The share of the held-out images that are grey, measured here one by one on their working copies."""
    cfg = QualityConfig()
    grey = []
    for uri in res.heldout["uri"]:
        key = str(uri)[len(str(root)) + 1:]
        working = decode_image(files[key], size=32, working_size=cfg.working_size).working
        grey.append(measure(working, config=cfg).grayscale_fraction >= cfg.grayscale_fraction)
    return float(np.mean(grey))


def _issues(tmp_path, blobs: list[bytes], quality: QualityConfig) -> list[set[str]]:
    uris = []
    for i, b in enumerate(blobs):
        p = tmp_path / f"scan-{i}.png"
        p.write_bytes(b)
        uris.append(str(p))
    n = len(uris)
    batch = {"uri": np.array(uris, dtype=object), "etag": np.array(["e"] * n, dtype=object),
             "size": np.full(n, -1, np.int64), CHUNK: np.zeros(n, np.int32), SEQ: np.arange(n, dtype=np.int32)}
    out = fetch_decode(batch, preprocess={"size": [32, 32]}, s3=None, max_bytes=1 << 24, max_pixels=1 << 26,
                       threads=1, quality=quality.model_dump())
    return [set(q) for q in out[QUALITY].to_pylist()]


@pytest.mark.timeout(600)
def test_a_digits_bundle_does_not_report_grayscale(tmp_path):
    digits = _digits()
    files = {f"d/{i:03d}.png": b for i, b in enumerate(digits[:60])}
    res, bundle = _calibrate(tmp_path, "digits", files)
    q = bundle.info.quality
    assert q is not None and q.grayscale_share == _expected_share(res, files, tmp_path / "digits")
    assert q.grayscale_share == 1.0  # every digit is an 8-bit grey PNG: R = G = B exactly
    config = q.config()
    assert not config.reports_grayscale
    unseen = digits[60:]
    assert all(measure(decode_image(b, working_size=256).working).is_grayscale(config) for b in unseen)
    assert all("grayscale" not in issues for issues in _issues(tmp_path, unseen, config))
    assert "grey is normal here" in findings_lines(bundle.info)[1]


@pytest.mark.timeout(600)
def test_a_colour_photo_bundle_reports_a_grey_copy(tmp_path):
    rng = np.random.default_rng(0)
    crops = [c for a in photos().values() for c in random_crops(a, 8, rng, size=64)]
    files = {f"p/{i:03d}.png": png_bytes(c) for i, c in enumerate(crops)}
    res, bundle = _calibrate(tmp_path, "photos", files)
    q = bundle.info.quality
    assert q is not None and q.grayscale_share == _expected_share(res, files, tmp_path / "photos")
    assert q.grayscale_share < 0.5
    config = q.config()
    assert config.reports_grayscale
    photo = photos()["astronaut"]
    grey = np.repeat(np.asarray(Image.fromarray(photo).convert("L"))[..., None], 3, axis=2)
    assert _issues(tmp_path, [png_bytes(grey), png_bytes(photo)], config) == [{"grayscale"}, set()]
    assert "so grayscale is reported" in findings_lines(bundle.info)[1]


def test_a_bundle_without_the_recorded_share_never_reports_grayscale():
    old = QualityPart.model_validate({"blurry": 3.0, "heldout_images": 40})  # as written before the share
    assert old.grayscale_share is None and not old.config().reports_grayscale
    black = np.zeros((64, 64, 3), np.uint8)
    assert "grayscale" not in measure(black).issues(old.config())
    assert "grayscale" in measure(black).issues(QualityPart(blurry=3.0, heldout_images=40,
                                                            grayscale_share=0.1).config())


def test_the_scans_notice_says_why_grayscale_is_not_reported():
    from ood_audit.io.quality import quality_notices

    assert quality_notices(QualityPart(blurry=3.0, heldout_images=40, grayscale_share=0.9), "b1") == []
    (line,) = quality_notices(QualityPart.model_validate({"blurry": 3.0, "heldout_images": 40}), "b1")
    assert "grayscale is not reported" in line and "b1" in line
    (line,) = quality_notices(None, "b1")
    assert "blurry and grayscale are not reported" in line
