"""Block selectors: which candidate block FeatureNorm (and featurenorm2) use (SPEC §4 and beyond).

- ``normratio``: the paper's rule unchanged, s = argmax_n R_n (SPEC §4). Reproduces the paper.
- ``robust``: the block whose *worst* probe is separated best, argmax_b min_p AUROC(FN_b(ID), FN_b(probe_p)),
  among blocks where no probe shows an inversion (more than 60% of its images above the ID median FN,
  :data:`~ood_audit.bundle.schema.INVERSION_LEVEL`, :meth:`~ood_audit.bundle.schema.ProbeEvidence.inverted`).
  The AUROC keeps FeatureNorm's fixed orientation, higher = ID, so it cannot invert: a probe with
  *higher* norms than ID scores below 0.5 and counts against the block, never for it (a symmetric measure
  such as |AUROC − 0.5| or a distance would reward exactly the blocks that fail). When every block is
  inverted for some probe, the worst-case AUROC of the two-sided featurenorm2 (which flags both directions)
  decides among all blocks, and the bundle warns.
- ``validated``: the block with the lowest FPR95 of FeatureNorm on the user's known outliers against
  held-out ID (SPEC §9 convention); ties go to the higher AUROC, then to the earlier block.

Whatever the selector, the bundle records every block's evidence and warns when the selected block
shows an inversion (:func:`selection_warnings`).

``robust`` is the default: on real images (``benchmarks/selection.py``: a CNN trained on handwritten
digits, audited against textures, photos, faces and rendered letters, 3 seeds) the paper's rule chose a
deep block 0.20–0.57 mean FPR95 worse than the best block, while ``robust`` stayed within 0.05 of it on
every run, there and on a texture-trained model.
"""
from __future__ import annotations

import logging
from typing import Sequence

from ood_audit.bundle.schema import OutlierEvidence, ProbeEvidence, SelectionPart
from ood_audit.errors import ConfigError
from ood_audit.calibration.normratio import select_block

log = logging.getLogger(__name__)

SELECTORS: tuple[str, ...] = ("normratio", "robust", "validated")
DEFAULT_SELECTOR = "robust"
MIN_OUTLIERS = 5          # fewer known outliers cannot rank blocks at all
FEW_OUTLIERS = 20         # below this, FPR95 moves in steps of > 5 points: warn


def normratio_choice(ratios: dict[str, float]) -> str:
    """s = argmax_n R_n, first on ties; the last block may win (SPEC §4)."""
    return select_block(ratios)


def robust_choice(evidence: ProbeEvidence) -> str:
    """The non-inverted block with the best worst-case probe AUROC, the earlier on ties (see the module docstring)."""
    per = evidence.per_block
    clean = [b for b in per if not evidence.inverted(b)]
    if clean:
        return max(clean, key=lambda b: per[b].min_auroc)
    return max(per, key=lambda b: per[b].min_auroc_two_sided)


def validated_choice(outliers: OutlierEvidence) -> str:
    """The block with the lowest FeatureNorm FPR95 on known outliers (then the higher AUROC, then the earlier)."""
    per = outliers.per_block
    order = {b: i for i, b in enumerate(per)}
    return min(per, key=lambda b: (per[b].fpr95, -per[b].auroc, order[b]))


def choose_block(selector: str, ratios: dict[str, float], evidence: ProbeEvidence | None = None,
                 outliers: OutlierEvidence | None = None) -> str:
    """The block ``selector`` picks from the NormRatios, the probe evidence and the outlier evidence."""
    if selector == "normratio":
        return normratio_choice(ratios)
    if selector == "robust":
        if evidence is None:
            raise ConfigError("--selector robust needs the probe evidence (at least one probe)")
        return robust_choice(evidence)
    if selector == "validated":
        if outliers is None:
            raise ConfigError("--selector validated needs known outliers: pass --outliers URI")
        return validated_choice(outliers)
    raise ConfigError(f"--selector {selector!r}: choose one of {', '.join(SELECTORS)}")


