"""NormRatio block selection (Yu et al., CVPR 2023, Algorithm 1; SPEC §4).

R_n = (1/I) Σ_i FN(x_i; B_n) / FN(Jigsaw(x_i); B_n) — the mean of per-image paired ratios, not a
ratio of means. Selected block s = argmax_n R_n. Workers return sums and counts
(:func:`norm_ratio_sums`); the totals are combined and divided once (:func:`ratios_from_sums`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from ood_audit.models import IMAGENET_MEAN, IMAGENET_STD, TapModel, block_candidates
from ood_audit.scores.featurenorm import feature_norm
from ood_audit.scores.jigsaw import jigsaw_indexed

_EPS = 1e-12  # guards FN(jigsaw) = 0 (an all-dead block); such a block then has a huge, suspicious ratio


def paired_ratios(fn_id: torch.Tensor, fn_jigsaw: torch.Tensor) -> torch.Tensor:
    """The per-image NormRatio terms FN(x_i; B) / FN(Jigsaw(x_i); B), for [N] or [N, B] norms."""
    return fn_id / fn_jigsaw.clamp_min(_EPS)


@dataclass
class NormRatioResult:
    ratios: dict[str, float]  # every candidate's R_n, in candidate order
    selected: str
    count: int                # number of images I


def iter_pixel_batches(batches: Iterable[Any], start_index: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (pixels [N,3,H,W] in [0,1], global indices [N]) from tensors, (x, y, ...) tuples or dicts.

    A dict may carry ``index`` (global image indices); otherwise images are numbered in order.
    """
    nxt = start_index
    for b in batches:
        idx = None
        if isinstance(b, dict):
            x, idx = b["image"], b.get("index")
        elif isinstance(b, (tuple, list)):
            x = b[0]
        else:
            x = b
        x = torch.as_tensor(x)
        if idx is None:
            idx = torch.arange(nxt, nxt + x.shape[0])
        nxt = int(torch.as_tensor(idx).max()) + 1 if len(idx) else nxt
        yield x, torch.as_tensor(idx)


@torch.no_grad()
def norm_ratio_sums(tap: TapModel, batches: Iterable[Any], *, seed: int = 0, grid: int = 3,
                    device: str | torch.device = "cpu", start_index: int = 0) -> tuple[torch.Tensor, int]:
    """Per-block Σ_i FN(x_i)/FN(Jigsaw(x_i)) over ``batches`` (float64, in ``tap.blocks`` order) and I."""
    tap.eval()
    sums = torch.zeros(len(tap.blocks), dtype=torch.float64)
    count = 0
    for x, idx in iter_pixel_batches(batches, start_index):
        x = x.to(device=device, dtype=torch.float32)
        xj = jigsaw_indexed(x.cpu(), idx, seed, grid).to(device)
        t_id, t_jig = tap(x), tap(xj)
        for n, b in enumerate(tap.blocks):
            r = paired_ratios(feature_norm(t_id.blocks[b]), feature_norm(t_jig.blocks[b]))
            sums[n] += r.double().sum().cpu()
        count += x.shape[0]
    return sums, count


def ratios_from_sums(blocks: Sequence[str], sums: torch.Tensor, count: int) -> NormRatioResult:
    """Divide the (already reduced) sums by the total count and pick argmax (first on ties)."""
    if count <= 0:
        raise ValueError("NormRatio needs at least one image")
    ratios = {b: float(s) / count for b, s in zip(blocks, sums.tolist())}
    return NormRatioResult(ratios=ratios, selected=select_block(ratios), count=count)


def select_block(ratios: dict[str, float]) -> str:
    """s = argmax_n R_n; the last block may win (SPEC §4)."""
    return max(ratios, key=lambda b: ratios[b])


def norm_ratio(model: nn.Module | TapModel, batches: Iterable[Any], blocks: Sequence[str] | None = None, *,
               seed: int = 0, grid: int = 3, device: str | torch.device = "cpu",
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> NormRatioResult:
    """NormRatio of every candidate block (or ``blocks``) over ID pixel batches, and the selected block."""
    if isinstance(model, TapModel):
        if blocks is not None and tuple(blocks) != model.blocks:
            raise ValueError("a TapModel already fixes its blocks; pass the plain model to choose others")
        tap = model
    else:
        names = list(blocks) if blocks is not None else block_candidates(model)
        tap = TapModel(model, blocks=names, mean=mean, std=std)
    tap = tap.to(device)
    sums, count = norm_ratio_sums(tap, batches, seed=seed, grid=grid, device=device)
    return ratios_from_sums(tap.blocks, sums, count)
