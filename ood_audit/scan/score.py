"""Scan stage 3: the scoring actor (Ray Data's "callable class" pattern).

The actor loads and verifies the bundle once in ``__init__``
(:func:`~ood_audit.bundle.scorer.scorer_from_bundle`), refusing a bundle whose id is not the one the scan
started with (``bundle_id``: the directory may have been overwritten since), and maps one batch (numpy dict from
:func:`~ood_audit.scan.read.fetch_decode`) to report rows (:class:`~ood_audit.scan.rows.RowBuilder`):
one forward pass per batch gives every score (:class:`~ood_audit.scores.scorer.Scorer`); rows that did not
decode pass through with null scores.

The model runs under the bundle's precision policy on every device (:mod:`ood_audit.models.precision`:
the activations calibration used, so the calibrated ID flag rate holds on CPU and GPU nodes alike); on
CUDA channels_last, with the exact torch kNN backend (SPEC §7: the same neighbours on every backend). The class has no Ray dependency and is used in-process by tests.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from ood_audit.bundle.files import open_bundle
from ood_audit.bundle.scorer import scorer_from_bundle
from ood_audit.errors import DataError
from ood_audit.io.fs import S3Config
from ood_audit.scan.rows import PIXELS, RowBuilder

log = logging.getLogger(__name__)


def resolve_actor_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ScoreActor:
    """Scores batches for one run.

    Args:
        bundle_uri: the audit bundle (loaded once; ``bundle.json`` and every file used are verified).
        run_id: written into every row.
        bundle_id: the id the scan loaded on the driver; a bundle with another id at ``bundle_uri`` is
            refused (``BundleError``), so every row of a run comes from one bundle.
        s3: settings for ``s3://`` bundles.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (decided inside the actor, on its node).
        knn_backend: kNN backend for CSD and kNN (``auto`` = faiss on CPU, torch on CUDA).
        torch_threads: intra-op threads for CPU inference; None: the actor's CPU share in Ray (its
            ``num_cpus`` rounded, at least 1), so actors sharing a node do not oversubscribe its cores;
            torch's default outside Ray.
    """

    def __init__(self, bundle_uri: str, run_id: str, *, bundle_id: str | None = None, s3: S3Config | None = None,
                 device: str = "auto", knn_backend: str = "auto", torch_threads: int | None = None) -> None:
        start = time.perf_counter()
        threads = torch_threads or threads_for_cpus(_assigned_cpus())
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_actor_device(device)
        # Each file is verified as it is read below.
        bundle = open_bundle(bundle_uri, s3=s3, verify=False, expected_id=bundle_id)
        self.scorer = scorer_from_bundle(bundle, device=self.device, knn_backend=knn_backend)
        sources = bundle.bank_sources() if bundle.info.near_duplicates is not None else None
        self.rows = RowBuilder(bundle.info, bundle.id, run_id, self.scorer.score_names,
                               bank_uris=sources.column("uri").to_pylist() if sources is not None else None)
        self.worker = f"{_node_id()}:{os.getpid()}"
        log.info("scoring actor %s ready on %s (%s activations, %d torch threads) in %.1f s (bundle %s)",
                 self.worker, self.device, self.scorer.precision, torch.get_num_threads(),
                 time.perf_counter() - start, bundle.id)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        start = time.perf_counter()
        ok = np.asarray(batch["status"], dtype=object) == "ok"
        pixels = np.asarray(batch[PIXELS])
        scores, failed = self.score_pixels(pixels if ok.all() else pixels[ok]) if ok.any() else (None, {})
        batch = _mark_failed(batch, ok, failed)
        return self.rows.build(batch, scores, score_s=time.perf_counter() - start, worker=self.worker)

    def score_pixels(self, pixels: np.ndarray) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Scores for uint8 ``N×H×W×3`` pixels, and the images that could not be scored (index in ``pixels``
        -> why); the scores hold only the others, in order."""
        with warnings.catch_warnings():  # batches from Ray's object store are read-only; nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)  # NCHW view, channels_last memory
        if self.device.startswith("cuda"):
            x = x.pin_memory().to(self.device, non_blocking=True)
        try:
            return self.scorer(x), {}
        except DataError:
            pass
        # Non-finite features somewhere in the batch: score images one by one so only the culprits fail.
        parts: list[dict[str, np.ndarray]] = []
        failed: dict[int, str] = {}
        for i in range(x.shape[0]):
            try:
                parts.append(self.scorer(x[i:i + 1]))
            except DataError as exc:
                failed[i] = str(exc)
        names = next(iter(parts)).keys() if parts else ()
        return {k: np.concatenate([p[k] for p in parts]) for k in names}, failed


def _mark_failed(batch: dict[str, np.ndarray], ok: np.ndarray, failed: dict[int, str]) -> dict[str, np.ndarray]:
    """Rows whose model output was not finite become ``decode_error`` (their pixels are unusable)."""
    if not failed:
        return batch
    rows = np.flatnonzero(ok)
    status = np.array(batch["status"], dtype=object)
    error = np.array(batch["error"], dtype=object)
    for i, message in failed.items():
        status[rows[i]] = "decode_error"
        error[rows[i]] = f"model output not finite: {message}"[:200]
    log.warning("%d image(s) gave non-finite model output and were marked decode_error", len(failed))
    return {**batch, "status": status, "error": error}


def threads_for_cpus(cpus: float | None) -> int | None:
    """Intra-op threads for an actor granted ``cpus`` CPUs: the share rounded, at least 1 (None: no share)."""
    if cpus is None or cpus <= 0:
        return None
    return max(1, int(cpus + 0.5))


def _assigned_cpus() -> float | None:
    """The CPUs Ray granted this actor, or None outside a Ray worker."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        ctx = ray.get_runtime_context()
        if ctx.worker.mode != ray.WORKER_MODE:
            return None  # the driver: no grant of its own
        return float(ctx.get_assigned_resources().get("CPU", 0.0)) or None
    except Exception:  # noqa: BLE001 - no Ray, or an API this Ray lacks: keep torch's default
        return None


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - the id is informational only
        pass
    return "local"
