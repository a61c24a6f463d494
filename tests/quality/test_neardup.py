"""Near-duplicates of the calibration set: copies fall under the calibrated distance, distinct ID images
mostly do not."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ood_audit.flagging.neardup import (
    NearDupPart,
    near_duplicate_rows,
    near_duplicate_threshold,
    nearest_distances,
)
from ood_audit.errors import ConfigError, DataError
from ood_audit.io.decode import decode_image
from ood_audit.io.quality import measure
from ood_audit.scores.knn import knn_score_and_neighbours

from tests.quality.photos import jpeg, photos

RATE = 0.01


def _clusters(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    return centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, centres.shape[1]))


def _tolerance(p: float, n_cal: int, n_test: int, z: float = 4.0) -> float:
    """|rate − p| allowed on fresh data: the order statistic's own spread (≈ p(1−p)/n_cal, plus a floor
    bias ≤ 1/n_cal) and the fresh sample's binomial p(1−p)/n_test; z = 4."""
    return z * math.sqrt(p * (1 - p) * (1 / n_cal + 1 / n_test)) + 1 / n_cal


def test_synthetic_copies_are_caught_and_distinct_images_at_the_rate():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    bank, held, fresh = _clusters(3000, rng, centres), _clusters(2000, rng, centres), _clusters(2000, rng, centres)
    part = near_duplicate_threshold(nearest_distances(held, bank)[0], RATE)
    assert part.heldout_images == 2000 and part.rate == RATE
    d_held, _ = nearest_distances(held, bank)
    assert RATE - 1 / 2000 <= np.mean(d_held < part.threshold) <= RATE
    d_fresh, _ = nearest_distances(fresh, bank)
    assert abs(np.mean(d_fresh < part.threshold) - RATE) <= _tolerance(RATE, 2000, 2000)
    src = rng.choice(3000, 300, replace=False)
    copies = bank[src] * 1.7 + 0.002 * rng.normal(size=(300, 32))  # rescaled + jittered: same direction
    d_copy, rows = nearest_distances(copies, bank)
    assert np.array_equal(near_duplicate_rows(d_copy, rows, part.threshold), src)
    assert np.all(near_duplicate_rows(d_fresh, *nearest_distances(fresh, bank)[1:], part.threshold)[
        d_fresh >= part.threshold] == -1)


def test_distance_is_the_reports_nearest_neighbour_distance():
    rng = np.random.default_rng(1)
    bank, q = rng.normal(size=(200, 16)), rng.normal(size=(50, 16))
    d, rows = nearest_distances(q, bank)
    _, ids, near = knn_score_and_neighbours(q, bank, k=5, n_neighbours=3)
    assert np.array_equal(rows, ids[:, 0].numpy())
    np.testing.assert_allclose(d, near[:, 0].numpy(), rtol=1e-6)


def test_leave_one_out_within_the_bank_skips_the_row_itself():
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(100, 8))
    bank[7] = bank[42] * 3.0  # an exact near-duplicate pair (same direction)
    d, rows = nearest_distances(bank, bank, exclude_self=True)
    assert rows[7] == 42 and rows[42] == 7 and d[7] == pytest.approx(0.0, abs=1e-3)
    assert np.all(rows != np.arange(100))
    assert np.all(d[np.setdiff1d(np.arange(100), [7, 42])] > 0.1)
    with pytest.raises(DataError):
        nearest_distances(bank[:1], bank[:1], exclude_self=True)


def test_rate_is_validated_and_the_part_round_trips():
    with pytest.raises(ConfigError):
        near_duplicate_threshold(np.ones(10), 0.0)
    part = near_duplicate_threshold(np.arange(1, 201, dtype=float), 0.01)
    assert part.threshold == 3.0  # ⌊0.01·200⌋+1 = 3rd smallest: exactly 2 of 200 below it
    assert NearDupPart.model_validate_json(part.model_dump_json()) == part


@pytest.mark.timeout(300)
def test_real_features_reencoded_copies_fall_under_the_threshold():
    """The product's feature extractor (untrained ResNet-18, small-input stem, seed 0: the calibration
    tests' model) on real photo tiles: 64 px tiles of the seven sample photos resized to a 512 px shorter
    side, textured ones only (grey entropy ≥ 6 bits: flat sky and backdrop tiles are genuine near-duplicates
    of each other). Half the tiles are the bank, a quarter set τ at ρ = 1 %, a quarter are unrelated ID.
    Copies of bank tiles are JPEG quality 70 re-encodes and 66 → 64 px resizes. Measured at the time of
    writing: 100 % of the 143 copies (re-encodes and resizes alike) under τ and matched to their own bank
    tile, and 2.8 % (2 of 72) of unrelated ID tiles under τ, where 1/(72+1) ≈ 1.4 % is expected."""
    from ood_audit.models import build_model
    from ood_audit.models.taps import TapModel

    t = 64
    tiles = []
    for a in photos().values():
        im = Image.fromarray(a)
        s = 512 / min(im.size)
        arr = np.asarray(im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.Resampling.BILINEAR))
        tiles += [arr[y:y + t, x:x + t] for y in range(0, arr.shape[0] - t + 1, t)
                  for x in range(0, arr.shape[1] - t + 1, t)]
    tiles = np.stack([x for x in tiles if measure(x).entropy >= 6.0])
    assert len(tiles) > 200
    torch.manual_seed(0)
    model = TapModel(build_model("resnet18", 10, small_input=True)).eval()

    def feats(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([model(torch.from_numpy(x[i:i + 128]).permute(0, 3, 1, 2).float() / 255).penultimate
                              for i in range(0, len(x), 128)]).numpy()

    perm = np.random.default_rng(0).permutation(len(tiles))
    bank_i, held_i, test_i = np.array_split(perm, [len(perm) // 2, 3 * len(perm) // 4])
    f = feats(tiles)
    bank = f[bank_i]
    part = near_duplicate_threshold(nearest_distances(f[held_i], bank)[0], RATE)

    def copy(a: np.ndarray, k: int) -> np.ndarray:
        if k % 2 == 0:
            return decode_image(jpeg(a, quality=70)).array
        return np.asarray(Image.fromarray(a).resize((t + 2, t + 2), Image.Resampling.BILINEAR)
                          .resize((t, t), Image.Resampling.BILINEAR))

    copies = np.stack([copy(tiles[j], k) for k, j in enumerate(bank_i)])
    d_copy, rows = nearest_distances(feats(copies), bank)
    caught = near_duplicate_rows(d_copy, rows, part.threshold) == np.arange(len(bank_i))
    assert caught.mean() >= 0.95
    d_test, _ = nearest_distances(f[test_i], bank)
    p = 1 / (len(held_i) + 1)  # τ is the smallest held-out distance here: its expected rate on fresh tiles
    assert np.mean(d_test < part.threshold) <= p + _tolerance(p, len(held_i), len(test_i))
