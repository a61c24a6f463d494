"""Scores, all oriented higher = more in-distribution. Each formula has exactly one home here.

Names are imported lazily, so that :mod:`ood_audit.scores.views` (names only) loads without torch.
CSD, kNN, ALPA and SupCon live in their own modules: ``ood_audit.scores.csd``, ``.knn``, ``.alpa``, ``.supcon``.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(("energy", "energy_fn", "maxlogit", "msp", "msp_fn", "norm_replaced_logits"), "baselines"),
    **dict.fromkeys(("feature_norm", "feature_norm_two_sided", "two_sided_stats"), "featurenorm"),
    **dict.fromkeys(("jigsaw", "jigsaw_indexed"), "jigsaw"),
    **dict.fromkeys(("DEFAULT_PROBES", "PROBES", "apply_probe"), "probes"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
