"""All per-image scores from one forward pass (SPEC §2, §5–7, §11). Used by evaluate, calibrate and scan.

Every score is oriented higher = more in-distribution.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..models import TapModel
from .baselines import energy, energy_fn, maxlogit, msp, msp_fn
from .featurenorm import feature_norm, feature_norm_two_sided

LOGIT_SCORES = ("msp", "energy", "maxlogit", "msp+fn", "energy+fn")
NEAREST_NEIGHBOURS = 3  # kNN-bank rows recorded per image for explanations (SPEC §13)


def _finite(t: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).flatten(1).any(1).sum()) if t.dim() > 1 else int((~torch.isfinite(t)).sum())
        raise DataError(f"non-finite values (NaN/inf) in {name} for {bad} image(s); check the input and weights")
    return t


class Scorer:
    """Score pixel batches with FeatureNorm at the selected block, CSD, kNN and logit baselines.

    ``csd_index`` / ``knn_index`` are built kNN indexes (see :mod:`ood_audit.knn`); a score whose index
    is ``None`` is left out. ``featurenorm2`` is the (center, scale) of held-out ID log FeatureNorm at
    ``block`` (:func:`~ood_audit.scores.featurenorm.two_sided_stats`); without it the two-sided score is
    left out. The wrapped :class:`TapModel` must tap ``block``.
    """

    def __init__(self, tap: TapModel, block: str, *, csd_index: Any = None, knn_index: Any = None,
                 k_csd: int = 10, k_knn: int = 50, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None,
                 featurenorm2: tuple[float, float] | None = None) -> None:
        if block not in tap.blocks:
            raise ValueError(f"TapModel does not tap the selected block {block!r}")
        self.tap, self.block = tap.eval().to(device), block
        self.csd_index, self.knn_index = csd_index, knn_index
        self.k_csd, self.k_knn = k_csd, k_knn
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.featurenorm2 = (float(featurenorm2[0]), float(featurenorm2[1])) if featurenorm2 is not None else None

    @property
    def score_names(self) -> list[str]:
        names = ["featurenorm", *(["featurenorm2"] if self.featurenorm2 is not None else []), *LOGIT_SCORES]
        if self.csd_index is not None:
            names.append("csd")
        if self.knn_index is not None:
            names.append("knn")
        return names

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """pixels: [N,3,H,W] float in [0,1] or uint8. Returns score arrays [N] plus ``csd_view``, ``pred_class`` and, with
        a kNN index, ``knn_nn`` / ``knn_nn_dist`` [N, 3]: the nearest bank rows and their distances."""
        x = pixels.to(self.device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.autocast_dtype is not None and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                t = self.tap(x)
        else:
            t = self.tap(x)
        logits = _finite(t.logits.float(), "logits")
        pen = _finite(t.penultimate.float(), "penultimate features")
        fn = _finite(feature_norm(t.blocks[self.block]), f"block {self.block}")
        head = self.tap.head
        out: dict[str, torch.Tensor] = {
            "featurenorm": fn,
            "msp": msp(logits),
            "energy": energy(logits),
            "maxlogit": maxlogit(logits),
            "msp+fn": msp_fn(pen, fn, head.weight, head.bias),
            "energy+fn": energy_fn(pen, fn, head.weight, head.bias),
            "pred_class": logits.argmax(1),
        }
        if self.featurenorm2 is not None:
            out["featurenorm2"] = feature_norm_two_sided(fn, *self.featurenorm2)
        if self.csd_index is not None:
            from .csd import csd_score, csd_views

            views = csd_views(_finite(t.last_map.float(), "last-stage map"))
            out["csd"], out["csd_view"] = csd_score(views, self.csd_index, k=self.k_csd)
        if self.knn_index is not None:
            from .knn import knn_score_and_neighbours

            out["knn"], out["knn_nn"], out["knn_nn_dist"] = knn_score_and_neighbours(
                pen, self.knn_index, k=self.k_knn, n_neighbours=min(NEAREST_NEIGHBOURS, len(self.knn_index)))
        return {k: torch.as_tensor(v).cpu().numpy() for k, v in out.items()}

    @torch.no_grad()
    def bank_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CSD views [N,6,C], L2-normalised penultimate [N,D]) for building the ID banks (SPEC §6–7)."""
        from .csd import csd_views

        x = pixels.to(self.device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        t = self.tap(x)
        pen = _finite(t.penultimate.float(), "penultimate features")
        views = csd_views(_finite(t.last_map.float(), "last-stage map"))
        return views.cpu(), torch.nn.functional.normalize(pen, dim=1).cpu()
