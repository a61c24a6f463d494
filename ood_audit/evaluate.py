"""Offline evaluation: select the block on ID train, score ID test and OOD sets, report metrics (SPEC §9).

Evaluation has no held-out split of its own: the selection evidence, the known-outlier comparison and
featurenorm2's center/scale use the ID train folder (the ID test folder is what gets measured).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .calibration.evidence import block_norms, outlier_evidence, probe_evidence, probe_norms
from .calibration.normratio import norm_ratio
from .calibration.selection import DEFAULT_SELECTOR, choose_block, selection_meta
from .errors import ConfigError, DataError
from .metrics import CONVENTION, ood_metrics
from .models import TapModel, block_candidates, build_model, infer_num_classes, load_state_strict, read_state
from .models import IMAGENET_MEAN, IMAGENET_STD
from .scores.featurenorm import two_sided_stats
from .scores.probes import DEFAULT_PROBES

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    arch: str
    weights: str | None        # local safetensors; None = random init (smoke tests only)
    small_input: bool = False
    num_classes: int | None = None
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def build(self) -> torch.nn.Module:
        state = read_state(self.weights) if self.weights else None
        probe = build_model(self.arch, num_classes=10, small_input=self.small_input)
        n = self.num_classes or (infer_num_classes(state, probe) if state is not None else None)
        if n is None:
            raise ConfigError("num_classes is required when no weights file is given")
        model = build_model(self.arch, num_classes=n, small_input=self.small_input)
        if state is not None:
            load_state_strict(model, state, source=str(self.weights))
        return model.eval()


@dataclass
class EvalResult:
    selected_block: str
    ratios: dict[str, float]
    selection: dict[str, Any] = field(default_factory=dict)  # selector, every selector's choice, evidence
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (ood set, score)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    convention: str = CONVENTION

    def to_json(self) -> dict[str, Any]:
        return {"selected_block": self.selected_block, "norm_ratios": self.ratios, "selection": self.selection,
                "results": self.rows,
                "counts": self.counts, "skipped_files": self.skipped, "metric_convention": self.convention,
                "seconds": round(self.seconds, 2)}


def _batches(pixels: torch.Tensor, batch_size: int):
    for i in range(0, pixels.shape[0], batch_size):
        yield pixels[i : i + batch_size].float().div_(255.0)


def _score_all(scorer, pixels: torch.Tensor, batch_size: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for x in _batches(pixels, batch_size):
        for k, v in scorer(x).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def load_folder_pixels(path: str, image_size: int) -> tuple[torch.Tensor, int]:
    """All decodable images under ``path`` as uint8 [N,3,S,S], and how many files were skipped."""
    from .io.dataset import decode_dataset, list_images

    listed = list_images(path)
    dec = decode_dataset(listed.uris(), size=image_size)
    if dec.images.shape[0] == 0:
        raise DataError(f"no decodable images under {path} ({listed.skipped + dec.skipped} file(s) skipped)")
    return torch.from_numpy(dec.images).permute(0, 3, 1, 2).contiguous(), listed.skipped + dec.skipped


@torch.no_grad()
def _train_norms(tap: TapModel, pixels: torch.Tensor, batch_size: int, device: str) -> np.ndarray:
    """FN at every tapped block for uint8 pixels: [N, B] float64."""
    out = [block_norms(tap(x.to(device)).blocks, tap.blocks).double().cpu().numpy()
           for x in _batches(pixels, batch_size)]
    return np.concatenate(out)


def evaluate(source: ModelSource, id_train: str, id_test: str, ood_sets: dict[str, str], *, image_size: int,
             block: str | None = None, batch_size: int = 64, seed: int = 0, k_csd: int = 10, k_knn: int = 50,
             knn_backend: str = "auto", max_select: int | None = None, device: str = "cpu",
             selector: str = DEFAULT_SELECTOR, outliers: str | None = None,
             probes: Sequence[str] = DEFAULT_PROBES, max_probe: int = 2000) -> EvalResult:
    """Select the block on ``id_train`` (``selector``: robust, normratio or validated with ``outliers``), build
    the CSD/kNN banks there, score the rest; featurenorm2 takes its center/scale from ``id_train``."""
    from .knn import build_index
    from .scores.scorer import Scorer

    t0 = time.perf_counter()
    if not ood_sets:
        raise ConfigError("give at least one OOD folder with --ood")
    model = source.build()
    cands = block_candidates(model)
    if block is not None and block not in cands:
        raise ConfigError(f"unknown block {block!r}; valid blocks: {', '.join(cands)}")
    skipped: dict[str, int] = {}
    data: dict[str, torch.Tensor] = {}
    if selector == "validated" and not outliers:
        raise ConfigError("--selector validated needs --outliers DIR (a few dozen known outliers)")
    extra = [("outliers", outliers)] if outliers else []
    for name, path in [("id_train", id_train), ("id_test", id_test), *ood_sets.items(), *extra]:
        data[name], skipped[name] = load_folder_pixels(path, image_size)
        log.info("loaded %s: %d images from %s (%d skipped)", name, data[name].shape[0], path, skipped[name])
    tap = TapModel(model, blocks=cands, mean=source.mean, std=source.std).to(device)
    sel_pixels = data["id_train"]
    if max_select is not None and sel_pixels.shape[0] > max_select:
        keep = torch.randperm(sel_pixels.shape[0], generator=torch.Generator().manual_seed(seed))[:max_select]
        sel_pixels = sel_pixels[keep.sort().values]
    nr = norm_ratio(tap, _batches(sel_pixels, batch_size), seed=seed, device=device)
    fn_train = _train_norms(tap, data["id_train"], batch_size, device)
    # probe evidence on a seeded subsample; indices are positions in the NormRatio images, as jigsaw's are there
    n_probe = min(max_probe, sel_pixels.shape[0])
    pick = torch.randperm(sel_pixels.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:n_probe]
    pick = pick.sort().values
    fid = (fn_train[pick.numpy()] if sel_pixels is data["id_train"]
           else _train_norms(tap, sel_pixels[pick], batch_size, device))
    fp = torch.cat([probe_norms(tap, sel_pixels[pick[i : i + batch_size]].float().div(255.0), pick[i : i + batch_size],
                                list(probes), seed, device=device) for i in range(0, n_probe, batch_size)])
    evidence = probe_evidence(cands, fid, fp.numpy(), list(probes), nr.ratios) if n_probe >= 2 else None
    out_ev = (outlier_evidence(cands, fn_train, _train_norms(tap, data["outliers"], batch_size, device))
              if outliers else None)
    chosen = block or choose_block(selector, nr.ratios, evidence, out_ev)
    selection = selection_meta(selector=selector, selected=chosen, forced=block is not None, ratios=nr.ratios,
                               images=nr.count, seed=seed, grid=3, evidence=evidence, outliers=out_ev)
    log.info("NormRatio chose %s (R=%.4f); selector %s; using %s", nr.selected, nr.ratios[nr.selected], selector,
             chosen)

    scorer = Scorer(tap, chosen, device=device, featurenorm2=two_sided_stats(fn_train[:, cands.index(chosen)]))
    views, feats = [], []
    for x in _batches(data["id_train"], batch_size):
        v, f = scorer.bank_features(x)
        views.append(v.flatten(0, 1))
        feats.append(f)
    csd_bank, knn_bank = torch.cat(views), torch.cat(feats)
    for what, bank, k in (("CSD", csd_bank, k_csd), ("kNN", knn_bank, k_knn)):
        if bank.shape[0] < k:
            raise DataError(f"{what} bank has {bank.shape[0]} vectors but k={k}; add ID train images or lower k")
    scorer.csd_index = build_index(csd_bank, kind=knn_backend, device=device)
    scorer.knn_index = build_index(knn_bank, kind=knn_backend, device=device)

    id_scores = _score_all(scorer, data["id_test"], batch_size)
    res = EvalResult(selected_block=chosen, ratios=nr.ratios, selection=selection, skipped=skipped,
                     counts={k: int(v.shape[0]) for k, v in data.items()})
    for name in ood_sets:
        ood_scores = _score_all(scorer, data[name], batch_size)
        for score in scorer.score_names:
            m = ood_metrics(id_scores[score], ood_scores[score])
            res.rows.append({"ood": name, "score": score, **{k: round(v, 4) for k, v in m.items()}})
    res.seconds = time.perf_counter() - t0
    return res


def format_table(res: EvalResult) -> str:
    """A plain-text table with the metric convention stated in words."""
    sel = res.selection or {}
    lines = [f"selected block: {res.selected_block}   ({sel.get('selector', 'normratio')} over {len(res.ratios)} "
             "candidates; " + ", ".join(f"{k} -> {v}" for k, v in (sel.get("choices") or {}).items()) + ")",
             f"convention: {res.convention}"]
    lines += [f"WARNING: {w}" for w in sel.get("warnings") or []]
    lines.append("")
    hdr = f"{'ood set':<16} {'score':<12} {'FPR95':>7} {'AUROC':>7} {'AUPR-In':>8} {'AUPR-Out':>9}"
    lines += [hdr, "-" * len(hdr)]
    for r in res.rows:
        lines.append(f"{r['ood'][:16]:<16} {r['score']:<12} {r['fpr95']:>7.4f} {r['auroc']:>7.4f} "
                     f"{r['aupr_in']:>8.4f} {r['aupr_out']:>9.4f}")
    skipped = {k: v for k, v in res.skipped.items() if v}
    if skipped:
        lines.append("")
        lines.append("skipped non-image files: " + ", ".join(f"{k}={v}" for k, v in skipped.items()))
    return "\n".join(lines)


def parse_ood_arg(value: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (the folder name becomes the set name)."""
    if "=" in value:
        name, path = value.split("=", 1)
        if not name:
            raise ConfigError(f"--ood {value!r}: empty set name before '='")
        return name, path
    return Path(value.rstrip("/")).name or value, value
