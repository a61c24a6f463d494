"""CSD, the cross-scale decision score of MODE (Zhang et al., "From Global to Local: Multi-scale
Out-of-distribution Detection", TIP 2023, section "Cross-Scale Decision"; SPEC §7).

Six C-dimensional views per image are taken from the last-stage map F ∈ R^{C×H×W}:

    q00, q01, q10, q11 = adaptive average pool of F to 2×2 (row-major: top-left, top-right,
                         bottom-left, bottom-right)
    global             = mean of F over all H×W cells
    centre             = mean over the ⌈H/2⌉×⌈W/2⌉ cells starting at row ⌊(H−⌈H/2⌉)/2⌋ and
                         column ⌊(W−⌈W/2⌉)/2⌋

each L2-normalised as v/(‖v‖ + 1e-10). All 6 views of every ID training image form one bank of
6·N vectors. With d_v(x) the SQUARED L2 distance from view v to its k-th nearest bank vector,

    CSD(x) = − min_v d_v(x),      csd_view(x) = argmin_v d_v(x).

Higher = more in-distribution.

:func:`view_cells` is the one home of which map cells each view pools; :func:`view_box` maps a view back onto the
stored image through the bundle's preprocess (SPEC §13), for the report's box.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ood_audit.errors import DataError
from ood_audit.preprocess import Box, Preprocess
from ood_audit.knn import ArrayLike, KnnIndex, build_index, ensure_finite
from ood_audit.vocab import CSD_VIEW_NAMES

CSD_EPS = 1e-10


GLOBAL, CENTRE = CSD_VIEW_NAMES.index("global"), CSD_VIEW_NAMES.index("centre")


def view_cells(view: int | str, h: int, w: int) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)``, ends exclusive, of the cells of an ``h``×``w`` last-stage map that CSD view
    ``view`` (an index into, or a name of, ``CSD_VIEW_NAMES``) pools (SPEC §7).

    Quadrant ``qij`` is cell (i, j) of the 2×2 adaptive average pool, whose cell i of 2 along a side of n spans
    ⌊i·n/2⌋ to ⌈(i+1)·n/2⌉ (``adaptive_avg_pool2d``'s rule: on odd sides the two cells share the middle row or
    column); ``global`` is every cell; ``centre`` the ⌈h/2⌉×⌈w/2⌉ block starting at row ⌊(h−⌈h/2⌉)/2⌋
    and column ⌊(w−⌈w/2⌉)/2⌋."""
    v = CSD_VIEW_NAMES.index(view) if isinstance(view, str) else int(view)
    if not 0 <= v < len(CSD_VIEW_NAMES) or h < 1 or w < 1:
        raise DataError(f"no CSD view {view!r} on a {h}x{w} map")
    if v == GLOBAL:
        return 0, h, 0, w
    if v == CENTRE:
        ch, cw = -(-h // 2), -(-w // 2)
        r0, c0 = (h - ch) // 2, (w - cw) // 2
        return r0, r0 + ch, c0, c0 + cw
    i, j = divmod(v, 2)
    return (i * h) // 2, -(-((i + 1) * h) // 2), (j * w) // 2, -(-((j + 1) * w) // 2)


def view_box(view: int | str, preprocess: Preprocess, stored_size: tuple[int, int],
             map_hw: tuple[int, int]) -> Box:
    """The region of the stored image (``stored_size`` = (width, height) after EXIF orientation) that CSD view
    ``view`` covers, as ``(left, top, right, bottom)`` in its pixels (SPEC §13).

    The last-stage map (``map_hw`` cells, :func:`ood_audit.models.last_map_hw`) tiles the model input evenly,
    cell (r, c) covering its rows r·H/h to (r+1)·H/h and columns likewise; the model input is the
    preprocess's :meth:`~ood_audit.preprocess.Preprocess.crop_box` of the stored image, resized. So the view's
    cells (:func:`view_cells`) map linearly into that box. With a JPEG draft the decoder reads the same box
    at a reduced scale. Bilinear resampling also lets stored pixels within half a model-input pixel of the box
    edge (one stored pixel when upscaling) weigh in at the edge.
    """
    w, h = stored_size
    if w < 1 or h < 1:
        raise DataError(f"view_box needs a positive stored size, got {stored_size!r}")
    left, top, right, bottom = preprocess.crop_box(w, h) or (0.0, 0.0, float(w), float(h))
    mh, mw = map_hw
    r0, r1, c0, c1 = view_cells(view, mh, mw)
    sx, sy = (right - left) / mw, (bottom - top) / mh
    return left + c0 * sx, top + r0 * sy, left + c1 * sx, top + r1 * sy


def csd_views(fmap: ArrayLike) -> torch.Tensor:
    """Six L2-normalised views [N, 6, C] (float32) of a last-stage map [N, C, H, W] (SPEC §7).

    Works for any H×W ≥ 1×1; for odd sizes the 2×2 adaptive pool's cells overlap, as in
    ``torch.nn.functional.adaptive_avg_pool2d`` (the cells of :func:`view_cells`).
    """
    f = torch.as_tensor(fmap)
    if f.dim() != 4 or min(f.shape[2:]) < 1:
        raise DataError(f"csd_views needs a [N, C, H, W] map with H, W >= 1, got {tuple(f.shape)}")
    f = f.float()
    n, c, h, w = f.shape
    quadrants = F.adaptive_avg_pool2d(f, 2).reshape(n, c, 4).transpose(1, 2)  # [N, 4, C]
    global_view = f.mean(dim=(2, 3))
    r0, r1, c0, c1 = view_cells(CENTRE, h, w)
    centre = f[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    views = torch.cat([quadrants, global_view.unsqueeze(1), centre.unsqueeze(1)], dim=1)
    return views / (views.norm(dim=2, keepdim=True) + CSD_EPS)


def csd_bank(maps: Iterable[ArrayLike], name: str = "csd bank") -> torch.Tensor:
    """Pool the 6 views of every image in ``maps`` into one bank [6·N, C] on CPU, image-major (rows
    6i…6i+5 are image i's views in ``CSD_VIEW_NAMES`` order). Each batch is either a last-stage map
    [n, C, H, W] or its ``csd_views`` [n, 6, C] (what calibration workers send). Raises `DataError`
    naming ``name`` on NaN/inf.
    """
    parts = []
    for fmap in maps:
        f = torch.as_tensor(fmap)
        views = f.float() if f.dim() == 3 and f.shape[1] == len(CSD_VIEW_NAMES) else csd_views(f)
        ensure_finite(views, name)
        parts.append(views.reshape(-1, views.shape[2]).cpu())
    if not parts:
        raise DataError(f"{name}: no feature maps were given; the ID training set is empty")
    return torch.cat(parts)


def csd_score(
    views: ArrayLike,
    bank: ArrayLike | KnnIndex,
    k: int = 10,
    *,
    kind: str = "auto",
    name: str = "csd",
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSD scores [N] (float32, higher = ID) and the deciding view ``csd_view`` [N] (int64, 0–5).

    ``views`` are ``csd_views`` output [N, 6, C]. ``bank`` is either a pooled bank [6·M, C] from
    ``csd_bank`` (an exact index of ``kind`` is built on the views' device) or an already built
    `KnnIndex` holding such a bank. d_v is the squared L2 distance to the k-th neighbour (not a
    mean over k). Raises `DataError` naming ``name`` on NaN/inf views, `KnnError` on misuse.
    """
    v = torch.as_tensor(views)
    if v.dim() != 3 or v.shape[1] != len(CSD_VIEW_NAMES):
        raise DataError(f"{name}: views must be [N, 6, C] from csd_views, got {tuple(v.shape)}")
    ensure_finite(v, name)
    if isinstance(bank, KnnIndex):
        index = bank
    else:
        ensure_finite(torch.as_tensor(bank), f"{name} bank")
        index = build_index(bank, kind=kind, device=v.device)
    n = v.shape[0]
    flat = v.reshape(n * v.shape[1], v.shape[2])
    distances, _ = index.search(flat, k)
    kth = distances[:, k - 1].reshape(n, v.shape[1]).to(v.device)
    d_min, view = kth.min(dim=1)
    return -d_min, view
