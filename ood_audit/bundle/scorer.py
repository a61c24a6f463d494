"""Building a :class:`~ood_audit.scores.scorer.Scorer` from model weights and detectors.

Calibration's held-out phase, ``evaluate`` and the scan all score through a Scorer; the scan and
``evaluate`` restore it from a bundle with :func:`scorer_from_bundle` (the bundle's weights, block,
precision policy and each fitted detector's state).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from ood_audit.errors import BundleError
from ood_audit.models import ModelSpec, TapModel
from ood_audit.bundle.schema import BankPart, BundleMeta, FeatureNorm2Part, MahalanobisPart, ScalePart

DetectorPart = FeatureNorm2Part | BankPart | MahalanobisPart | ScalePart  # what a detector's state() returns


def load_state_bytes(data: bytes, source: str = "weights") -> dict[str, torch.Tensor]:
    """A safetensors blob (never a pickle) as a CPU state dict; a :class:`BundleError` naming ``source`` when
    the bytes are not safetensors."""
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own Rust error types
        raise BundleError(f"{source} is not a valid safetensors file ({str(exc).splitlines()[0]})") from None


def make_scorer(state: dict[str, torch.Tensor], spec: ModelSpec, block: str, *, detectors: Iterable[Any] = (),
                device: str = "cpu", precision: str = "float32", extra_blocks: tuple[str, ...] = (),
                labelled: bool = True) -> Any:
    """A Scorer whose model taps ``block`` (and ``extra_blocks``), scoring with ``detectors`` (default: the
    stateless ones); not ``labelled`` (SPEC §16): no ``pred_class``."""
    from ood_audit.scores.scorer import Scorer

    model = spec.build(state)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    blocks = tuple(dict.fromkeys((block, *extra_blocks)))
    tap = TapModel(model, blocks=blocks, mean=spec.mean, std=spec.std, precision=precision)
    dets = list(detectors)
    return Scorer(tap, block, detectors=dets or None, device=device, predict_class=labelled)


def detector_states(bundle: Any) -> tuple[dict[str, DetectorPart], dict[str, dict[str, Any]]]:
    """The bundle's fitted detectors as (name -> its part, name -> its tensors by name), files verified."""
    info: BundleMeta = bundle.info
    states: dict[str, DetectorPart] = {}
    banks: dict[str, Any] = {}
    if info.featurenorm2 is not None:
        if info.featurenorm2.block != info.block:
            raise BundleError(f"bundle featurenorm2 statistics are for block {info.featurenorm2.block!r} but the "
                              f"selected block is {info.block!r}; recalibrate")
        states["featurenorm2"] = info.featurenorm2
    for name, part in (("csd", info.csd), ("knn", info.knn)):
        if part is not None:
            states[name] = part
            banks[name] = {"bank": bundle.tensors(part.file)["bank"]}
    if info.mahalanobis is not None and info.labelled:
        states["mahalanobis++"] = info.mahalanobis
        banks["mahalanobis++"] = dict(bundle.tensors(info.mahalanobis.file))
    if info.scale is not None and info.labelled:
        states["scale"] = info.scale
    return states, banks


def restore_detectors(block: str, states: dict[str, DetectorPart], banks: dict[str, dict[str, Any]], *,
                      device: str = "cpu", knn_backend: str = "auto", labelled: bool = True) -> list[Any]:
    """The stateless detectors at ``block`` (not ``labelled``: featurenorm only, no logit score, SPEC §16)
    and the fitted ones restored from their parts (``states``) and tensors (``banks``: name -> tensor name ->
    array)."""
    from ood_audit.scores.detectors import LOGIT_DETECTORS, detector_from_state, make_detectors

    dets = list(make_detectors(("featurenorm", *(LOGIT_DETECTORS if labelled else ())), block=block).values())
    for name, config in states.items():
        tensors = {k: torch.as_tensor(v) for k, v in banks[name].items()} if name in banks else None
        dets.append(detector_from_state(name, config, tensors, device=device, knn_backend=knn_backend))
    return dets


def scorer_from_bundle(bundle: Any, *, device: str = "cpu", knn_backend: str = "auto") -> Any:
    """The bundle's :class:`~ood_audit.scores.scorer.Scorer`: weights, selected block, precision policy and
    every detector, all read from the bundle (every file read is checksum-verified).

    On CUDA, ``knn_backend="auto"`` becomes the exact torch backend (SPEC §7).
    """
    info: BundleMeta = bundle.info
    if knn_backend == "auto" and device.startswith("cuda"):
        knn_backend = "torch"
    state = load_state_bytes(bundle.file_bytes("model.safetensors"), f"bundle {bundle.uri} file model.safetensors")
    states, banks = detector_states(bundle)
    return make_scorer(state, info.model.spec(), info.block, device=device, precision=info.precision.activations,
                       detectors=restore_detectors(info.block, states, banks, device=device, knn_backend=knn_backend,
                                                   labelled=info.labelled), labelled=info.labelled)


def score_worker_kwargs(bundle: Any, *, device: str = "cpu", knn_backend: str = "auto") -> dict[str, Any]:
    """The :class:`~ood_audit.calibration.workers.ScoreWorker` arguments that score like the bundle's scan:
    its weights, block, precision policy, every fitted detector's state and whether it was labelled."""
    info: BundleMeta = bundle.info
    states, banks = detector_states(bundle)
    return {"model": bundle.file_bytes("model.safetensors"), "spec": info.model.spec().to_dict(),
            "preprocess": dict(info.preprocess), "block": info.block, "states": states,
            "banks": {k: {t: v.numpy() for t, v in ts.items()} for k, ts in banks.items()}, "s3": bundle.s3,
            "device": device,
            "precision": info.precision.activations, "knn_backend": knn_backend, "labelled": info.labelled}
