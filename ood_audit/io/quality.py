"""Image-quality findings on a decoded image (SPEC §14).

On the decoded uint8 RGB image, the whole frame (not the model's crop), reduced to a *working size* whose
longer side is at most 256 px: a box average by the smallest integer factor that gets there
(:func:`working_factor`, the one definition of that rule; a 224 px image is used as it is). The scan and
calibration measure the copy that :func:`~ood_audit.io.decode.decode_image` makes with ``working_size``
(``DecodeResult.working``), from the same decode as the model input; :func:`measure` reduces any larger
array it is given by the same rule.

- ``dark`` / ``light``: mean grey level g = (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16 (ITU-R 601 luma, the
  integer form Pillow's ``convert("L")`` uses) below 20 / above 235;
- ``blurry``: Var(∇²g), with ∇² the 3×3 kernel [[0, 1, 0], [1, −4, 1], [0, 1, 0]] over the interior
  pixels, below a threshold set at calibration (:func:`blurry_threshold`: the 1st percentile of held-out
  ID); never reported when the threshold is absent;
- ``low_information``: H = −Σ p_i log₂ p_i over the 256 grey levels below 2.0 bits;
- ``grayscale``: max(R, G, B) − min(R, G, B) ≤ 2 at ≥ 99.9 % of pixels; reported only when fewer than half
  of the held-out ID images are grayscale (``grayscale_id_share``, recorded at calibration by
  :func:`grayscale_share`): in a grey ID set grey is normal. Never reported when the share is absent (a
  bundle calibrated before it was recorded, or no bundle);
- ``odd_aspect_ratio``: longer / shorter side of the *original* image > 4;
- ``tiny``: shorter side of the original < 32 px.

The original size is the stored size from the file header (``DecodeResult.width``/``height``), before
EXIF rotation; a rotation swaps the sides, which changes neither test.

These are findings, never statuses and never OOD flags. The measures (:class:`QualityMeasures`) are kept
apart from the thresholds (:class:`QualityConfig`) so that calibration can set ``blurry`` from the raw
Laplacian variances of held-out ID, and the run summary can record every threshold used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ood_audit.errors import ConfigError, DataError
from ood_audit.preprocess import DEFAULT_WORKING_SIZE

if TYPE_CHECKING:
    from ood_audit.bundle.schema import QualityPart

ISSUES: tuple[str, ...] = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "tiny")
BLURRY_PERCENTILE = 1.0
GRAYSCALE_MAX_ID_SHARE = 0.5  # SPEC §14: grayscale is a finding only when fewer ID images than this share are grey


class QualityConfig(BaseModel):
    """The SPEC §14 thresholds. ``blurry`` is None until calibrated (then the check is skipped)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    working_size: int = Field(DEFAULT_WORKING_SIZE, ge=8, description="longer side of the working image, px")
    dark: float = Field(20.0, ge=0, le=255, description="mean grey below this is dark")
    light: float = Field(235.0, ge=0, le=255, description="mean grey above this is light")
    blurry: float | None = Field(None, ge=0, description="Laplacian variance below this is blurry")
    low_information: float = Field(2.0, ge=0, le=8, description="grey entropy (bits) below this")
    grayscale_tolerance: int = Field(2, ge=0, le=255, description="max channel spread, grey levels")
    grayscale_fraction: float = Field(0.999, gt=0, le=1, description="share of pixels within tolerance")
    grayscale_id_share: float | None = Field(
        None, ge=0, le=1, description="share of held-out ID images that are grayscale (set at calibration); "
        "grayscale is reported only when this is below 0.5, never when it is None")
    odd_aspect_ratio: float = Field(4.0, gt=1, description="longer/shorter side above this")
    tiny: int = Field(32, ge=1, description="shorter original side below this, px")

    def with_blurry(self, threshold: float) -> QualityConfig:
        return self.model_copy(update={"blurry": float(threshold)})

    @property
    def reports_grayscale(self) -> bool:
        """SPEC §14: only when the calibrated share of grey held-out ID images is below one half."""
        return self.grayscale_id_share is not None and self.grayscale_id_share < GRAYSCALE_MAX_ID_SHARE


@dataclass(frozen=True)
class QualityMeasures:
    """Raw measures of one image; ``laplacian_var`` is NaN when the working image is under 3×3."""

    brightness: float
    laplacian_var: float
    entropy: float
    grayscale_fraction: float
    aspect_ratio: float
    shorter_side: int

    def is_grayscale(self, config: QualityConfig) -> bool:
        """Whether the image is grey by the SPEC §14 test (whether or not ``config`` reports it)."""
        return self.grayscale_fraction >= config.grayscale_fraction

    def issues(self, config: QualityConfig) -> list[str]:
        """The issue names these measures raise under ``config``, in :data:`ISSUES` order."""
        hit = {
            "dark": self.brightness < config.dark,
            "light": self.brightness > config.light,
            "blurry": config.blurry is not None and self.laplacian_var < config.blurry,  # NaN compares False
            "low_information": self.entropy < config.low_information,
            "grayscale": config.reports_grayscale and self.is_grayscale(config),
            "odd_aspect_ratio": self.aspect_ratio > config.odd_aspect_ratio,
            "tiny": self.shorter_side < config.tiny,
        }
        return [name for name in ISSUES if hit[name]]


