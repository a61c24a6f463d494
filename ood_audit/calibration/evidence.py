"""Evidence for block selection: how well each candidate block's FeatureNorm separates ID from pseudo-OOD
probes (and, when given, from known outliers).

Per block and probe (:func:`probe_evidence`):

- ``auroc`` = P(FN(ID) > FN(probe)) + ½ P(=), FeatureNorm's own orientation (higher = ID). Below 0.5 the
  probe has *higher* norms than ID: the one-sided score is inverted at that block for that kind of OOD;
- ``auroc_two_sided``: the same for ``featurenorm2`` (:func:`~ood_audit.scores.featurenorm.feature_norm_two_sided`)
  with center and scale from the same ID images; it cannot invert;
- ``above_id_median``: the fraction of the probe's images whose FN exceeds the ID median: the inversion
  signal. A block counts as inverted for a probe when this is above
  :data:`~ood_audit.bundle.schema.INVERSION_LEVEL` (0.6): a
  clear majority, not the 50% ± noise of a probe that simply looks like ID there.

Known outliers (:func:`outlier_evidence`) give FPR95 and AUROC per block against ID images (SPEC §9).
Both are the bundle's typed parts (:class:`~ood_audit.bundle.schema.ProbeEvidence`, ``OutlierEvidence``),
which also say which probes are inverted at a block (:meth:`~ood_audit.bundle.schema.ProbeEvidence.inverted`).
The torch part (:func:`block_norms`, :func:`probe_norms`) is shared by calibration workers and ``evaluate``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ood_audit.bundle.schema import (
    INVERSION_LEVEL,
    OutlierBlockEvidence,
    OutlierEvidence,
    ProbeBlockEvidence,
    ProbeEvidence,
)
from ood_audit.metrics import auroc, fpr_at_tpr
from ood_audit.models import TapModel
from ood_audit.scores.featurenorm import feature_norm, feature_norm_two_sided, two_sided_stats
from ood_audit.scores.probes import apply_probe


def block_norms(blocks: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """FN of every image at each block in ``names``: [N, B] float32 (SPEC §2)."""
    return torch.stack([feature_norm(blocks[b]) for b in names], dim=1)


@torch.no_grad()
def probe_norms(tap: TapModel, x: torch.Tensor, indices: torch.Tensor, probes: Sequence[str], seed: int, *,
                labels: torch.Tensor | None = None, device: str | torch.device = "cpu",
                known: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """FN at every block of ``tap`` for each probe's version of ``x`` (pixels [N,3,H,W] in [0,1]): [N, P, B].

    ``known`` holds norms already computed for some probe ([N, B], e.g. jigsaw from the NormRatio pass),
    so that pass is not repeated.
    """
    known = known or {}
    out = []
    for p in probes:
        if p in known:
            out.append(known[p].float().cpu())
            continue
        xp = apply_probe(p, x.cpu(), torch.as_tensor(indices).cpu(), seed, labels=labels)
        out.append(block_norms(tap(xp.to(device)).blocks, tap.blocks).cpu())
    return torch.stack(out, dim=1)


def _two_sided_auroc(fn_id: np.ndarray, fn_other: np.ndarray) -> float:
    c, s = two_sided_stats(fn_id)
    return auroc(feature_norm_two_sided(torch.from_numpy(fn_id), c, s).numpy(),
                 feature_norm_two_sided(torch.from_numpy(fn_other), c, s).numpy())


def probe_evidence(blocks: Sequence[str], fn_id: np.ndarray, fn_probe: np.ndarray, probes: Sequence[str],
                   ratios: dict[str, float] | None = None) -> ProbeEvidence:
    """Per-block separation of ID from each probe: ``fn_id`` [N, B] and ``fn_probe`` [N, P, B] (finite rows),
    blocks in candidate order (the bundle's :class:`~ood_audit.bundle.schema.ProbeEvidence`)."""
    fn_id = np.asarray(fn_id, dtype=np.float64)
    fn_probe = np.asarray(fn_probe, dtype=np.float64)
    if fn_id.ndim != 2 or fn_id.shape[0] < 2 or fn_probe.shape != (fn_id.shape[0], len(probes), fn_id.shape[1]):
        raise ValueError(f"probe evidence needs >= 2 images: fn_id {fn_id.shape}, fn_probe {fn_probe.shape}")
    per_block: dict[str, ProbeBlockEvidence] = {}
    for j, b in enumerate(blocks):
        ident = fn_id[:, j]
        med = float(np.median(ident))
        a1 = {p: auroc(ident, fn_probe[:, k, j]) for k, p in enumerate(probes)}
        a2 = {p: _two_sided_auroc(ident, fn_probe[:, k, j]) for k, p in enumerate(probes)}
        above = {p: float(np.mean(fn_probe[:, k, j] > med)) for k, p in enumerate(probes)}
        per_block[b] = ProbeBlockEvidence(normratio=(ratios or {}).get(b), auroc=a1, auroc_two_sided=a2,
                                          above_id_median=above, min_auroc=min(a1.values()),
                                          min_auroc_two_sided=min(a2.values()), max_above_id_median=max(above.values()))
    return ProbeEvidence(probes=list(probes), images=int(fn_id.shape[0]), per_block=per_block,
                         inversion_level=INVERSION_LEVEL)


def outlier_evidence(blocks: Sequence[str], fn_id: np.ndarray, fn_out: np.ndarray, *, source: str | None = None,
                     decode_failures: int = 0) -> OutlierEvidence:
    """FPR95 (ID positive, SPEC §9) and AUROC of FeatureNorm and featurenorm2 per block, known outliers vs ID.

    ``fn_id`` [M, B] (held-out ID images), ``fn_out`` [K, B]; featurenorm2's center/scale come from ``fn_id``.
    ``source`` and ``decode_failures`` say where the outliers came from and how many did not decode.
    """
    fn_id = np.asarray(fn_id, dtype=np.float64)
    fn_out = np.asarray(fn_out, dtype=np.float64)
    per_block: dict[str, OutlierBlockEvidence] = {}
    for j, b in enumerate(blocks):
        i, o = fn_id[:, j], fn_out[:, j]
        c, s = two_sided_stats(i)
        i2 = feature_norm_two_sided(torch.from_numpy(i), c, s).numpy()
        o2 = feature_norm_two_sided(torch.from_numpy(o), c, s).numpy()
        per_block[b] = OutlierBlockEvidence(fpr95=fpr_at_tpr(i, o), auroc=auroc(i, o),
                                            fpr95_two_sided=fpr_at_tpr(i2, o2), auroc_two_sided=auroc(i2, o2))
    return OutlierEvidence(outliers=int(fn_out.shape[0]), id_images=int(fn_id.shape[0]), per_block=per_block,
                           source=source, decode_failures=decode_failures)
