"""CSD views and score against an independent loop-based numpy reference (SPEC §7)."""

import math

import numpy as np
import pytest
import torch

from ood_audit.errors import DataError, KnnError
from ood_audit.knn import build_index
from ood_audit.scores.csd import CSD_VIEW_NAMES, csd_bank, csd_score, csd_views

SIZES = [(4, 4), (7, 7), (2, 2), (5, 3), (3, 5), (1, 1), (6, 4)]


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    # The tensors here are tiny: one thread is as fast, and it does not stall in OpenMP barriers
    # when other processes share the CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cell_mean(fmap: np.ndarray, rows: range, cols: range) -> np.ndarray:
    total = np.zeros(fmap.shape[0])
    for r in rows:
        for c in cols:
            total += fmap[:, r, c]
    return total / (len(rows) * len(cols))


def reference_views(maps: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, 6, C] written from the SPEC text, one image and one view at a time."""
    n, c, h, w = maps.shape
    out = np.zeros((n, 6, c))
    for i in range(n):
        views = []
        for qr in (0, 1):  # adaptive pool to 2×2: cell i spans [floor(i·H/2), ceil((i+1)·H/2))
            for qc in (0, 1):
                rows = range(math.floor(qr * h / 2), math.ceil((qr + 1) * h / 2))
                cols = range(math.floor(qc * w / 2), math.ceil((qc + 1) * w / 2))
                views.append(_cell_mean(maps[i], rows, cols))
        views.append(_cell_mean(maps[i], range(h), range(w)))
        ch, cw = math.ceil(h / 2), math.ceil(w / 2)
        r0, c0 = math.floor((h - ch) / 2), math.floor((w - cw) / 2)
        views.append(_cell_mean(maps[i], range(r0, r0 + ch), range(c0, c0 + cw)))
        for v, vec in enumerate(views):
            out[i, v] = vec / (math.sqrt(sum(x * x for x in vec)) + 1e-10)
    return out


def reference_csd(views: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores, deciding = [], []
    for img in views:
        kth = []
        for vec in img:
            dists = sorted(float(((vec - row) ** 2).sum()) for row in bank)
            kth.append(dists[k - 1])
        scores.append(-min(kth))
        deciding.append(int(np.argmin(kth)))
    return np.array(scores), np.array(deciding)


@pytest.mark.parametrize("h, w", SIZES)
def test_views_match_reference(h, w):
    maps = np.random.default_rng(h * 10 + w).standard_normal((3, 5, h, w)).astype(np.float32)
    views = csd_views(torch.from_numpy(maps))
    assert views.shape == (3, 6, 5) and views.dtype == torch.float32
    np.testing.assert_allclose(views.numpy(), reference_views(maps), atol=1e-5)
    assert np.allclose(views.norm(dim=2).numpy(), 1.0, atol=1e-5)


CENTRES = [
    (4, 4, (1, 2), (1, 2)),
    (5, 3, (1, 3), (0, 1)),
    (7, 7, (1, 4), (1, 4)),
    (1, 1, (0, 0), (0, 0)),
]


@pytest.mark.parametrize("h, w, rows, cols", CENTRES)
def test_centre_view_covers_the_spec_cells(h, w, rows, cols):
    """rows/cols are the first and last centre row/column the SPEC text gives for this size."""
    # Channel r·W+c is the indicator of cell (r, c): the centre view is non-zero exactly there.
    maps = torch.eye(h * w).reshape(1, h * w, h, w)
    centre = csd_views(maps)[0, CSD_VIEW_NAMES.index("centre")].reshape(h, w)
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    assert torch.equal(centre > 0, expected)


def test_quadrant_order_is_row_major():
    maps = torch.zeros(1, 4, 4, 4)
    maps[0, 0, :2, :2] = 1  # top-left
    maps[0, 1, :2, 2:] = 1  # top-right
    maps[0, 2, 2:, :2] = 1  # bottom-left
    maps[0, 3, 2:, 2:] = 1  # bottom-right
    quadrants = csd_views(maps)[0, :4]
    assert torch.equal(quadrants.argmax(dim=1), torch.arange(4))
    assert CSD_VIEW_NAMES == ("q00", "q01", "q10", "q11", "global", "centre")


@pytest.mark.parametrize("h, w", [(4, 4), (7, 7)])
@pytest.mark.parametrize("kind", ["faiss", "torch", "index"])
def test_csd_score_matches_reference(h, w, kind):
    rng = np.random.default_rng(h + 100)
    train = rng.standard_normal((30, 8, h, w)).astype(np.float32)
    test = rng.standard_normal((6, 8, h, w)).astype(np.float32)

    bank = csd_bank(torch.from_numpy(part) for part in np.array_split(train, 3))
    ref_bank = reference_views(train).reshape(-1, 8)
    assert bank.shape == (180, 8)
    np.testing.assert_allclose(bank.numpy(), ref_bank, atol=1e-5)

    views = csd_views(torch.from_numpy(test))
    target = build_index(bank, "torch", bank_chunk=50) if kind == "index" else bank
    scores, deciding = csd_score(views, target, k=10, kind="auto" if kind == "index" else kind)
    ref_scores, ref_view = reference_csd(reference_views(test), ref_bank, 10)
    assert scores.dtype == torch.float32 and deciding.dtype == torch.int64
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(deciding.numpy(), ref_view)


@pytest.mark.parametrize("target", range(6))
def test_deciding_view_is_the_nearest_one(target):
    rng = np.random.default_rng(target)
    views = rng.standard_normal((2, 6, 16)).astype(np.float32)
    views /= np.linalg.norm(views, axis=2, keepdims=True)
    # Twelve near-copies of the target view of image 1 make it the only view close to the bank.
    near = views[1, target] + 1e-3 * rng.standard_normal((12, 16)).astype(np.float32)
    far = rng.standard_normal((200, 16)).astype(np.float32)
    bank = np.concatenate([far / np.linalg.norm(far, axis=1, keepdims=True), near])
    scores, deciding = csd_score(torch.from_numpy(views), bank, k=10)
    assert int(deciding[1]) == target
    assert scores[1] > -1e-3 and scores[1] > scores[0]


def test_kth_neighbour_not_mean():
    views = torch.zeros(1, 6, 2)
    views[0, :, 0] = 1.0
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # squared distances 0, 2, 4
    for k, expected in ((1, 0.0), (2, -2.0), (3, -4.0)):
        assert float(csd_score(views, bank, k=k)[0][0]) == pytest.approx(expected, abs=1e-6)


def test_non_finite_features_raise_data_error_naming_the_source():
    maps = torch.randn(3, 4, 4, 4)
    maps[1, 2, 0, 0] = float("nan")
    bank = csd_bank([torch.randn(5, 4, 4, 4)])
    with pytest.raises(DataError, match="layer4"):
        csd_score(csd_views(maps), bank, name="layer4")
    with pytest.raises(DataError, match="csd bank"):
        csd_bank([maps])
    inf_bank = bank.clone()
    inf_bank[0, 0] = float("inf")
    with pytest.raises(DataError, match="csd bank"):
        csd_score(csd_views(maps[:1]), inf_bank)


def test_misuse_errors():
    bank = csd_bank([torch.randn(2, 4, 4, 4)])  # 12 vectors
    views = csd_views(torch.randn(3, 4, 4, 4))
    with pytest.raises(KnnError, match="k=13 is larger than the bank size 12"):
        csd_score(views, bank, k=13)
    with pytest.raises(KnnError, match="query dimension 4 does not match bank dimension 5"):
        csd_score(views, torch.randn(20, 5))
    with pytest.raises(DataError, match=r"\[N, 6, C\]"):
        csd_score(views[:, :5], bank)
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        csd_views(torch.randn(4, 4, 4))
    with pytest.raises(DataError, match="empty"):
        csd_bank([])