_DEFAULT = QualityConfig()


def working_factor(width: int, height: int, working_size: int = DEFAULT_WORKING_SIZE) -> int:
    """The SPEC §14 working-size rule: the smallest integer factor that brings the longer side to ≤ working_size.

    The reduction itself is Pillow's ``Image.reduce`` by this factor (a box average; the last row and column
    average what is left), in :func:`working_image` and in the decoder alike."""
    if working_size < 1:
        raise ConfigError(f"working_size must be positive, got {working_size}")
    return max(1, math.ceil(max(width, height) / working_size))


def working_image(image: np.ndarray, working_size: int = DEFAULT_WORKING_SIZE) -> np.ndarray:
    """``image`` reduced by :func:`working_factor` (returned as it is when that is 1)."""
    _check_rgb(image)
    factor = working_factor(image.shape[1], image.shape[0], working_size)
    if factor <= 1:
        return image
    return np.asarray(Image.fromarray(image).reduce(factor))


def measure(image: np.ndarray, original_size: tuple[int, int] | None = None,
            config: QualityConfig = _DEFAULT) -> QualityMeasures:
    """The SPEC §14 measures of a decoded uint8 RGB ``image`` (H×W×3): the full frame, or its working copy
    (``DecodeResult.working``, which this leaves as it is), never the model's crop.

    ``original_size`` is (width, height) of the stored image; None takes the array's own size.
    """
    work = working_image(image, config.working_size)
    grey_im = Image.fromarray(work).convert("L")  # Pillow's C path: the luma of the module docstring
    counts = np.asarray(grey_im.histogram(), dtype=np.int64)
    n = int(counts.sum())
    p = counts[counts > 0] / n
    entropy = float(-(p * np.log2(p)).sum())
    brightness = float(counts @ np.arange(256)) / n
    grey = np.asarray(grey_im, dtype=np.int16)
    if grey.shape[0] >= 3 and grey.shape[1] >= 3:
        lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
               ).astype(np.int32)
        # Exact integer sums: no float rounding and no BLAS call (its threads cost more than the sum here).
        m = lap.size
        mean = int(lap.sum(dtype=np.int64)) / m
        laplacian_var = max(int((lap * lap).sum(dtype=np.int64)) / m - mean * mean, 0.0)
    else:
        laplacian_var = float("nan")
    r, g, b = np.ascontiguousarray(work.transpose(2, 0, 1))  # planar: the min/max below run on contiguous rows
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    grey_share = float(np.count_nonzero(spread <= config.grayscale_tolerance)) / n
    w, h = original_size if original_size is not None else (image.shape[1], image.shape[0])
    if w < 1 or h < 1:
        raise DataError(f"original_size must be positive, got {original_size!r}")
    return QualityMeasures(brightness, laplacian_var, entropy, grey_share, max(w, h) / min(w, h), int(min(w, h)))


def quality_issues(image: np.ndarray, original_size: tuple[int, int] | None = None,
                   config: QualityConfig = _DEFAULT) -> list[str]:
    """The SPEC §14 issue names for one image (an empty list when it has none)."""
    return measure(image, original_size, config).issues(config)


def blurry_threshold(laplacian_vars: np.ndarray, percentile: float = BLURRY_PERCENTILE) -> float:
    """The ``blurry`` threshold: the ``percentile`` (default 1st) of held-out ID Laplacian variances
    (``np.percentile``, linear interpolation; NaNs from images under 3×3 are left out)."""
    v = np.asarray(laplacian_vars, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise DataError("no held-out Laplacian variances to set the blurry threshold")
    if not 0.0 < percentile < 100.0:
        raise ConfigError(f"blurry percentile must be in (0, 100), got {percentile}")
    return float(np.percentile(v, percentile))


def grayscale_share(is_grey: np.ndarray) -> float:
    """The share of held-out ID images that are grey (:meth:`QualityMeasures.is_grayscale` of each, as 0/1 or
    bool; NaN for an image not measured is left out): the calibrated ``grayscale_id_share``."""
    v = np.asarray(is_grey, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise DataError("no held-out grayscale measures to set the grayscale share")
    return float(np.count_nonzero(v)) / v.size


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise DataError(f"quality checks need a non-empty uint8 H×W×3 image, got {image.dtype} {image.shape}")


def quality_notices(part: QualityPart | None, bundle_id: str) -> list[str]:
    """What a scan with this bundle's quality part does not check, and why, one line each (for the scan's
    one-time notice): blur without a comparable threshold, grayscale without a recorded share (SPEC §14)."""
    if part is None:
        return [f"bundle {bundle_id} has no calibrated quality thresholds: blurry and grayscale are not reported "
                "(calibrate again to check them)"]
    out = []
    if not part.comparable:
        out.append(f"bundle {bundle_id} set its blurry threshold on {part.measured_on}, not on the working copies "
                   "the scan measures; blur is not checked (calibrate again to check it)")
    if part.grayscale_share is None:
        out.append(f"bundle {bundle_id} records no share of grey held-out ID images, so grayscale is not reported "
                   "(SPEC §14: only when fewer than half are grey; calibrate again to check it)")
    return out
