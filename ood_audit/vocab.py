"""Names shared by every layer, kept free of torch so that readers of reports can use them cheaply.

``CSD_VIEW_NAMES``: the six CSD views (SPEC §7), in the order of ``csd_views``' second axis and of the
report's ``csd_view`` codes.
"""

CSD_VIEW_NAMES: tuple[str, ...] = ("q00", "q01", "q10", "q11", "global", "centre")

# Every detector's name, in the order of the report's score columns (SPEC §11); the registry in
# ``ood_audit.scores.detectors`` holds one class per name.
SCORE_NAMES: tuple[str, ...] = ("featurenorm", "featurenorm2", "msp", "energy", "maxlogit", "msp+fn", "energy+fn",
                                "csd", "knn", "scale", "mahalanobis++")
