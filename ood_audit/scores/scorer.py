"""All per-image scores from one forward pass (SPEC §2, §5–7, §11). Used by calibrate, evaluate and the scan.

The scorer runs the model once per batch (under the tap's precision policy,
:mod:`ood_audit.models.precision`) and hands the taps to every detector
(:mod:`ood_audit.scores.detectors`). Every score is oriented higher = more in-distribution.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ood_audit.models import TapModel
from ood_audit.preprocess import to_unit
from ood_audit.scores.detectors import DETECTORS, LOGIT_DETECTORS, Detector, Features, make_detectors


class Scorer:
    """Score pixel batches with a set of detectors at the selected block.

    ``detectors`` default to the stateless ones (featurenorm and the logit scores); ``featurenorm2`` =
    (center, scale) adds the two-sided score. Fitted bank detectors (csd, knn) come from calibration or
    :func:`~ood_audit.bundle.scorer.scorer_from_bundle`. The wrapped :class:`TapModel` must tap ``block``.
    ``predict_class=False`` (a bundle calibrated without labels, SPEC §16) leaves out ``pred_class``: the
    head was not trained on these classes.
    """

    def __init__(self, tap: TapModel, block: str, *, detectors: Iterable[Detector] | None = None,
                 device: str | torch.device = "cpu", featurenorm2: tuple[float, float] | None = None,
                 predict_class: bool = True) -> None:
        if block not in tap.blocks:
            raise ValueError(f"TapModel does not tap the selected block {block!r}")
        self.tap, self.block = tap.eval().to(device), block
        self.device = torch.device(device)
        dets = list(detectors) if detectors is not None else list(
            make_detectors(("featurenorm", *LOGIT_DETECTORS), block=block).values())
        if featurenorm2 is not None:
            from ood_audit.scores.detectors import FeatureNorm2

            dets.append(FeatureNorm2(block, float(featurenorm2[0]), float(featurenorm2[1])))
        order = list(DETECTORS)
        self.detectors = sorted(dets, key=lambda d: order.index(d.name))
        self.predict_class = predict_class

    @property
    def score_names(self) -> list[str]:
        return [d.name for d in self.detectors]

    @property
    def precision(self) -> str:
        return self.tap.precision

    def features(self, pixels: torch.Tensor) -> Features:
        """One forward pass (under the tap's precision policy)."""
        return Features(self.tap(to_unit(pixels, self.device)), self.tap.head)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """pixels: [N,3,H,W] float in [0,1] or uint8. Returns score arrays [N] plus ``csd_view``, ``pred_class`` and, with
        a kNN detector, ``knn_nn`` / ``knn_nn_dist`` [N, 3]: the nearest bank rows and their distances."""
        f = self.features(pixels)
        out: dict[str, torch.Tensor] = {}
        for d in self.detectors:
            out.update(d.score(f))
        if self.predict_class:
            out["pred_class"] = f.logits.argmax(1)
        return {k: torch.as_tensor(v).cpu().numpy() for k, v in out.items()}
