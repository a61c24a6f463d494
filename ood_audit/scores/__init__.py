"""Scores, all oriented higher = more in-distribution. Each formula has exactly one home here."""
from ood_audit.scores.baselines import energy, energy_fn, maxlogit, msp, msp_fn, norm_replaced_logits
from ood_audit.scores.featurenorm import feature_norm, feature_norm_two_sided, two_sided_stats
from ood_audit.scores.jigsaw import jigsaw, jigsaw_indexed
from ood_audit.scores.probes import DEFAULT_PROBES, PROBES, apply_probe

# CSD, kNN, ALPA and SupCon import faiss/knn machinery lazily through their own modules:
#   ood_audit.scores.csd, .knn, .alpa, .supcon

__all__ = ["DEFAULT_PROBES", "PROBES", "apply_probe", "energy", "energy_fn", "feature_norm", "feature_norm_two_sided",
           "jigsaw", "jigsaw_indexed", "maxlogit", "msp", "msp_fn", "norm_replaced_logits", "two_sided_stats"]
