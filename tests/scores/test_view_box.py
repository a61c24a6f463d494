"""SPEC §13: ``view_box`` maps each CSD view back onto the stored image through the bundle's resize and crop.

- The box arithmetic, derived by hand for known geometries (centre crop of 300×200, 7×7 maps, resize_shorter,
  stretch).
- ``view_cells`` are the cells ``csd_views`` pools: checked against ``adaptive_avg_pool2d`` on odd sizes and on
  a real ResNet's 7×7 last map.
- On real non-square photos (landscape and portrait): masking the stored image outside a view's box leaves that
  view's pixels of the model input, and so its pooled feature, unchanged; masking just inside the box changes
  them. A ResNet's cells see far beyond their own patch (its receptive field covers most of the input), so the
  per-view check pools the model input on the real model's cell grid; the real model's whole map is checked
  for ``global``, whose box is the crop: nothing outside it reaches the model at all.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ood_audit.io.decode import decode_image
from ood_audit.models import TapModel, build_model
from ood_audit.models.taps import last_map_hw
from ood_audit.preprocess import Preprocess, decoded_to_unit
from ood_audit.scores.csd import csd_views, view_box, view_cells
from ood_audit.vocab import CSD_VIEW_NAMES

EPS32 = torch.finfo(torch.float32).eps


def _near(box, want):
    assert box == pytest.approx(want, abs=1e-9), (box, want)


def test_centre_crop_of_a_landscape_image_by_hand():
    # 300×200 to 32×32: the shorter side (200) becomes 32, so the model sees the central 200×200 square,
    # columns 50..250; a 4×4 map gives 50 px cells of it.
    pre = Preprocess(32)
    assert pre.crop_box(300, 200) == (50.0, 0.0, 250.0, 200.0)
    want = {"q00": (50, 0, 150, 100), "q01": (150, 0, 250, 100), "q10": (50, 100, 150, 200),
            "q11": (150, 100, 250, 200), "global": (50, 0, 250, 200), "centre": (100, 50, 200, 150)}
    for name, box in want.items():
        _near(view_box(name, pre, (300, 200), (4, 4)), box)
        _near(view_box(CSD_VIEW_NAMES.index(name), pre, (300, 200), (4, 4)), box)


def test_odd_map_quadrants_share_the_middle_cells_by_hand():
    # 7×7 map over the same 200×200 square: cells of 200/7 px. adaptive pooling to 2: rows 0..4 and 3..7 (the
    # middle row 3 in both); centre: ceil(7/2) = 4 cells from row floor((7-4)/2) = 1.
    pre, c = Preprocess(224), 200 / 7
    _near(view_box("q00", pre, (300, 200), (7, 7)), (50, 0, 50 + 4 * c, 4 * c))
    _near(view_box("q11", pre, (300, 200), (7, 7)), (50 + 3 * c, 3 * c, 250, 200))
    _near(view_box("q01", pre, (300, 200), (7, 7)), (50 + 3 * c, 0, 250, 4 * c))
    _near(view_box("centre", pre, (300, 200), (7, 7)), (50 + c, c, 50 + 5 * c, 5 * c))


def test_portrait_with_resize_shorter_and_stretch_and_non_square_output_by_hand():
    # 200×300 portrait, shorter side 200 -> 256 (scale 1.28), then a 224 crop: 175 stored px, centred.
    pre = Preprocess(224, resize_shorter=256)
    _near(view_box("global", pre, (200, 300), (7, 7)), (12.5, 62.5, 187.5, 237.5))
    # "resize" stretches the whole image: global is the whole image, q01 its top-right quarter.
    stretch = Preprocess(32, mode="resize")
    _near(view_box("global", stretch, (300, 200), (4, 4)), (0, 0, 300, 200))
    _near(view_box("q01", stretch, (300, 200), (4, 4)), (150, 0, 300, 100))
    # a 24×40 (h×w) output of 300×200: scale max(24/200, 40/300) = 0.1333: 300×180 stored px, rows 10..190.
    _near(view_box("global", Preprocess((24, 40)), (300, 200), (3, 5)), (0, 10, 300, 190))
    _near(view_box("q00", Preprocess((24, 40)), (300, 200), (3, 5)), (0, 10, 180, 10 + 2 * 60))


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (3, 3), (4, 4), (5, 7), (7, 7), (3, 8)])
def test_view_cells_are_the_cells_csd_views_pools(h, w):
    f = torch.randn(2, 5, h, w, generator=torch.Generator().manual_seed(h * 10 + w), dtype=torch.float64)
    pooled = F.adaptive_avg_pool2d(f, 2)
    views = csd_views(f)
    for v, name in enumerate(CSD_VIEW_NAMES):
        r0, r1, c0, c1 = view_cells(name, h, w)
        mean = f[:, :, r0:r1, c0:c1].mean(dim=(2, 3)).float()
        if name.startswith("q"):
            i, j = int(name[1]), int(name[2])
            torch.testing.assert_close(mean, pooled[:, :, i, j].float())
        torch.testing.assert_close(views[:, v], mean / mean.norm(dim=1, keepdim=True))


def test_view_cells_on_a_real_resnets_odd_last_map():
    torch.manual_seed(0)
    tap = TapModel(build_model("resnet18", 3).eval())
    with torch.no_grad():
        fmap = tap(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))).last_map
    assert tuple(fmap.shape[2:]) == last_map_hw("resnet18", 3, False, (224, 224)) == (7, 7)
    views = csd_views(fmap)
    for v in range(len(CSD_VIEW_NAMES)):
        r0, r1, c0, c1 = view_cells(v, 7, 7)
        mean = fmap[:, :, r0:r1, c0:c1].float().mean(dim=(2, 3))
        torch.testing.assert_close(views[:, v], mean / mean.norm(dim=1, keepdim=True))


def _photos() -> dict[str, np.ndarray]:
    """Real photos cropped to non-square stored images: two landscape, two portrait."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, _ = load_sample_images().images                   # 427×640
    return {"china-landscape": china[:, 60:620], "coffee-landscape": skimage.data.coffee(),  # 400×600
            "astronaut-portrait": skimage.data.astronaut()[:, 110:390],                       # 512×280
            "rocket-portrait": skimage.data.rocket()[40:, 200:430]}                           # 387×230


