"""FeatureNorm and its two-sided variant as detectors (Yu et al., "Block Selection Method for Using
Feature Norm in Out-of-distribution Detection", CVPR 2023; SPEC §2, §10)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ood_audit.bundle.schema import FeatureNorm2Part
from ood_audit.scores.featurenorm import feature_norm_two_sided, two_sided_stats
from ood_audit.scores.detectors.base import Detector, Features


class FeatureNorm(Detector):
    """FN(x; B) = (1/C) Σ_c ‖max(z_c, 0)‖₂ at the selected block B (SPEC §2). Nothing to fit."""

    name = "featurenorm"
    reference = "Yu et al., CVPR 2023, §3.1"
    outputs = ("featurenorm",)

    def __init__(self, block: str) -> None:
        super().__init__()
        self.block = block

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: f.fn(self.block)}


class FeatureNorm2(Detector):
    """featurenorm2(x) = −|log FN(x; B) − center| / scale, center and scale = median and MAD of log FN
    over held-out ID images at B (SPEC §10). It flags unusually high norms too, so it cannot invert.

    ``fit`` takes those held-out FeatureNorm values.
    """

    name = "featurenorm2"
    reference = "two-sided FeatureNorm (SPEC §10), after Yu et al., CVPR 2023"
    stateful = True
    outputs = ("featurenorm2",)
    formula = "-|log FN - center| / scale; center, scale = median, MAD of held-out ID log FN"

    def __init__(self, block: str, center: float | None = None, scale: float | None = None,
                 heldout_images: int = 0) -> None:
        super().__init__()
        self.block, self.heldout_images = block, int(heldout_images)
        self.center, self.scale = center, scale
        self.fitted = center is not None and scale is not None

    def fit_rows(self, f: Features) -> np.ndarray:
        return f.fn(self.block).double().cpu().numpy()

    def fit(self, rows: Any) -> "FeatureNorm2":
        fn = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in rows]) if isinstance(rows, list) \
            else np.asarray(rows, dtype=np.float64)
        self.center, self.scale = two_sided_stats(fn)
        self.heldout_images, self.fitted = int(fn.size), True
        return self

    def values(self, fn: Any) -> torch.Tensor:
        """The score of FeatureNorm values already computed (the same formula :meth:`score` uses)."""
        self.require_fitted()
        return feature_norm_two_sided(torch.as_tensor(fn), self.center, self.scale)  # type: ignore[arg-type]

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: self.values(f.fn(self.block))}

    def state(self) -> tuple[FeatureNorm2Part, dict[str, torch.Tensor]]:
        self.require_fitted()
        return FeatureNorm2Part(block=self.block, center=self.center, scale=self.scale,  # type: ignore[arg-type]
                                heldout_images=self.heldout_images, formula=self.formula), {}

    @classmethod
    def from_state(cls, part: FeatureNorm2Part, tensors: dict[str, torch.Tensor] | None = None) -> "FeatureNorm2":
        return cls(part.block, part.center, part.scale, part.heldout_images)
