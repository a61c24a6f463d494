"""The two explanations the report draws for each anomalous object (SPEC §13), and flag reasons in words.

- **The CSD deciding view** (``csd_view``, the argmin of SPEC §7's six views) becomes a box in percent of
  the thumbnail, so it lands on the same part of the image at any display size. Thumbnails keep the
  image's aspect ratio (:mod:`ood_audit.io.thumbs`), and so do placeholders, which is why percentages of
  the thumbnail are percentages of the image: q00, q01, q10, q11 are the top-left, top-right, bottom-left
  and bottom-right quarters (row-major), ``centre`` the central box of half the height and half the width,
  ``global`` the whole image. The 2×2 pool's cells overlap by a feature cell for odd map sizes; at the
  scale of a thumbnail the halves are what the model looked at.
- **The nearest ID neighbours**: a row's ``knn_nn`` are kNN-bank rows, closest first, and ``knn_nn_dist``
  their L2 distances; the bundle's bank sources give each row's calibration image URI and thumbnail.
"""
from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ood_audit.vocab import CSD_VIEW_NAMES

# (left, top, width, height) in percent of the image, per CSD view index (SPEC §13).
_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 50.0, 50.0),     # q00 top-left
    (50.0, 0.0, 50.0, 50.0),    # q01 top-right
    (0.0, 50.0, 50.0, 50.0),    # q10 bottom-left
    (50.0, 50.0, 50.0, 50.0),   # q11 bottom-right
    (0.0, 0.0, 100.0, 100.0),   # global
    (25.0, 25.0, 50.0, 50.0),   # centre
)
_VIEW_WORDS = {"q00": "top-left quarter", "q01": "top-right quarter", "q10": "bottom-left quarter",
               "q11": "bottom-right quarter", "global": "whole image", "centre": "central box"}

SCORE_WORDS = {
    "featurenorm": "weak activations at the selected block (FeatureNorm)",
    "featurenorm2": "activations unusually weak or strong at the selected block (two-sided FeatureNorm)",
    "csd": "no part of it, at any scale, resembles the training images (CSD)",
    "knn": "far from every training image in feature space (kNN)",
    "msp": "the classifier is unsure of every class (MSP)",
    "energy": "low evidence for any class (energy)",
    "maxlogit": "no class logit stands out (MaxLogit)",
}

STATUS_WORDS = {
    "ok": "scored",
    "decode_error": "could not be decoded as an image",
    "missing": "gone or unreadable when the scan fetched it",
    "too_large": "larger than the scan's size limits",
    "unsupported": "not an image type the scan reads",
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
class Neighbour:
    """One nearest kNN-bank row: its calibration image, its distance, and its thumbnail (a data URI)."""

    row: int
    uri: str
    distance: float
    thumb: str | None


def csd_box(view: int | None) -> CsdBox | None:
    """The box of CSD view ``view`` (an index into ``CSD_VIEW_NAMES``); None when unknown."""
    if view is None or not 0 <= int(view) < len(_BOXES):
        return None
    name = CSD_VIEW_NAMES[int(view)]
    return CsdBox(name, _VIEW_WORDS[name], *_BOXES[int(view)])


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
