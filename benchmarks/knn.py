"""Benchmark: exact kNN and CSD search (SPEC §6, §7) against pytorch-ood's KNN detector.

    PYTHONPATH=. python benchmarks/knn.py                      # full size: 300,000 x 512 bank
    PYTHONPATH=. python benchmarks/knn.py --bank 20000 --queries 300    # quick run

The bank is random clustered vectors, L2-normalised (stand-ins for 6 views x 50k images, or 300k
pooled features). kNN uses ``--queries`` query vectors; CSD uses ``--queries // 6`` images x 6
views. Half the queries are drawn near bank clusters (ID-like), half uniformly on the sphere (OOD-like).

Every method gets the same vectors and the same k. pytorch-ood's ``KNN`` (sklearn
``NearestNeighbors``, exact brute force) is the reference; it is optional (``pip install
pytorch-ood``) and its rows print "skipped" without it. All times are wall-clock seconds measured in
this one run; "speed-up" is pytorch-ood's search time divided by ours.
"""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from ood_audit.knn import faiss_available
from ood_audit.scores.csd import csd_score
from ood_audit.scores.knn import knn_index, knn_score


def clustered_unit_vectors(
    rng: np.random.Generator, centres: np.ndarray, n: int, spread: float, chunk: int = 50_000
) -> np.ndarray:
    """n unit vectors, each a random centre plus Gaussian noise, written chunk by chunk."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        picks = rng.integers(0, len(centres), stop - start)
        noise = rng.standard_normal((stop - start, centres.shape[1]), dtype=np.float32)
        block = centres[picks] + noise * (spread / np.sqrt(centres.shape[1]))
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[object, float]:
    """Result of the last call and the best wall-clock time over ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def pytorch_ood_knn(k: int):
    """pytorch-ood's KNN detector with feature normalisation on, or None when not installed."""
    try:
        from pytorch_ood.detector import KNN
    except ImportError:
        return None
    params = inspect.signature(KNN.__init__).parameters
    flag = "norm_features" if "norm_features" in params else "normalize"
    return KNN(None, k=k, **{flag: True})


def our_methods(device: str) -> list[tuple[str, str, dict]]:
    methods = []
    if faiss_available():
        methods.append(("ours, faiss-cpu IndexFlatL2", "faiss", {}))
    label = f"ours, torch {device} (chunked GEMM)"
    methods.append((label, "torch", {"device": device}))
    return methods


def time_ours(args, label, kind, params, bank, knn_queries, csd_views_q, rows) -> tuple:
    index, build_s = timed(partial(knn_index, bank, kind=kind, **params))
    knn_score(knn_queries[:8], index, k=args.k)  # warm-up: thread pools, first-call costs
    knn_out, knn_s = timed(partial(knn_score, knn_queries, index, k=args.k), args.repeat)
    csd_out, csd_s = timed(partial(csd_score, csd_views_q, index, k=args.csd_k), args.repeat)
    rows.append(("kNN", label, build_s, knn_s, knn_out.cpu().numpy()))
    rows.append(("CSD", label, build_s, csd_s, csd_out[0].cpu().numpy()))
    return knn_out.cpu().numpy(), csd_out[0].cpu().numpy(), csd_out[1].cpu().numpy()


def run_ours(args, bank, knn_queries, csd_views_q, rows: list) -> dict:
    """Each backend's index is built, timed and dropped before the next, so memory stays flat."""
    return {
        label: time_ours(args, label, kind, params, bank, knn_queries, csd_views_q, rows)
        for label, kind, params in our_methods(args.device)
    }


def time_pytorch_ood(args, task, k, bank_t, labels, queries, rows) -> np.ndarray:
    detector = pytorch_ood_knn(k)
    _, fit_s = timed(partial(detector.fit_features, bank_t, labels))
    detector.predict_features(torch.from_numpy(queries[:8]))  # warm-up
    query_t = torch.from_numpy(queries)
    dist, search_s = timed(partial(detector.predict_features, query_t), args.repeat)
    dist = dist.double().numpy()
    rows.append((task, "pytorch-ood KNN (sklearn brute force)", fit_s, search_s, None))
    return dist


