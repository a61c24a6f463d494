"""Ray Data batch callables for calibration (Ray's "callable class" pattern; also usable in-process).

Each loads the model once in ``__init__`` and maps one batch dict of numpy arrays to another.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ood_audit.io.fs import S3Config
from ood_audit.io.quality import QualityConfig, measure
from ood_audit.io.reader import load_images
from ood_audit.io.thumbs import thumbnail_jpeg
from ood_audit.models import ModelSpec, TapModel, block_candidates
from ood_audit.preprocess import DEFAULT_WORKING_SIZE, Preprocess, decoded_to_unit
from ood_audit.scores.detectors import Features, make_detectors
from ood_audit.scores.jigsaw import jigsaw_indexed
from ood_audit.calibration.evidence import block_norms, probe_norms
from ood_audit.calibration.normratio import paired_ratios
from ood_audit.bundle.scorer import load_state_bytes, make_scorer, restore_detectors


def _resolve(obj: Any) -> Any:
    """Ray object refs (large weights/banks put once in the object store) or plain values."""
    try:
        import ray

        if isinstance(obj, ray.ObjectRef):
            return ray.get(obj)
    except ImportError:  # pragma: no cover - ray is a hard dependency, kept for in-process use
        pass
    return obj


def _decode(batch: dict[str, np.ndarray], pre: Preprocess, s3: S3Config | None, threads: int,
            working_size: int | None = None):
    """(model input in [0, 1] or None, ok, status, error, the ok rows' decoded uint8 arrays, and their SPEC §14
    working copies when ``working_size``).

    The model input does not depend on ``working_size`` (:mod:`ood_audit.io.decode`), so every phase, and
    the scan, feed the model the same pixels."""
    results = load_images([str(u) for u in batch["uri"]], size=pre, s3=s3, threads=threads,
                          working_size=working_size)
    ok = np.array([r.ok for r in results], dtype=bool)
    status = np.array([r.status for r in results], dtype=object)
    error = np.array([r.error or "" for r in results], dtype=object)
    arrays = [r.array for r in results if r.ok]
    x = decoded_to_unit(torch.from_numpy(np.stack(arrays))) if arrays else None
    return x, ok, status, error, arrays, [r.working for r in results if r.ok]


def _tap(model: Any, spec: dict, pre: Preprocess, device: str, precision: str) -> TapModel:
    """The model tapping every candidate block, normalising as ``pre`` says, under the bundle's precision policy."""
    m = ModelSpec.from_dict(spec).build(load_state_bytes(_resolve(model)))
    return TapModel(m, blocks=block_candidates(m), mean=pre.mean, std=pre.std, precision=precision).to(device).eval()


class BankWorker:
    """Bank/selection phase: per image, NormRatio terms for every candidate block (SPEC §4; only rows with
    ``select``), the CSD and kNN detectors' fit rows (the six CSD views, SPEC §7; the L2-normalised
    penultimate vector, SPEC §6) and, for rows with ``evidence`` (a subset of ``select``), FN at every
    block of the image and of each pseudo-OOD probe (:mod:`ood_audit.calibration.evidence`)."""

    def __init__(self, model: Any, spec: dict, preprocess: Preprocess | dict, *, seed: int = 0, grid: int = 3,
                 probes: tuple[str, ...] = (), s3: S3Config | None = None, device: str = "cpu",
                 precision: str = "float32", threads: int = 8) -> None:
        self.pre, self.s3, self.seed, self.grid = Preprocess.from_dict(preprocess), s3, seed, grid
        self.tap = _tap(model, spec, self.pre, device, precision)
        self.blocks = list(self.tap.blocks)
        self.banks = make_detectors(("csd", "knn"), block=self.blocks[-1])
        self.probes = tuple(probes)
        self.device, self.threads = device, threads

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, nb = len(batch["uri"]), len(self.blocks)
        x, ok, status, error, arrays, _ = _decode(batch, self.pre, self.s3, self.threads)
        ratios = np.full((n, nb), np.nan, dtype=np.float64)
        fn_id = np.full((n, nb), np.nan, dtype=np.float64)
        fn_probe = np.full((n, len(self.probes) * nb), np.nan, dtype=np.float64)
        views = feats = None
        thumbs = np.full(n, b"", dtype=object)
        if x is not None:
            idx = torch.as_tensor(np.asarray(batch["index"])[ok])
            t = self.tap(x.to(self.device))
            feat = Features(t, self.tap.head)
            v, f = self.banks["csd"].fit_rows(feat), self.banks["knn"].fit_rows(feat)
            views = np.zeros((n, v.shape[1]), np.float32)
            feats = np.zeros((n, f.shape[1]), np.float32)
            views[ok], feats[ok] = v, f
            thumbs[ok] = [thumbnail_jpeg(a) for a in arrays]
            sel = np.asarray(batch["select"], dtype=bool)[ok]
            if sel.any():
                s_t = torch.from_numpy(sel)
                xs, ids = x[s_t], idx[s_t]
                tj = self.tap(jigsaw_indexed(xs, ids, self.seed, self.grid).to(self.device))
                num = block_norms({b: z[s_t.to(self.device)] for b, z in t.blocks.items()}, self.blocks).cpu()
                den = block_norms(tj.blocks, self.blocks).cpu()
                rows = np.flatnonzero(ok)[sel]
                ratios[rows] = paired_ratios(num, den).double().numpy()
                pr = np.asarray(batch.get("evidence", np.zeros(n, bool)), dtype=bool)[ok][sel]
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

    def __init__(self, model: Any, spec: dict, preprocess: Preprocess | dict, *, s3: S3Config | None = None,
                 device: str = "cpu", precision: str = "float32", threads: int = 8) -> None:
        self.pre, self.s3, self.device, self.threads = Preprocess.from_dict(preprocess), s3, device, threads
        self.tap = _tap(model, spec, self.pre, device, precision)
        self.blocks = list(self.tap.blocks)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        x, ok, status, error, _, _ = _decode(batch, self.pre, self.s3, self.threads)
        norms = np.full((n, len(self.blocks)), np.nan, dtype=np.float64)
        if x is not None:
            norms[ok] = block_norms(self.tap(x.to(self.device)).blocks, self.blocks).double().cpu().numpy()
        return {"index": np.asarray(batch["index"]), "status": status, "error": error, "norms": norms}


