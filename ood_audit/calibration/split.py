"""Deterministic, content-stable splits of ID data (bank/selection part vs held-out part)."""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np


def unit_hash(keys: Sequence[str], seed: int, salt: str) -> np.ndarray:
    """A uniform value in [0, 1) per key that depends only on (key, seed, salt).

    Adding or removing other objects never moves an object across a split.
    """
    out = np.empty(len(keys), dtype=np.float64)
    for i, k in enumerate(keys):
        h = hashlib.blake2b(f"{salt}:{seed}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def heldout_mask(keys: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """True for the held-out part (≈ ``fraction`` of the keys)."""
    return unit_hash(keys, seed, "heldout") < fraction


def subsample_mask(keys: Sequence[str], size: int | None, seed: int = 0) -> np.ndarray:
    """Exactly ``min(size, len(keys))`` keys, the ones with the smallest hashes; all when ``size`` is None."""
    n = len(keys)
    if size is None or size >= n:
        return np.ones(n, dtype=bool)
    order = np.argsort(unit_hash(keys, seed, "select"), kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:size]] = True
    return mask


HASH_SPLIT = "blake2b(seed, key under the data root) < fraction"
VALIDATION_SPLIT = "the model's validation split: sha256('val:' + key under the data root) / 2^64 < fraction"


def heldout_split(data: str, uris: Sequence[str], training: Any, *, fraction: float, seed: int,
                  min_heldout: int, min_bank: int) -> tuple[np.ndarray, str, bool, str]:
    """The held-out part thresholds are set on (SPEC §10): ``(mask, method, unseen, note)``.

    Why not always the hash split: thresholds set on images the model trained on are too lenient for new
    images, whose scores look less in-distribution (a default digits run flagged 7.2 % of unseen digits at a
    5 % target). So when the weights' ``ood-audit train`` record (``training``, a
    :class:`~ood_audit.bundle.schema.TrainingPart`) names this very data root and a validation fraction, the
    held-out part is exactly the model's validation split (the same hash training used), images it never
    trained on, and ``unseen`` is True. Otherwise, or when that split is too small here, the hash split of
    ``fraction``, and ``note`` says why and that the realised rate on new images may exceed the target.
    """
    from ood_audit.io.uri import object_key, parse_uri
    from ood_audit.training.data import validation_split

    val_fraction = getattr(training, "val_fraction", None) or 0.0
    trained_on = getattr(training, "data", None)
    if training is None:
        why = "no ood-audit train record describes these weights"
    elif val_fraction <= 0:
        why = "the model was trained without a validation split"
    elif not trained_on or str(parse_uri(trained_on)).rstrip("/") != str(parse_uri(data)).rstrip("/"):
        why = f"the model was trained on {trained_on or 'data not recorded'}, not on {data}"
    else:
        _, rows = validation_split(list(uris), trained_on, val_fraction)
        mask = np.zeros(len(uris), dtype=bool)
        mask[rows] = True
        if mask.sum() >= min_heldout and (~mask).sum() >= min_bank:
            return mask, VALIDATION_SPLIT, True, (
                f"held-out = the model's validation split ({int(mask.sum())} images, fraction {val_fraction:g}): "
                "never trained on, so the flag rate holds on new images")
        why = f"the model's validation split holds only {int(mask.sum())} of these images (need {min_heldout})"
    keys = [object_key(u, data) for u in uris]
    return heldout_mask(keys, fraction, seed), HASH_SPLIT, False, (
        f"held-out = a hash split of the ID images ({why}): it may include images the model trained on, so the "
        "realised flag rate on new images may exceed the target")
