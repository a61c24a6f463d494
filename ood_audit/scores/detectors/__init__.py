"""One detector class per OOD method, and the registry by name (SPEC §2, §5–7, §10).

    from ood_audit.scores.detectors import make_detectors
    dets = make_detectors(["featurenorm", "csd"], block="layer3.1", k_csd=10)
    dets["csd"].fit(bank_views)         # ID statistics
    Scorer(tap, "layer3.1", detectors=dets.values())(pixels)

Calibration fits the stateful ones (featurenorm2, csd, knn, mahalanobis++) and writes their ``state`` (the typed
bundle parts ``FeatureNorm2Part``, ``BankPart`` and ``MahalanobisPart``; SCALE records its ``ScalePart``) into the
bundle;
the scan and ``evaluate`` restore them with :func:`detector_from_state`.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from ood_audit.errors import ConfigError
from ood_audit.vocab import SCORE_NAMES
from ood_audit.scores.detectors.banks import CSD, KNN, NEAREST_NEIGHBOURS
from ood_audit.scores.detectors.base import Detector, Features, finite
from ood_audit.scores.detectors.logits import MSP, Energy, EnergyFN, MaxLogit, MSPFN
from ood_audit.scores.detectors.mahalanobis import MahalanobisPP, require_labels
from ood_audit.scores.detectors.norms import FeatureNorm, FeatureNorm2
from ood_audit.scores.detectors.scale import Scale

DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in (
    FeatureNorm, FeatureNorm2, MSP, Energy, MaxLogit, MSPFN, EnergyFN, CSD, KNN, Scale, MahalanobisPP)}
assert tuple(DETECTORS) == SCORE_NAMES, "the registry and ood_audit.vocab.SCORE_NAMES must agree"
BLOCK_DETECTORS = ("featurenorm", "featurenorm2", "msp+fn", "energy+fn")  # read FN at the selected block
LOGIT_DETECTORS = ("msp", "energy", "maxlogit", "msp+fn", "energy+fn")
LABELLED_ONLY = (*LOGIT_DETECTORS, "scale", "mahalanobis++")  # read the head or the labels (SPEC §16)


def make_detectors(names: Iterable[str], *, block: str, k_csd: int = 10, k_knn: int = 50,
                   bank_dtype: str = "float16", device: str | torch.device = "cpu",
                   knn_backend: str = "auto") -> dict[str, Detector]:
    """Unfitted detectors by name, in registry (= report column) order."""
    wanted = set(names)
    bad = sorted(wanted - set(DETECTORS))
    if bad:
        raise ConfigError(f"unknown score {bad[0]!r}; choose from {', '.join(DETECTORS)}")
    out: dict[str, Detector] = {}
    for name, cls in DETECTORS.items():
        if name not in wanted:
            continue
        if name in BLOCK_DETECTORS:
            out[name] = cls(block)  # type: ignore[call-arg]
        elif name in ("csd", "knn"):
            out[name] = cls(k_csd if name == "csd" else k_knn, bank_dtype=bank_dtype, device=device,  # type: ignore[call-arg]
                            knn_backend=knn_backend)
        else:
            out[name] = cls()
    return out


def detector_from_state(name: str, part: Any, tensors: dict[str, torch.Tensor] | None = None, *,
                        device: str | torch.device = "cpu", knn_backend: str = "auto") -> Detector:
    """A fitted detector restored from what its ``state()`` returned (its bundle part and tensors)."""
    cls = DETECTORS[name]
    if name in ("csd", "knn"):
        return cls.from_state(part, tensors or {}, device=device, knn_backend=knn_backend)  # type: ignore[attr-defined]
    return cls.from_state(part, tensors)  # type: ignore[attr-defined]


__all__ = ["BLOCK_DETECTORS", "CSD", "DETECTORS", "Detector", "Energy", "EnergyFN", "FeatureNorm", "FeatureNorm2",
           "Features", "KNN", "LABELLED_ONLY", "LOGIT_DETECTORS", "MSP", "MSPFN", "MahalanobisPP", "MaxLogit",
           "NEAREST_NEIGHBOURS", "Scale", "detector_from_state", "finite", "make_detectors", "require_labels"]