class ScoreWorker:
    """Held-out phase (and ``evaluate``'s test sets): every score of every image through the fitted
    detectors, restored from their ``state`` (``states``: name -> its bundle part; ``banks``: name -> bank
    array or object ref).

    Besides the scores: ``pred_class``; ``nn_dist``, the L2 distance to the nearest kNN-bank vector (with a
    kNN detector; :mod:`~ood_audit.flagging.neardup`); and the SPEC §14 measures calibration records
    (:func:`~ood_audit.io.quality.measure`): ``laplacian_var``, the Laplacian variance, and ``grayscale``,
    1.0 where the image is grey by the SPEC test, of the decoder's working copy of the whole image
    (``working_size``, 256 px by default), the copy the scan's read task measures too: not of the model's
    crop, whose size depends on the bundle. Not ``labelled`` (SPEC §16): no logit score, ``pred_class`` NaN."""

    def __init__(self, model: Any, spec: dict, preprocess: Preprocess | dict, block: str, *, states: dict[str, Any],
                 banks: dict[str, Any], s3: S3Config | None = None, device: str = "cpu", precision: str = "float32",
                 knn_backend: str = "auto", threads: int = 8, working_size: int = DEFAULT_WORKING_SIZE,
                 labelled: bool = True) -> None:
        dets = restore_detectors(block, states, {k: {t: _resolve(v) for t, v in ts.items()} for k, ts in banks.items()},
                                 device=device,
                                 knn_backend=knn_backend, labelled=labelled)
        self.scorer = make_scorer(load_state_bytes(_resolve(model)), ModelSpec.from_dict(spec), block,
                                  detectors=dets, device=device, precision=precision, labelled=labelled)
        self.labelled = labelled
        self.pre, self.s3, self.threads = Preprocess.from_dict(preprocess), s3, threads
        self.working_size, self.quality = working_size, QualityConfig(working_size=working_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        x, ok, status, error, _, working = _decode(batch, self.pre, self.s3, self.threads, self.working_size)
        out: dict[str, np.ndarray] = {"index": np.asarray(batch["index"]), "status": status, "error": error}
        names = [*self.scorer.score_names, *(["csd_view"] if "csd" in self.scorer.score_names else [])]
        for s in [*names, "pred_class", "nn_dist", "laplacian_var", "grayscale"]:
            out[s] = np.full(n, np.nan, dtype=np.float64)
        if x is not None:
            scores = self.scorer(x)
            for s in [*names, *(["pred_class"] if self.labelled else [])]:  # unlabelled: stays NaN, no class
                out[s][ok] = scores[s]
            if "knn_nn_dist" in scores:
                out["nn_dist"][ok] = np.asarray(scores["knn_nn_dist"])[:, 0]
            measures = [measure(a, config=self.quality) for a in working]
            out["laplacian_var"][ok] = [m.laplacian_var for m in measures]
            out["grayscale"][ok] = [float(m.is_grayscale(self.quality)) for m in measures]
        return out