def selection_warnings(selected: str, evidence: ProbeEvidence | None, outliers: OutlierEvidence | None = None,
                       selector: str | None = None) -> list[str]:
    """Plain-text warnings about the selected block (inversion; too few known outliers)."""
    out = []
    if evidence is not None and (inv := evidence.inverted(selected)):
        above = evidence.per_block[selected].above_id_median
        detail = ", ".join(f"{p} ({above[p]:.0%} above)" for p in inv)
        others = " or ".join(s for s in ("robust", "validated") if s != selector)
        out.append(f"FeatureNorm looks inverted at the selected block {selected}: most images of the pseudo-OOD "
                   f"probe(s) {detail} have a higher norm than the ID median, so 'higher = ID' may fail for OOD of "
                   f"that kind; flag on featurenorm2 instead, or try --selector {others}")
    if outliers is not None and outliers.outliers < FEW_OUTLIERS:
        out.append(f"only {outliers.outliers} known outliers: their FPR95 moves in steps of "
                   f"{1 / outliers.outliers:.0%}; {FEW_OUTLIERS} or more give a steadier choice")
    return out


def resolve_flag_on(flag_on: list[str], evidence: ProbeEvidence | None,
                    explicit: bool = False) -> tuple[list[str], str | None]:
    """The scores that decide ``flagged``, and a note on why (or the risk) when FeatureNorm is inverted
    at *every* candidate block.

    Then no block makes the one-sided score safe: some kind of OOD has higher norms than ID wherever we
    look, and 'higher = ID' passes it unflagged. featurenorm2 flags both directions at the same block,
    so it replaces featurenorm in the default ``flag_on``. Failing instead would stop a nightly audit over
    a property of the data the user cannot change. A ``flag_on`` the user set ``explicit``-ly is kept, and
    the note says what it risks. Either way the note is recorded in the bundle and printed.
    """
    if "featurenorm" not in flag_on or evidence is None or not evidence.per_block \
            or not all(evidence.inverted(b) for b in evidence.per_block):
        return list(flag_on), None
    if explicit:
        reason = ("FeatureNorm is inverted at every candidate block (pseudo-OOD probes with higher norms than ID at "
                  "each), yet flag_on names featurenorm as asked: OOD with unusually high norms will not be flagged "
                  "by it; featurenorm2 would flag them")
        log.warning("calibrate: %s", reason)
        return list(flag_on), reason
    swapped = list(dict.fromkeys("featurenorm2" if s == "featurenorm" else s for s in flag_on))
    reason = (f"FeatureNorm is inverted at every candidate block (pseudo-OOD probes with higher norms than ID at "
              f"each), so flag_on uses featurenorm2, which flags unusually high norms too: {','.join(swapped)} "
              f"instead of {','.join(flag_on)}")
    log.warning("calibrate: %s", reason)
    return swapped, reason


def selection_meta(*, selector: str, selected: str, forced: bool, ratios: dict[str, float], images: int,
                   seed: int, grid: int, evidence: ProbeEvidence | None, outliers: OutlierEvidence | None,
                   notes: Sequence[str] = (), post_relu: bool | None = None) -> SelectionPart:
    """The bundle's ``selection`` part: every selector's choice, the evidence and the warnings (then ``notes``,
    such as why ``flag_on`` changed)."""
    choices = {"normratio": normratio_choice(ratios)}
    if evidence is not None:
        choices["robust"] = robust_choice(evidence)
    if outliers is not None:
        choices["validated"] = validated_choice(outliers)
    warnings = selection_warnings(selected, evidence, outliers, selector)
    for w in warnings:
        log.warning("block selection: %s", w)
    return SelectionPart(selector=selector, seed=seed, grid=grid, images=images, candidates=list(ratios),
                         ratios=ratios, normratio_choice=choices["normratio"], choices=choices, selected=selected,
                         forced=forced, inverted_probes=evidence.inverted(selected) if evidence is not None else [],
                         warnings=[*warnings, *notes], evidence=evidence, outliers=outliers,
                         blocks_post_relu=post_relu)
