"""kNN backends: exact agreement with brute force, chunk merging, factory, errors (SPEC §6, §7)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_audit.errors import DataError, KnnError
from ood_audit.knn import (
    FaissFlatIndex,
    KnnIndex,
    TorchFlatIndex,
    build_index,
    faiss_gpu_available,
    make_index,
)

K = 5


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    # The tensors here are tiny: one thread is as fast, and it does not stall in OpenMP barriers
    # when other processes share the CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
EXACT = [
    pytest.param("faiss", {}, id="faiss-cpu"),
    pytest.param("torch", {}, id="torch-default-chunks"),
    # Chunks smaller than k and not dividing the bank exercise the top-k merge across chunks.
    pytest.param("torch", {"query_chunk": 7, "bank_chunk": 3}, id="torch-tiny-chunks"),
    pytest.param("torch", {"query_chunk": 16, "bank_chunk": 97}, id="torch-small-chunks"),
    pytest.param("auto", {}, id="auto"),
    pytest.param(
        "faiss-gpu",
        {"device": "cuda"},
        id="faiss-gpu",
        marks=pytest.mark.skipif(not faiss_gpu_available(), reason="faiss has no GPU support"),
    ),
    pytest.param(
        "torch",
        {"device": "cuda", "bank_chunk": 97},
        id="torch-cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


def brute_force(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 in float64 by direct differences, sorted nearest first."""
    b, q = bank.astype(np.float64), queries.astype(np.float64)
    d = ((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (
        rng.standard_normal((1000, 24)).astype(np.float32),
        rng.standard_normal((40, 24)).astype(np.float32),
    )


def _make(kind: str, params: dict) -> KnnIndex:
    params = dict(params)
    return make_index(kind, device=params.pop("device", "cpu"), **params)


@pytest.mark.parametrize("kind, params", EXACT)
def test_exact_backends_match_brute_force(kind, params, data):
    bank, queries = data
    ref_d, ref_i = brute_force(bank, queries, K)
    d, i = _make(kind, params).add(bank).search(torch.from_numpy(queries), K)
    assert d.dtype == torch.float32 and i.dtype == torch.int64 and d.shape == (40, K)
    np.testing.assert_array_equal(i.cpu().numpy(), ref_i)
    np.testing.assert_allclose(d.cpu().numpy(), ref_d, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind, params", EXACT)
def test_adding_in_parts_keeps_global_row_numbers(kind, params, data):
    bank, queries = data
    index = _make(kind, params)
    for part in np.array_split(bank, [1, 400, 401]):
        index.add(part)
    assert index.ntotal == len(index) == 1000 and index.dim == 24
    _, ref_i = brute_force(bank, queries, K)
    np.testing.assert_array_equal(index.search(queries, K)[1].cpu().numpy(), ref_i)


def test_exact_backends_agree_on_kth_distance_of_normalised_vectors():
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((3000, 64)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = bank[:25] + 0.01 * rng.standard_normal((25, 64)).astype(np.float32)
    kth = [
        build_index(bank, kind, **p).search(queries, 10)[0][:, -1].cpu().numpy()
        for kind, p in (("faiss", {}), ("torch", {"bank_chunk": 256, "query_chunk": 8}))
    ]
    np.testing.assert_allclose(kth[0], kth[1], atol=1e-5)


def test_self_match_distance_is_clamped_at_zero():
    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32) * 100
    for kind in ("faiss", "torch"):
        d, i = build_index(x, kind).search(x, 1)
        assert (d >= 0).all() and d.max() < 1e-1
        np.testing.assert_array_equal(i[:, 0].cpu().numpy(), np.arange(50))


def test_accepts_float16_and_float64_input(data):
    bank, queries = data
    ref = build_index(bank, "torch").search(queries, K)[0]
    d64 = build_index(bank.astype(np.float64), "faiss").search(queries.astype(np.float64), K)[0]
    np.testing.assert_allclose(d64.numpy(), ref.numpy(), rtol=1e-5, atol=1e-4)
    d16 = build_index(torch.from_numpy(bank).half(), "torch").search(queries, K)[0]
    assert d16.dtype == torch.float32


def test_empty_queries_give_empty_results(data):
    bank, _ = data
    for kind in ("faiss", "torch"):
        d, i = build_index(bank, kind).search(np.zeros((0, 24), np.float32), K)
        assert d.shape == (0, K) and i.shape == (0, K)


def test_auto_picks_an_exact_backend_and_describe_records_it():
    index = make_index("auto")
    assert isinstance(index, FaissFlatIndex)
    assert index.describe()["type"] == "flat" and index.describe()["backend"] == "faiss-cpu"
    t = make_index("torch", query_chunk=5, bank_chunk=9)
    assert isinstance(t, TorchFlatIndex)
    assert t.describe() == {
        "type": "flat",
        "backend": "torch",
        "device": "cpu",
        "metric": "l2sq",
        "dim": None,
        "ntotal": 0,
        "query_chunk": 5,
        "bank_chunk": 9,
    }


def test_errors_are_typed_and_name_the_problem(data):
    bank, queries = data
    for kind in ("faiss", "torch"):
        empty = make_index(kind)
        with pytest.raises(KnnError, match="empty bank"):
            empty.search(queries, 1)
        index = build_index(bank, kind)
        with pytest.raises(KnnError, match=r"query dimension 23 .* bank dimension 24"):
            index.search(queries[:, :23], 1)
        with pytest.raises(KnnError, match=r"k=1001 is larger than the bank size 1000"):
            index.search(queries, 1001)
        for bad_k in (0, -3, 2.5):
            with pytest.raises(KnnError, match="positive integer"):
                index.search(queries, bad_k)
        with pytest.raises(KnnError, match="bank has dimension 8 .* dimension 24"):
            index.add(bank[:, :8])
        with pytest.raises(KnnError, match="2-D"):
            index.search(queries[0], 1)
        nan_queries = queries.copy()
        nan_queries[3, 5] = np.nan
        with pytest.raises(DataError, match=r"queries: 1 of 40 rows .*\(first bad row: 3\)"):
            index.search(nan_queries, 1)
        inf_bank = bank[:10].copy()
        inf_bank[2, 0] = np.inf
        with pytest.raises(DataError, match="bank"):
            make_index(kind).add(inf_bank)


def test_factory_rejects_unknown_kinds_devices_and_parameters():
    with pytest.raises(KnnError, match="unknown index kind 'annoy'"):
        make_index("annoy")
    with pytest.raises(KnnError, match="faiss-gpu"):
        make_index("faiss", device="cuda")
    with pytest.raises(KnnError, match="needs a CUDA device"):
        make_index("faiss-gpu", device="cpu")
    with pytest.raises(KnnError, match="bad parameters"):
        make_index("torch", nprobe=3)
    with pytest.raises(KnnError, match="bank_chunk"):
        make_index("torch", bank_chunk=0)


def test_importing_the_library_does_not_import_faiss():
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, ood_audit.knn, ood_audit.scores.csd, ood_audit.scores.knn; "
        "assert 'faiss' not in sys.modules, 'faiss imported at module import time'"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, env=env)
