"""Ray Data batch callables for calibration (Ray's "callable class" pattern; also usable in-process).

Each loads the model once in ``__init__`` and maps one batch dict of numpy arrays to another.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..io.decode import Preprocess
from ..io.fs import S3Config
from ..io.reader import load_images
from ..io.thumbs import thumbnail_jpeg
from ..models import ModelSpec, TapModel, block_candidates
from ..scores.csd import csd_views
from ..scores.jigsaw import jigsaw_indexed
from .evidence import block_norms, probe_norms
from .normratio import _EPS
from .scoring import load_state_bytes, make_scorer


def _resolve(obj: Any) -> Any:
    """Ray object refs (large weights/banks put once in the object store) or plain values."""
    try:
        import ray

        if isinstance(obj, ray.ObjectRef):
            return ray.get(obj)
    except ImportError:  # pragma: no cover - ray is a hard dependency, kept for in-process use
        pass
    return obj


def _decode(batch: dict[str, np.ndarray], pre: Preprocess, s3: S3Config | None, threads: int):
    results = load_images([str(u) for u in batch["uri"]], size=pre, s3=s3, threads=threads)
    ok = np.array([r.ok for r in results], dtype=bool)
    status = np.array([r.status for r in results], dtype=object)
    error = np.array([r.error or "" for r in results], dtype=object)
    arrays = [r.array for r in results if r.ok]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0) if arrays else None
    return x, ok, status, error


class BankWorker:
    """Bank/selection phase: per image, NormRatio terms for every candidate block (SPEC §4; only rows with
    ``select``), the six CSD views (SPEC §7), the L2-normalised penultimate vector (SPEC §6) and, for rows
    with ``probe`` (a subset of ``select``), FN at every block of the image and of each pseudo-OOD probe
    (:mod:`ood_audit.calibration.evidence`)."""

    def __init__(self, model: Any, spec: dict, preprocess: dict, *, seed: int = 0, grid: int = 3,
                 probes: tuple[str, ...] = (), s3: S3Config | None = None, device: str = "cpu",
                 threads: int = 8) -> None:
        self.spec = ModelSpec.from_dict(spec)
        m = self.spec.build(load_state_bytes(_resolve(model)))
        self.blocks = block_candidates(m)
        self.tap = TapModel(m, blocks=self.blocks, mean=self.spec.mean, std=self.spec.std).to(device).eval()
        self.pre, self.s3, self.seed, self.grid = Preprocess.from_dict(preprocess), s3, seed, grid
        self.probes = tuple(probes)
        self.device, self.threads = device, threads

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, nb = len(batch["uri"]), len(self.blocks)
        x, ok, status, error = _decode(batch, self.pre, self.s3, self.threads)
        ratios = np.full((n, nb), np.nan, dtype=np.float64)
        fn_id = np.full((n, nb), np.nan, dtype=np.float64)
        fn_probe = np.full((n, len(self.probes) * nb), np.nan, dtype=np.float64)
        views = feats = None
        thumbs = np.full(n, b"", dtype=object)
        if x is not None:
            idx = torch.as_tensor(np.asarray(batch["index"])[ok])
            t = self.tap(x.to(self.device))
            v = csd_views(t.last_map.float()).cpu().numpy()
            f = torch.nn.functional.normalize(t.penultimate.float(), dim=1).cpu().numpy()
            views = np.zeros((n, v.shape[1] * v.shape[2]), np.float32)
            feats = np.zeros((n, f.shape[1]), np.float32)
            views[ok], feats[ok] = v.reshape(v.shape[0], -1), f
            thumbs[ok] = [thumbnail_jpeg(a) for a in x.mul(255).round().byte().permute(0, 2, 3, 1).numpy()]
            sel = np.asarray(batch["select"], dtype=bool)[ok]
            if sel.any():
                s_t = torch.from_numpy(sel)
                xs, ids = x[s_t], idx[s_t]
                tj = self.tap(jigsaw_indexed(xs, ids, self.seed, self.grid).to(self.device))
                num = block_norms({b: z[s_t.to(self.device)] for b, z in t.blocks.items()}, self.blocks).cpu()
                den = block_norms(tj.blocks, self.blocks).cpu()
                rows = np.flatnonzero(ok)[sel]
                ratios[rows] = (num / den.clamp_min(_EPS)).double().numpy()
                pr = np.asarray(batch.get("probe", np.zeros(n, bool)), dtype=bool)[ok][sel]
                if pr.any() and self.probes:
                    p_t = torch.from_numpy(pr)
                    fp = probe_norms(self.tap, xs[p_t], ids[p_t], self.probes, self.seed, device=self.device,
                                     known={"jigsaw": den[p_t]})
                    fn_id[rows[pr]] = num[p_t].double().numpy()
                    fn_probe[rows[pr]] = fp.double().reshape(fp.shape[0], -1).numpy()
        if views is None:
            views, feats = np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32)
        return {"index": np.asarray(batch["index"]), "status": status, "error": error, "ratios": ratios,
                "fn_id": fn_id, "fn_probe": fn_probe, "views": views, "feats": feats,
                "thumb": thumbs, "worker": np.full(n, os.getpid(), dtype=np.int64)}


class NormWorker:
    """FN at every candidate block per image (held-out ID and known outliers for ``--selector validated``)."""

    def __init__(self, model: Any, spec: dict, preprocess: dict, *, s3: S3Config | None = None,
                 device: str = "cpu", threads: int = 8) -> None:
        self.spec = ModelSpec.from_dict(spec)
        m = self.spec.build(load_state_bytes(_resolve(model)))
        self.blocks = block_candidates(m)
        self.tap = TapModel(m, blocks=self.blocks, mean=self.spec.mean, std=self.spec.std).to(device).eval()
        self.pre, self.s3, self.device, self.threads = Preprocess.from_dict(preprocess), s3, device, threads

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        x, ok, status, error = _decode(batch, self.pre, self.s3, self.threads)
        norms = np.full((n, len(self.blocks)), np.nan, dtype=np.float64)
        if x is not None:
            norms[ok] = block_norms(self.tap(x.to(self.device)).blocks, self.blocks).double().cpu().numpy()
        return {"index": np.asarray(batch["index"]), "status": status, "error": error, "norms": norms}


class ScoreWorker:
    """Held-out phase: every score of every image, against the finished banks (SPEC §10 thresholds)."""

    def __init__(self, model: Any, spec: dict, preprocess: dict, block: str, *, csd_bank: Any, knn_bank: Any,
                 k_csd: int, k_knn: int, s3: S3Config | None = None, device: str = "cpu",
                 knn_backend: str = "auto", threads: int = 8) -> None:
        self.scorer = make_scorer(load_state_bytes(_resolve(model)), ModelSpec.from_dict(spec), block,
                                  csd_bank=torch.as_tensor(_resolve(csd_bank)),
                                  knn_bank=torch.as_tensor(_resolve(knn_bank)), k_csd=k_csd, k_knn=k_knn,
                                  device=device, knn_backend=knn_backend)
        self.pre, self.s3, self.threads = Preprocess.from_dict(preprocess), s3, threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        x, ok, status, error = _decode(batch, self.pre, self.s3, self.threads)
        out: dict[str, np.ndarray] = {"index": np.asarray(batch["index"]), "status": status, "error": error}
        names = self.scorer.score_names
        for s in names:
            out[s] = np.full(n, np.nan, dtype=np.float64)
        if x is not None:
            scores = self.scorer(x)
            for s in names:
                out[s][ok] = scores[s]
        return out
