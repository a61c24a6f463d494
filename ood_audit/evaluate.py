"""Offline evaluation: calibrate on ID train, score ID test and OOD sets, report metrics (SPEC §9).

There is one calibration path. ``evaluate`` runs :func:`~ood_audit.calibration.calibrate.calibrate`
in-process on ``--id-train`` (the same split, selection, detectors, bank dtype and precision policy as
``ood-audit calibrate``, so it writes the same bundle for the same inputs), then scores ``--id-test`` and
each OOD folder through that bundle's detectors, exactly as the held-out phase and the scan do.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ood_audit.bundle.schema import SelectionPart
from ood_audit.calibration.selection import DEFAULT_SELECTOR
from ood_audit.errors import ConfigError, DataError
from ood_audit.metrics import CONVENTION, ood_metrics
from ood_audit.models.precision import DEFAULT_PRECISION
from ood_audit.scores.probes import DEFAULT_PROBES
from ood_audit.vocab import SCORE_NAMES

log = logging.getLogger(__name__)

# Metrics are threshold-free, so evaluation needs held-out ID only for featurenorm2's center and scale.
EVAL_MIN_HELDOUT = 5


def model_spec(arch: str, weights: str, *, small_input: bool = False, image_size: int = 224) -> Any:
    """The :class:`~ood_audit.models.ModelSpec` of ``weights`` (local or s3:// safetensors), the class count
    read from their head."""
    from ood_audit.bundle.scorer import load_state_bytes
    from ood_audit.io.fs import exists, read_bytes
    from ood_audit.models import ModelSpec

    if not exists(weights):
        raise ConfigError(f"model weights not found: {weights}")
    state = load_state_bytes(read_bytes(weights), f"model weights {weights}")
    return ModelSpec.for_weights(arch, state, small_input=small_input, image_size=image_size)


@dataclass
class EvalResult:
    selected_block: str
    ratios: dict[str, float]
    selection: SelectionPart | None = None  # selector, every selector's choice, evidence
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (ood set, score)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    convention: str = CONVENTION
    bundle: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"selected_block": self.selected_block, "norm_ratios": self.ratios,
                "selection": self.selection.model_dump(mode="json") if self.selection is not None else {},
                "results": self.rows, "bundle": self.bundle,
                "counts": self.counts, "skipped_files": self.skipped, "metric_convention": self.convention,
                "seconds": round(self.seconds, 2)}


def evaluate_config(spec: Any, weights: str, id_train: str, output: str, **options: Any) -> Any:
    """The :class:`~ood_audit.calibration.calibrate.CalibrateConfig` that ``evaluate`` calibrates with:
    ``ood-audit calibrate`` defaults, in-process, with the given options."""
    from ood_audit.calibration.calibrate import CalibrateConfig

    options.setdefault("min_heldout", EVAL_MIN_HELDOUT)
    return CalibrateConfig(data=id_train, model=weights, output=output, spec=spec, workers=0, **options)


def evaluate(spec: Any, weights: str, id_train: str, id_test: str, ood_sets: dict[str, str], *,
             block: str | None = None, batch_size: int = 64, seed: int = 0, k_csd: int = 10, k_knn: int = 50,
             knn_backend: str = "auto", max_select: int | None = None, device: str = "cpu",
             selector: str = DEFAULT_SELECTOR, outliers: str | None = None,
             probes: Sequence[str] = DEFAULT_PROBES, max_probe: int = 2000, heldout_fraction: float = 0.1,
             precision: str = DEFAULT_PRECISION, bundle_root: str | None = None) -> EvalResult:
    """Calibrate ``weights`` (described by ``spec``, a :class:`~ood_audit.models.ModelSpec`) on ``id_train``
    (a bundle under ``bundle_root``, a temporary directory by default), then score ``id_test`` and every OOD
    set through it and compute FPR95/AUROC/AUPR per (set, score)."""
    from ood_audit.bundle.files import open_bundle
    from ood_audit.calibration.calibrate import calibrate, list_id_images
    from ood_audit.calibration.phases import score_images
    from ood_audit.bundle.scorer import score_worker_kwargs

    t0 = time.perf_counter()
    if not ood_sets:
        raise ConfigError("give at least one OOD folder with --ood")
    with tempfile.TemporaryDirectory(prefix="ood-audit-evaluate-") as tmp:
        cfg = evaluate_config(spec, weights, id_train, bundle_root or tmp, block=block,
                              batch_size=batch_size, seed=seed, k_csd=k_csd, k_knn=k_knn, knn_backend=knn_backend,
                              max_select=max_select, device=device, selector=selector, outliers=outliers,
                              probes=tuple(probes), max_probe=max_probe, heldout_fraction=heldout_fraction,
                              precision=precision)
        cal = calibrate(cfg)
        bundle = open_bundle(cal.bundle_uri)
        kw = score_worker_kwargs(bundle, device=device, knn_backend=knn_backend)
        info = bundle.info
        counts = {"id_train": info.data.listed_images if info.data else 0}
        skipped = {"id_train": (info.data.skipped_non_images + info.data.decode_failures) if info.data else 0}
        scores: dict[str, dict[str, Any]] = {}
        for name, path in [("id_test", id_test), *ood_sets.items()]:
            uris, skipped_ext = list_id_images(path, None)
            scores[name], failed = score_images(kw, uris, workers=0, batch_size=batch_size, device=device)
            counts[name] = len(scores[name].get("featurenorm", ()))
            skipped[name] = skipped_ext + len(failed)
            if counts[name] == 0:
                raise DataError(f"no decodable images under {path} ({skipped[name]} file(s) skipped)")
            log.info("scored %s: %d images from %s (%d skipped)", name, counts[name], path, skipped[name])
    res = EvalResult(selected_block=info.block, ratios=dict(info.selection.ratios),
                     selection=info.selection, skipped=skipped, counts=counts,
                     bundle=cal.bundle_uri if bundle_root else "")
    for name in ood_sets:
        for score in (s for s in scores["id_test"] if s in SCORE_NAMES):
            m = ood_metrics(scores["id_test"][score], scores[name][score])
            res.rows.append({"ood": name, "score": score, **{k: round(v, 4) for k, v in m.items()}})
    res.seconds = time.perf_counter() - t0
    return res


def format_table(res: EvalResult) -> str:
    """A plain-text table with the metric convention stated in words."""
    sel = res.selection
    lines = [f"selected block: {res.selected_block}   ({sel.selector if sel else 'normratio'} over {len(res.ratios)} "
             "candidates; " + ", ".join(f"{k} -> {v}" for k, v in (sel.choices if sel else {}).items()) + ")",
             f"convention: {res.convention}"]
    lines += [f"WARNING: {w}" for w in (sel.warnings if sel else [])]
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
    if res.bundle:
        lines.append(f"bundle: {res.bundle}")
    return "\n".join(lines)


def parse_ood_arg(value: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (the folder name becomes the set name)."""
    if "=" in value:
        name, path = value.split("=", 1)
        if not name:
            raise ConfigError(f"--ood {value!r}: empty set name before '='")
        return name, path
    return Path(value.rstrip("/")).name or value, value
