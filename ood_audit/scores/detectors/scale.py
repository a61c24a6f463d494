"""SCALE as a detector (Xu et al., ICLR 2024, arXiv 2310.00227; SPEC §15)."""
from __future__ import annotations

import torch

from ood_audit.bundle.schema import ScalePart
from ood_audit.scores.detectors.base import Detector, Features
from ood_audit.scores.scale import DEFAULT_PERCENTILE, scale_energy

SOURCE = "Xu et al., ICLR 2024: p = 85 for ResNet-50 on ImageNet-1K; fixed, not tuned"


class Scale(Detector):
    """scale(x) = logsumexp(W (a·exp(r)) + b), r = Σa / Σ a·[a > t], t the p-th percentile of the image's own
    post-ReLU penultimate activations a (:mod:`ood_audit.scores.scale`). Nothing is fitted; ``p`` is recorded
    in the bundle (``state``) and read back from it."""

    name, reference, outputs = "scale", "Xu et al., ICLR 2024", ("scale",)

    def __init__(self, percentile: float = DEFAULT_PERCENTILE) -> None:
        super().__init__()
        self.percentile = float(percentile)

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        return {self.name: scale_energy(f.penultimate, f.head.weight, f.head.bias, self.percentile)}

    def state(self) -> tuple[ScalePart, dict[str, torch.Tensor]]:
        return ScalePart(percentile=self.percentile, source=SOURCE), {}

    @classmethod
    def from_state(cls, part: ScalePart, tensors: dict[str, torch.Tensor] | None = None) -> "Scale":
        return cls(part.percentile)
