"""The two explanations the report draws for each anomalous object (SPEC §13), and flag reasons in words.

- **The CSD deciding view** (``csd_view``, the argmin of SPEC §7's six views) becomes a box in percent of
  the thumbnail, so it lands on the same part of the image at any display size. The box is what
  :func:`ood_audit.scores.csd.view_box` returns: the view's cells of the last feature map, mapped through the
  bundle's preprocess (resize and crop) back onto the stored image, after EXIF orientation. On a
  centre-cropped landscape photo, ``global`` is the central square. Thumbnails keep the image's aspect ratio
  (:mod:`ood_audit.io.thumbs`), and so do placeholders, so percentages of the stored image are percentages of
  the thumbnail. Without a bundle (or one without a fixed input size) there is no box: the geometry is unknown.
- **The nearest ID neighbours**: a row's ``knn_nn`` are kNN-bank rows, closest first, and ``knn_nn_dist``
  their L2 distances; the bundle's bank sources give each row's calibration image URI and thumbnail.
"""
from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ood_audit.preprocess import Preprocess
from ood_audit.vocab import CSD_VIEW_NAMES

_VIEW_WORDS = {"q00": "top-left quarter", "q01": "top-right quarter", "q10": "bottom-left quarter",
               "q11": "bottom-right quarter", "global": "whole model input", "centre": "central box"}

SCORE_WORDS = {
    "featurenorm": "weak activations at the selected block (FeatureNorm)",
    "featurenorm2": "activations unusually weak or strong at the selected block (two-sided FeatureNorm)",
    "csd": "no part of it, at any scale, resembles the training images (CSD)",
    "knn": "far from every training image in feature space (kNN)",
    "msp": "the classifier is unsure of every class (MSP)",
    "energy": "low evidence for any class (energy)",
    "maxlogit": "no class logit stands out (MaxLogit)",
    "scale": "low evidence for any class once its strongest activations are weighed up (SCALE)",
    "mahalanobis++": "far from every class's centre, as the training images vary (Mahalanobis++)",
}

STATUS_WORDS = {
    "ok": "scored",
    "decode_error": "could not be decoded as an image",
    "missing": "gone or unreadable when the scan fetched it",
    "too_large": "larger than the scan's size limits",
    "unsupported": "not an image type the scan reads",
    "refused": "the store refused this object (archived, its key, a per-object deny) while answering others",
}


@dataclass(frozen=True)
class CsdBox:
    """Where the deciding CSD view lies on the image, in percent of its width and height."""

    view: str
    words: str
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class CsdGeometry:
    """What maps a CSD view onto a stored image: the bundle's preprocess and its model's last-map size."""

    preprocess: Preprocess
    map_hw: tuple[int, int]


@dataclass(frozen=True)
class Neighbour:
    """One nearest kNN-bank row: its calibration image, its distance, and its thumbnail (a data URI)."""

    row: int
    uri: str
    distance: float
    thumb: str | None


def csd_geometry(info: Any) -> CsdGeometry | None:
    """The CSD geometry of a bundle's metadata (:class:`~ood_audit.bundle.schema.BundleMeta`); None without a
    bundle or a fixed input size. Imports torch to get the last map's size (shapes only)."""
    if info is None or info.preprocess.output_hw is None:
        return None
    from ood_audit.models.taps import last_map_hw

    m = info.model
    return CsdGeometry(info.preprocess, last_map_hw(m.arch, m.num_classes, m.small_input, info.preprocess.output_hw))


def csd_box(view: int | None, geometry: CsdGeometry | None,
            stored_size: tuple[int | None, int | None] | None) -> CsdBox | None:
    """The box of CSD view ``view`` (an index into ``CSD_VIEW_NAMES``) on a stored image of ``stored_size`` =
    (width, height) after EXIF orientation, from :func:`ood_audit.scores.csd.view_box`; None when the view, the
    geometry or the size is unknown."""
    w, h = stored_size or (None, None)
    if view is None or not 0 <= int(view) < len(CSD_VIEW_NAMES) or geometry is None or not w or not h:
        return None
    from ood_audit.scores.csd import view_box

    name = CSD_VIEW_NAMES[int(view)]
    left, top, right, bottom = view_box(int(view), geometry.preprocess, (w, h), geometry.map_hw)
    return CsdBox(name, _VIEW_WORDS[name], *(round(100.0 * v, 4) for v in (left / w, top / h, (right - left) / w,
                                                                              (bottom - top) / h)))


def reason_words(score: str) -> str:
    """A flag reason (a score below its threshold) in words."""
    if score in SCORE_WORDS:
        return SCORE_WORDS[score]
    base = score.split("+", 1)[0]
    return f"{SCORE_WORDS[base]}, combined with FeatureNorm" if base in SCORE_WORDS else f"low {score} score"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def neighbours(rows: Sequence[int] | None, dists: Sequence[float] | None, sources: Any | None) -> list[Neighbour]:
    """The rows' bank sources (a ``row, uri, thumb`` table, or None for old bundles), closest first."""
    if not rows:
        return []
    dists = list(dists or [])
    n = sources.num_rows if sources is not None else 0
    uris = sources.column("uri") if sources is not None else None
    thumbs = sources.column("thumb") if sources is not None else None
    out = []
    for i, r in enumerate(rows):
        known = uris is not None and 0 <= r < n
        thumb = thumbs[r].as_py() if known else None
        out.append(Neighbour(row=int(r), uri=uris[r].as_py() if known else f"bank row {r}",
                             distance=float(dists[i]) if i < len(dists) and dists[i] is not None else float("nan"),
                             thumb=data_uri(thumb, "image/jpeg") if thumb else None))
    return out
