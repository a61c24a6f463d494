"""Global kNN score against a numpy reference (SPEC §6)."""

import numpy as np
import pytest
import torch

from ood_audit.errors import DataError, KnnError
from ood_audit.scores.knn import knn_index, knn_score, l2_normalize


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    # The tensors here are tiny: one thread is as fast, and it does not stall in OpenMP barriers
    # when other processes share the CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_knn(feats: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    z = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for row in z:
        dists = np.sort(np.sqrt(((row - b) ** 2).sum(axis=1)))
        out.append(-dists[k - 1])
    return np.array(out)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    # Raw, un-normalised, mostly positive features like pooled post-ReLU activations.
    bank = np.abs(rng.standard_normal((400, 32))) * rng.uniform(0.5, 5.0, (400, 1))
    feats = np.abs(rng.standard_normal((25, 32))) * 3.0
    feats[:5] = bank[:5] * 7.0  # same direction as bank rows: distance 0 to the 1st neighbour
    return feats.astype(np.float32), bank.astype(np.float32)


@pytest.mark.parametrize("kind", ["faiss", "torch"])
@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_score_matches_reference(data, kind, k):
    feats, bank = data
    scores = knn_score(torch.from_numpy(feats), bank, k=k, kind=kind)
    assert scores.shape == (25,) and scores.dtype == torch.float32
    expected = reference_knn(feats, bank, k)
    # Squared distances are exact to float32 rounding; the square root amplifies that rounding
    # near 0 (a query on top of a bank vector), so the distances themselves get sqrt(eps).
    np.testing.assert_allclose(scores.numpy() ** 2, expected**2, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-3)
    assert (scores <= 0).all()


def test_default_k_is_50_and_prebuilt_index_gives_the_same_scores(data):
    feats, bank = data
    expected = reference_knn(feats, bank, 50)
    np.testing.assert_allclose(knn_score(feats, bank).numpy(), expected, atol=1e-5)
    index = knn_index(bank, kind="torch")
    np.testing.assert_allclose(knn_score(feats, index).numpy(), expected, atol=1e-5)


def test_normalisation_is_idempotent(data):
    feats, bank = data
    once = l2_normalize(bank)
    np.testing.assert_allclose(l2_normalize(once).numpy(), once.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        knn_score(l2_normalize(feats), once, k=3).numpy(),
        knn_score(feats, bank, k=3).numpy(),
        atol=1e-6,
    )


def test_higher_means_in_distribution(data):
    feats, bank = data
    scores = knn_score(feats, bank, k=1)
    assert scores[:5].min() > scores[5:].max()
    assert scores[:5].abs().max() < 1e-3  # distance 0 to the bank row it duplicates


def test_non_finite_features_raise_data_error_naming_the_source(data):
    feats, bank = data
    for bad in (np.nan, np.inf, -np.inf):
        broken = feats.copy()
        broken[4, 1] = bad
        with pytest.raises(DataError, match=r"avgpool: 1 of 25 rows .*\(first bad row: 4\)"):
            knn_score(broken, bank, k=3, name="avgpool")
    broken_bank = bank.copy()
    broken_bank[9, 0] = np.nan
    with pytest.raises(DataError, match="avgpool bank"):
        knn_score(feats, broken_bank, k=3, name="avgpool")


def test_misuse_errors(data):
    feats, bank = data
    with pytest.raises(KnnError, match="k=401 is larger than the bank size 400"):
        knn_score(feats, bank, k=401)
    with pytest.raises(KnnError, match="query dimension 31 does not match bank dimension 32"):
        knn_score(feats[:, :31], bank, k=3)
    with pytest.raises(DataError, match=r"\[N, C\]"):
        knn_score(feats[0], bank, k=3)


def test_neighbours_match_brute_force_and_the_score():
    from ood_audit.scores.knn import knn_score_and_neighbours

    rng = np.random.default_rng(5)
    bank, q = rng.normal(size=(200, 16)), rng.normal(size=(7, 16))
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = np.sqrt(((qn[:, None, :] - bn[None]) ** 2).sum(-1))
    order = np.argsort(d, axis=1)
    score, ids, dist = knn_score_and_neighbours(torch.from_numpy(q), torch.from_numpy(bank), k=10, n_neighbours=3)
    np.testing.assert_array_equal(ids.numpy(), order[:, :3])
    np.testing.assert_allclose(dist.numpy(), np.take_along_axis(d, order[:, :3], 1), atol=1e-5)
    np.testing.assert_allclose(score.numpy(), -np.take_along_axis(d, order[:, 9:10], 1)[:, 0], atol=1e-5)
