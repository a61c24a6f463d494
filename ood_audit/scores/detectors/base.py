"""What every detector shares: the features of one forward pass, and the fit / score / state contract.

A detector is one OOD method (SPEC §2, §5–7). ``fit`` takes ID statistics (a bank, a center and scale),
``score`` maps :class:`Features` to scores oriented higher = more in-distribution, and ``state`` /
``from_state`` save and restore what ``fit`` learnt as the bundle's typed part (:mod:`ood_audit.bundle.schema`,
stored as JSON) plus safetensors tensors (never a pickle).
Calibration workers, the scan actor and ``evaluate`` all score through these classes; the formulas
underneath are the pure functions of :mod:`ood_audit.scores`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ood_audit.errors import DataError, NotFittedError
from ood_audit.models import Taps
from ood_audit.scores.featurenorm import feature_norm


def finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` unchanged, or a :class:`DataError` naming ``name`` and how many images hold NaN/inf."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).flatten(1).any(1).sum()) if t.dim() > 1 else int((~torch.isfinite(t)).sum())
        raise DataError(f"non-finite values (NaN/inf) in {name} for {bad} image(s); check the input and weights")
    return t


@dataclass
class Features:
    """The taps of one forward pass and the head, with derived features computed once per batch.

    Accessors return float32 (the policy's activations cast up, :mod:`ood_audit.models.precision`) and
    refuse NaN/inf with a :class:`DataError`.
    """

    taps: Taps
    head: nn.Linear
    _memo: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def _get(self, key: str, make: Any) -> torch.Tensor:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def logits(self) -> torch.Tensor:
        return self._get("logits", lambda: finite(self.taps.logits.float(), "logits"))

    @property
    def penultimate(self) -> torch.Tensor:
        return self._get("penultimate", lambda: finite(self.taps.penultimate.float(), "penultimate features"))

    @property
    def last_map(self) -> torch.Tensor:
        return self._get("last_map", lambda: finite(self.taps.last_map.float(), "last-stage map"))

    def fn(self, block: str) -> torch.Tensor:
        """FeatureNorm at ``block`` [N] (SPEC §2)."""
        if block not in self.taps.blocks:
            raise ValueError(f"the forward pass does not tap block {block!r}")
        return self._get(f"fn:{block}", lambda: finite(feature_norm(self.taps.blocks[block]), f"block {block}"))


class Detector:
    """Base class: stateless detectors are fitted from the start; stateful ones set ``fitted`` in ``fit``.

    ``outputs`` are the columns ``score`` returns: the score named like the detector first, then extras
    (``csd_view``; ``knn_nn`` and ``knn_nn_dist``).
    """

    name: ClassVar[str]
    reference: ClassVar[str]
    stateful: ClassVar[bool] = False
    outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.fitted = not self.stateful

    def score(self, f: Features) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fit_rows(self, f: Features) -> np.ndarray | None:
        """The per-image rows this detector fits on, taken from an ID batch (None: it fits on nothing)."""
        return None

    def fit(self, rows: Any) -> "Detector":
        return self

    def state(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """(the bundle part, tensors) that :meth:`from_state` restores: the part is the typed model of
        :mod:`ood_audit.bundle.schema` the bundle stores (``FeatureNorm2Part``, ``BankPart``); stateless
        detectors have neither (None, {})."""
        return None, {}

    def require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(f"detector {self.name!r} is used before fit: fit it on ID features, or load a "
                                 "calibrated bundle")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'fitted' if self.fitted else 'not fitted'})"
