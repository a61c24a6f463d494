"""The ID images a calibration reads (SPEC §10, §16): their URIs in a fixed order, whether the set is labelled,
its labels where it has them (Mahalanobis++'s class means), and what an unlabelled calibration refuses."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ood_audit.errors import ConfigError, DataError
from ood_audit.io.fs import S3Config
from ood_audit.scores.detectors import LABELLED_ONLY

if TYPE_CHECKING:
    from ood_audit.calibration.calibrate import CalibrateConfig

log = logging.getLogger(__name__)


def check_unlabelled(cfg: CalibrateConfig) -> None:
    """Refuse, in one line naming the flag, what needs labels (SPEC §16): per-class thresholds, logit scores."""
    if cfg.per_class_thresholds:
        raise ConfigError("--per-class-thresholds needs labelled ID data (class folders or a label column); "
                          "this calibration is unlabelled: drop --per-class-thresholds")
    needs = [s for s in cfg.flag_on or () if s in LABELLED_ONLY]
    if needs:
        what = "class means" if needs[0] == "mahalanobis++" else "a logit score"
        raise ConfigError(f"--flag-on {needs[0]}: {what} needs labelled ID data; an unlabelled calibration "
                          "fits featurenorm, featurenorm2, csd and knn only")


def id_images(cfg: CalibrateConfig) -> tuple[list[str], int, bool, np.ndarray | None]:
    """:func:`list_id_images`, whether the calibration is labelled (``cfg.labelled``, or when None, whether the
    data is a labelled set: :func:`ood_audit.io.dataset.load_labelled`, class folders or a label column) and
    the labels, aligned with the URIs, when the set has them (Mahalanobis++'s class means)."""
    from ood_audit.io.dataset import load_labelled

    if cfg.labelled is False:
        return (*list_id_images(cfg.data, cfg.s3), False, None)
    try:
        ds = load_labelled(cfg.data, s3=cfg.s3)
        order = np.argsort(np.asarray(ds.uris(), dtype=object), kind="stable")
        return [ds.uris()[i] for i in order], ds.skipped, True, ds.labels()[order]
    except DataError as exc:
        if cfg.labelled:
            return (*list_id_images(cfg.data, cfg.s3), True, None)
        uris, skipped = list_id_images(cfg.data, cfg.s3)
        reason = " ".join(str(exc).split()).split(";")[0]
        log.warning("calibrating without labels (%s): featurenorm, featurenorm2, csd and knn only, no "
                    "predicted class; pass --unlabelled to say so", reason)
        check_unlabelled(cfg)
        return uris, skipped, False, None


def list_id_images(data: str, s3: S3Config | None) -> tuple[list[str], int]:
    """Sorted URIs of the ID images (labels are not needed to calibrate) and the non-image skip count."""
    from ood_audit.io.dataset import is_manifest, list_images
    from ood_audit.io.listing import read_manifest

    if is_manifest(data):
        return sorted(read_manifest(data, s3=s3).column("uri").to_pylist()), 0
    listed = list_images(data, s3=s3)
    return sorted(listed.uris()), listed.skipped
