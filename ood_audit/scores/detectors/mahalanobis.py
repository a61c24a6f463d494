"""Mahalanobis++ as a detector (Mueller & Hein, ICML 2025, arXiv 2505.18032; SPEC §15)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ood_audit.bundle.schema import MahalanobisPart
from ood_audit.errors import ConfigError
from ood_audit.scores.detectors.base import Detector, Features
from ood_audit.scores.mahalanobis import fit_shared_gaussian, l2_rows, mahalanobis_pp


class MahalanobisPP(Detector):
    """mahalanobis++(x) = −min_c (z − μ_c)ᵀ (Σ + εI)⁻¹ (z − μ_c), z = f/‖f‖₂ the L2-normalised penultimate
    vector, μ_c the class means and Σ the one shared covariance of the ID bank's z, ε from the Ledoit–Wolf
    shrinkage intensity δ (:mod:`ood_audit.scores.mahalanobis`, where why the shrinkage and why float64 are
    written).

    ``fit`` takes the bank's penultimate vectors and their labels: the detector needs labels, and a
    calibration without them does not fit it (:func:`require_labels`). Where the paper and SPEC §15 differ,
    SPEC §15 is followed: the covariance gets the recorded shrinkage εI (the paper inverts Σ as is)."""

    name, reference, outputs = "mahalanobis++", "Mueller & Hein, ICML 2025", ("mahalanobis++",)
    stateful = True
    file = "mahalanobis_pp.safetensors"
    formula = ("-min_c (z - mu_c)^T (Sigma + eps I)^-1 (z - mu_c), z = f / ||f||_2; "
               "eps = delta * (tr(Sigma)/D) / (1 - delta), delta the Ledoit-Wolf shrinkage")

    def __init__(self) -> None:
        super().__init__()
        self.shrinkage = 0.0
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self.epsilon, self.bank_images = 0.0, 0

    def fit_rows(self, f: Features) -> np.ndarray:
        return l2_rows(f.penultimate).cpu().numpy()

    def fit(self, rows: Any, labels: Any = None) -> "MahalanobisPP":
        if labels is None:
            raise require_labels()
        z = np.asarray(rows, dtype=np.float64)
        self.means, self.precision, _, self.shrinkage, self.epsilon = fit_shared_gaussian(z, np.asarray(labels))
        self.bank_images, self.fitted = int(z.shape[0]), True
        return self

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        self.require_fitted()
        return {self.name: mahalanobis_pp(f.penultimate, self.means, self.precision)}  # type: ignore[arg-type]

    def state(self) -> tuple[MahalanobisPart, dict[str, torch.Tensor]]:
        self.require_fitted()
        assert self.means is not None and self.precision is not None
        part = MahalanobisPart(file=self.file, classes=int(self.means.shape[0]), dim=int(self.means.shape[1]),
                               bank_images=self.bank_images, shrinkage=self.shrinkage, epsilon=self.epsilon,
                               formula=self.formula)
        return part, {"means": self.means.contiguous(), "precision": self.precision.contiguous()}

    @classmethod
    def from_state(cls, part: MahalanobisPart, tensors: dict[str, torch.Tensor] | None = None) -> "MahalanobisPP":
        det = cls()
        t = tensors or {}
        det.means, det.precision = t["means"].to(torch.float64), t["precision"].to(torch.float64)
        det.shrinkage, det.epsilon, det.bank_images, det.fitted = part.shrinkage, part.epsilon, part.bank_images, True
        return det


def require_labels() -> ConfigError:
    return ConfigError("mahalanobis++ needs labelled ID images (class means); this calibration has no labels: "
                       "flag on another score")