def _png(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(a).save(out, format="PNG", compress_level=0)  # lossless; small files do not matter here
    return out.getvalue()


def _model_input(a: np.ndarray, pre: Preprocess) -> np.ndarray:
    res = decode_image(_png(a), size=pre)
    assert res.ok
    return res.array


def _centres_within(n: int, lo: float, hi: float) -> np.ndarray:
    c = np.arange(n) + 0.5  # pixel centres
    return (c >= lo) & (c <= hi)


def _masked(a: np.ndarray, box, reach: float, value=(255, 0, 255)) -> np.ndarray:
    """``a`` with every pixel whose centre lies outside ``box`` grown by ``reach`` set to ``value``."""
    left, top, right, bottom = box
    keep = np.ix_(_centres_within(a.shape[0], top - reach, bottom + reach),
                  _centres_within(a.shape[1], left - reach, right + reach))
    out = np.empty_like(a)
    out[:] = value
    out[keep] = a[keep]
    return out


def _edge_bands(a: np.ndarray, box, width: float, value=(255, 0, 255)) -> list[np.ndarray]:
    """Four copies of ``a``, each with a band ``width`` stored px wide just inside one edge of ``box`` set to
    ``value``."""
    left, top, right, bottom = box
    rows, cols = _centres_within(a.shape[0], top, bottom), _centres_within(a.shape[1], left, right)
    bands = [(rows, _centres_within(a.shape[1], left, left + width)),
             (rows, _centres_within(a.shape[1], right - width, right)),
             (_centres_within(a.shape[0], top, top + width), cols),
             (_centres_within(a.shape[0], bottom - width, bottom), cols)]
    out = []
    for r, c in bands:
        b = a.copy()
        b[np.ix_(r, c)] = value
        out.append(b)
    return out


def _unit(x: np.ndarray) -> torch.Tensor:
    return decoded_to_unit(torch.tensor(x[None]))


@pytest.mark.parametrize("arch,small,size", [("resnet18", True, 32), ("resnet18", False, 224)])
def test_masking_outside_each_views_box_keeps_its_feature(arch, small, size):
    pre = Preprocess(size)
    torch.manual_seed(0)
    tap = TapModel(build_model(arch, 3, small_input=small).eval())
    map_hw = last_map_hw(arch, 3, small, (size, size))
    for name, a in _photos().items():
        h, w = a.shape[:2]
        assert h != w
        x = _model_input(a, pre)
        with torch.no_grad():
            real = tap(_unit(x)).last_map
        mh, mw = real.shape[2:]
        assert (mh, mw) == map_hw
        crop = pre.crop_box(w, h)
        scale = (crop[2] - crop[0]) / size  # stored px per model-input px
        # Pillow's bilinear filter reaches half an input pixel past a pixel's footprint when shrinking (one
        # stored pixel when enlarging): stored pixels that close to the box still weigh in at its edge.
        reach = max(scale, 1.0) - scale / 2
        cell_h, cell_w = size / mh, size / mw
        for v, view in enumerate(CSD_VIEW_NAMES):
            box = view_box(view, pre, (w, h), (mh, mw))
            r0, r1, c0, c1 = view_cells(view, mh, mw)
            region = (slice(round(r0 * cell_h), round(r1 * cell_h)), slice(round(c0 * cell_w), round(c1 * cell_w)))
            outside = _model_input(_masked(a, box, reach), pre)
            assert np.array_equal(outside[region], x[region]), (name, view)
            # the view's pooled feature on the real model's cell grid (each cell: the mean of its input patch)
            feature = lambda p: csd_views(F.adaptive_avg_pool2d(_unit(p), (mh, mw)))[0, v]  # noqa: E731
            unmasked = feature(x)
            torch.testing.assert_close(feature(outside), unmasked, rtol=0, atol=4 * EPS32)
            for edge, banded in zip(("left", "right", "top", "bottom"), _edge_bands(a, box, 2 * scale)):
                inside = _model_input(banded, pre)
                assert not np.array_equal(inside[region], x[region]), (name, view, edge)
                assert (feature(inside) - unmasked).abs().max() > 1e3 * EPS32, (name, view, edge)
            if view == "global":
                # the real model: nothing outside the crop box (and the filter's reach) changes its map at all
                with torch.no_grad():
                    masked = tap(_unit(outside)).last_map
                torch.testing.assert_close(masked, real, rtol=0, atol=0)
                assert box != (0.0, 0.0, float(w), float(h))  # a centre crop: not the whole photo