def run_pytorch_ood(args, bank, knn_queries, csd_views_q, rows: list) -> dict | None:
    """pytorch-ood's outlier score is the k-th L2 distance; orient it like ours (higher = ID)."""
    if pytorch_ood_knn(args.k) is None:
        return None
    bank_t = torch.from_numpy(bank)
    labels = torch.zeros(len(bank), dtype=torch.long)
    knn_dist = time_pytorch_ood(args, "kNN", args.k, bank_t, labels, knn_queries, rows)
    flat_views = csd_views_q.reshape(-1, bank.shape[1])
    csd_dist = time_pytorch_ood(args, "CSD", args.csd_k, bank_t, labels, flat_views, rows)
    squared = (csd_dist**2).reshape(-1, 6)
    return {"kNN": -knn_dist, "CSD": -squared.min(axis=1), "csd_view": squared.argmin(axis=1)}


def print_table(args, rows, reference, rss_ours, rss_all, n_csd_images) -> None:
    print(
        f"bank {args.bank:,} x {args.dim} float32 (clustered, L2-normalised); "
        f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, device {args.device}, "
        f"best of {args.repeat} search timing(s)"
    )
    print(f"kNN: {args.queries:,} query vectors, k={args.k}, score = -(L2 distance to k-th NN)")
    print(
        f"CSD: {n_csd_images:,} images x 6 views = {6 * n_csd_images:,} query vectors, "
        f"k={args.csd_k}, score = -min_v(squared L2 to k-th NN)"
    )
    header = (
        f"{'task':<5} {'method':<40} {'build s':>8} {'search s':>9} {'total s':>8} "
        f"{'speed-up':>9} {'max|Δ score| vs pytorch-ood':>28}"
    )
    print(header)
    print("-" * len(header))
    for task in ("kNN", "CSD"):
        ref_search = next((s for t, m, _, s, _ in rows if t == task and "pytorch" in m), None)
        for t, method, build_s, search_s, score in rows:
            if t != task:
                continue
            mine = "pytorch" not in method
            speed = f"{ref_search / search_s:8.1f}x" if ref_search and mine else "       --"
            diff = (
                f"{np.abs(score.astype(np.float64) - reference[task]).max():.2e}"
                if reference is not None and mine
                else "--"
            )
            print(
                f"{t:<5} {method:<40} {build_s:8.2f} {search_s:9.2f} {build_s + search_s:8.2f} "
                f"{speed} {diff:>28}"
            )
        if reference is None:
            print(f"{task:<5} {'pytorch-ood KNN':<40} skipped (pip install pytorch-ood)")
    print(f"peak RSS: {rss_ours:.2f} GB after our backends; {rss_all:.2f} GB at the end")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=300_000, help="bank vectors (6 x images)")
    parser.add_argument("--queries", type=int, default=2_000, help="kNN query vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50, help="k for the global kNN score")
    parser.add_argument("--csd-k", type=int, default=10, help="k for CSD")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="device of the torch backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="searches timed; the best counts")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bank = clustered_unit_vectors(rng, centres, args.bank, spread=1.0)
    near = clustered_unit_vectors(rng, centres, args.queries - args.queries // 2, spread=1.0)
    far = rng.standard_normal((args.queries // 2, args.dim), dtype=np.float32)
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    knn_queries = np.concatenate([near, far])
    n_csd_images = args.queries // 6
    csd_views_q = torch.from_numpy(knn_queries[: 6 * n_csd_images].reshape(n_csd_images, 6, -1))

    rows: list = []
    ours = run_ours(args, bank, torch.from_numpy(knn_queries), csd_views_q, rows)
    rss_ours = peak_rss_gb()
    reference = run_pytorch_ood(args, bank, knn_queries, csd_views_q.numpy(), rows)
    print_table(args, rows, reference, rss_ours, peak_rss_gb(), n_csd_images)
    if reference is not None:
        for label, (_, _, view) in ours.items():
            agree = (view == reference["csd_view"]).mean()
            print(f"csd_view agreement with pytorch-ood, {label}: {agree:.4f}")
    if len(ours) > 1:
        a, b = list(ours.values())[:2]
        print(
            f"ours faiss vs torch: max|Δ knn| {np.abs(a[0] - b[0]).max():.2e}, "
            f"max|Δ csd| {np.abs(a[1] - b[1]).max():.2e}, csd_view agreement "
            f"{(a[2] == b[2]).mean():.4f}"
        )


if __name__ == "__main__":
    main()
