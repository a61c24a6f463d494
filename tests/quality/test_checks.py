"""SPEC §14 image-quality checks: images with known properties are flagged, and only those."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter
from pydantic import ValidationError
from scipy import ndimage, stats

from ood_audit.errors import DataError
from ood_audit.io.decode import decode_image
from ood_audit.io.quality import (
    ISSUES,
    QualityConfig,
    blurry_threshold,
    measure,
    quality_issues,
    working_image,
)

from tests.quality.photos import jpeg, photos, random_crops, resized


@pytest.fixture(scope="module")
def sharp() -> dict[str, np.ndarray]:
    return {name: resized(a) for name, a in photos().items()}


@pytest.fixture(scope="module")
def calibrated() -> QualityConfig:
    """``blurry`` set from 280 random crops (40 per photo) of the sharp photos, as calibration would on
    held-out ID: the full photos tested below are not among them."""
    rng = np.random.default_rng(0)
    crops = [c for a in photos().values() for c in random_crops(a, 40, rng)]
    return QualityConfig().with_blurry(blurry_threshold(np.array([measure(c).laplacian_var for c in crops])))


# The thresholds of a bundle whose held-out ID images are all colour (SPEC §14: grayscale is then reported).
COLOUR_ID = QualityConfig(grayscale_id_share=0.0)


def _const(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def test_all_black_and_all_white_are_dark_and_light():
    assert quality_issues(_const(224, 224, (0, 0, 0)), config=COLOUR_ID) == ["dark", "low_information", "grayscale"]
    assert quality_issues(_const(224, 224, (255, 255, 255)), config=COLOUR_ID) == ["light", "low_information",
                                                                                    "grayscale"]
    # No recorded share of grey ID images (no bundle, or one calibrated before it): grayscale is not reported.
    assert quality_issues(_const(224, 224, (0, 0, 0))) == ["dark", "low_information"]
    assert quality_issues(_const(224, 224, (19, 19, 19)))[0] == "dark"
    assert "dark" not in quality_issues(_const(224, 224, (21, 21, 21)))


def test_constant_colour_is_low_information_only():
    assert quality_issues(_const(224, 224, (200, 50, 50))) == ["low_information"]


def test_constant_image_is_also_blurry_once_blurry_is_calibrated(calibrated):
    # A constant image has zero Laplacian variance: SPEC §14 applies every check independently.
    assert quality_issues(_const(224, 224, (200, 50, 50)), config=calibrated) == ["blurry", "low_information"]


def test_normal_photos_flag_nothing(sharp, calibrated):
    for name, a in sharp.items():
        assert quality_issues(a) == [], name
        assert quality_issues(a, config=calibrated) == [], name


def test_blurred_copy_of_a_sharp_photo_is_blurry_only(sharp, calibrated):
    assert calibrated.blurry is not None and calibrated.blurry > 0
    for name, a in sharp.items():
        blurred = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(2)))
        assert quality_issues(blurred, config=calibrated) == ["blurry"], name
        assert quality_issues(blurred) == [], name  # not calibrated: blurry is never reported


def test_grey_photo_saved_as_rgb_jpeg_is_grayscale():
    import skimage.data

    grey = skimage.data.camera()
    data = jpeg(np.repeat(grey[:, :, None], 3, axis=2))
    res = decode_image(data, size=224)
    assert res.ok and res.array.shape == (224, 224, 3)
    assert quality_issues(res.array, (res.width, res.height), COLOUR_ID) == ["grayscale"]
    # In an ID set where at least half of the images are grey, grey is normal (SPEC §14).
    for share in (0.5, 1.0):
        assert quality_issues(res.array, (res.width, res.height), QualityConfig(grayscale_id_share=share)) == []


def test_colour_photos_are_not_grayscale_even_where_desaturated(sharp):
    for name, a in sharp.items():
        assert measure(a).grayscale_fraction < 0.999, name


def test_wide_strip_is_odd_aspect_ratio_not_tiny():
    china = photos()["china"]
    strip = resized(china, (3000, 100))
    res = decode_image(jpeg(strip))
    assert res.ok and (res.width, res.height) == (3000, 100)
    # 100 px is not under SPEC §14's 32 px, so the strip is not tiny.
    assert quality_issues(res.array, (res.width, res.height)) == ["odd_aspect_ratio"]
    thin = resized(china, (3000, 20))
    assert quality_issues(thin, (3000, 20)) == ["odd_aspect_ratio", "tiny"]
    assert quality_issues(resized(china, (400, 100)), (400, 100)) == []  # exactly 4: not over it


def test_tiny_uses_the_original_size_not_the_decoded_one(sharp):
    a = sharp["coffee"]
    assert quality_issues(a, (40, 31)) == ["tiny"]
    assert quality_issues(a, (40, 32)) == []
    small = resized(photos()["coffee"], (24, 24))
    assert quality_issues(small) == ["tiny"]


def test_under_3x3_has_no_laplacian_and_is_never_blurry(calibrated):
    m = measure(np.full((2, 2, 3), 128, np.uint8))
    assert np.isnan(m.laplacian_var)
    assert "blurry" not in m.issues(calibrated)


def test_measures_agree_with_independent_references(sharp):
    a = sharp["astronaut"]
    m = measure(a)
    grey = np.asarray(Image.fromarray(a).convert("L"))
    assert m.brightness == pytest.approx(grey.mean(), rel=1e-12)
    lap = ndimage.convolve(grey.astype(np.float64), np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float))[1:-1, 1:-1]
    assert m.laplacian_var == pytest.approx(lap.var(), rel=1e-9)
    assert m.entropy == pytest.approx(stats.entropy(np.bincount(grey.ravel(), minlength=256), base=2), rel=1e-9)
    spread = a.max(axis=2).astype(int) - a.min(axis=2)
    assert m.grayscale_fraction == pytest.approx(np.mean(spread <= 2), abs=1e-12)


def test_working_image_longer_side_at_most_256():
    a = np.zeros((600, 1000, 3), np.uint8)
    assert max(working_image(a).shape[:2]) <= 256
    assert max(working_image(np.zeros((3000, 100, 3), np.uint8)).shape[:2]) <= 256
    b = np.zeros((224, 224, 3), np.uint8)
    assert working_image(b) is b
    c = np.zeros((256, 100, 3), np.uint8)
    assert working_image(c) is c


def test_large_photo_measured_at_working_size_matches_its_downscale():
    big = photos()["china"]  # 640×427: reduced by 3 to 214×143
    m = measure(big)
    ref = measure(np.asarray(Image.fromarray(big).reduce(3)), (big.shape[1], big.shape[0]))
    assert m == ref


def test_config_is_frozen_validated_and_recordable():
    cfg = QualityConfig()
    assert cfg.blurry is None
    with pytest.raises(ValidationError):
        QualityConfig(dark=-1)
    with pytest.raises(ValidationError):
        QualityConfig(unknown=1)
    with pytest.raises(ValidationError):
        cfg.dark = 10  # type: ignore[misc]
    assert QualityConfig.model_validate(cfg.with_blurry(12.5).model_dump()).blurry == 12.5
    assert set(ISSUES) == {"dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "tiny"}


def test_blurry_threshold_is_the_first_percentile():
    v = np.arange(1, 102, dtype=float)  # 1..101: the 1st percentile is 2.0
    assert blurry_threshold(v) == pytest.approx(2.0)
    assert blurry_threshold(np.append(v, np.nan)) == pytest.approx(2.0)
    with pytest.raises(DataError):
        blurry_threshold(np.array([np.nan]))


def test_bad_input_is_refused():
    with pytest.raises(DataError):
        measure(np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError):
        measure(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DataError):
        measure(np.zeros((4, 4, 3), np.uint8), (0, 4))
