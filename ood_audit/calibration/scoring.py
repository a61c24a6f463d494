"""Building a :class:`~ood_audit.scores.scorer.Scorer` from model weights, banks and a selected block.

Calibration (held-out phase), evaluation and the scan all go through :func:`make_scorer`; the scan gets
everything from the bundle with :func:`scorer_from_bundle`.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import BundleError
from ..models import ModelSpec, TapModel


def load_state_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """A safetensors blob (never a pickle) as a CPU state dict."""
    from safetensors.torch import load

    return load(data)


def make_scorer(state: dict[str, torch.Tensor], spec: ModelSpec, block: str, *,
                csd_bank: torch.Tensor | None = None, knn_bank: torch.Tensor | None = None,
                k_csd: int = 10, k_knn: int = 50, device: str = "cpu", knn_backend: str = "auto",
                extra_blocks: tuple[str, ...] = (), autocast_dtype: torch.dtype | None = None,
                featurenorm2: tuple[float, float] | None = None) -> Any:
    """A Scorer whose model taps ``block`` (and ``extra_blocks``), with exact kNN indexes over the banks.

    ``featurenorm2`` = (center, scale) of held-out ID log FeatureNorm at ``block`` adds the two-sided score.
    """
    from ..knn import build_index
    from ..scores.scorer import Scorer

    model = spec.build(state)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    blocks = tuple(dict.fromkeys((block, *extra_blocks)))
    tap = TapModel(model, blocks=blocks, mean=spec.mean, std=spec.std)
    csd = build_index(csd_bank.float(), kind=knn_backend, device=device) if csd_bank is not None else None
    knn = build_index(knn_bank.float(), kind=knn_backend, device=device) if knn_bank is not None else None
    return Scorer(tap, block, csd_index=csd, knn_index=knn, k_csd=k_csd, k_knn=k_knn, device=device,
                  autocast_dtype=autocast_dtype, featurenorm2=featurenorm2)


def featurenorm2_from_meta(meta: dict[str, Any]) -> tuple[float, float] | None:
    """(center, scale) for ``featurenorm2`` from bundle metadata; None for bundles written without it.

    Refuses statistics taken at another block than the selected one (they would not fit the score).
    """
    info = meta.get("featurenorm2")
    if not info:
        return None
    block = (meta.get("selection") or {}).get("selected")
    if info.get("block") != block:
        raise BundleError(f"bundle featurenorm2 statistics are for block {info.get('block')!r} but the selected "
                          f"block is {block!r}; recalibrate")
    return float(info["center"]), float(info["scale"])


def scorer_from_bundle(bundle: Any, *, device: str = "cpu", knn_backend: str = "auto",
                       autocast_dtype: torch.dtype | None = None) -> Any:
    """The bundle's :class:`~ood_audit.scores.scorer.Scorer`: weights, selected block, CSD/kNN banks, k values
    and the ``featurenorm2`` statistics, all read from the bundle (every file read is checksum-verified).

    On CUDA, ``knn_backend="auto"`` becomes the exact torch backend (SPEC §7).
    """
    meta = bundle.meta
    try:
        spec = ModelSpec.from_dict(meta["model"])
        block = meta["selection"]["selected"]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"bundle {bundle.uri} lacks {exc} in its metadata; it was not written by calibrate") from None
    if knn_backend == "auto" and device.startswith("cuda"):
        knn_backend = "torch"
    banks: dict[str, Any] = {}
    ks: dict[str, int] = {}
    for name in ("csd", "knn"):
        info = meta.get(name)
        if info:
            banks[name] = bundle.tensors(info["file"])["bank"]
            ks[name] = int(info["k"])
    state = load_state_bytes(bundle.file_bytes("model.safetensors"))
    return make_scorer(state, spec, block, csd_bank=banks.get("csd"), knn_bank=banks.get("knn"),
                       k_csd=ks.get("csd", 10), k_knn=ks.get("knn", 50), device=device, knn_backend=knn_backend,
                       autocast_dtype=autocast_dtype, featurenorm2=featurenorm2_from_meta(meta))
