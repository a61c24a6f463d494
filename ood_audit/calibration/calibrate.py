"""Calibration: block selection, CSD/kNN banks and thresholds -> an audit bundle (SPEC §4, §7, §10).

Two distributed phases over Ray Data actor pools (or in-process with ``workers=0``):
1. bank part: NormRatio terms per image (summed on the driver, then divided once), the CSD and kNN
   detectors' fit rows, and on a deterministic subsample FN at every block of the image and of each
   pseudo-OOD probe (the selection evidence); with known outliers (``outliers``), a small extra pass
   gives FN at every block for them and for held-out ID images;
2. held-out part: every score through the fitted detectors -> the ``featurenorm2`` fit (median/MAD of
   held-out log FN), thresholds and percentile tables; from the same pass, the SPEC §14 ``blurry``
   threshold (Laplacian variances of the decoded held-out images) and their share of grey images (which
   decides whether ``grayscale`` is reported), the near-duplicate τ (their nearest
   kNN-bank distances, :mod:`.neardup`) and, with ``per_class_thresholds``, thresholds per predicted class
   (:mod:`.perclass`). Each is an optional typed part of the bundle.

Without labels (SPEC §16: ``labelled=False``, or ``None`` and data without class folders or a ``label``
column) the model's head is not one of the ID classes: only the label-free detectors (featurenorm,
featurenorm2, csd, knn) are fitted and no class is predicted; per-class thresholds and logit scores are
refused. Everything else is as usual. The bundle also records where the weights came from
(:mod:`ood_audit.bundle.provenance`).

The bundle is a typed :class:`~ood_audit.bundle.schema.BundleMeta`. ``evaluate`` runs this same
function in-process (``workers=0``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ood_audit.errors import ConfigError, DataError
from ood_audit.io.quality import BLURRY_PERCENTILE, blurry_threshold, grayscale_share
from ood_audit.io.fs import S3Config, exists, read_bytes
from ood_audit.io.uri import join_uri, object_key, parent_uri
from ood_audit.models import ModelSpec
from ood_audit.models.precision import DEFAULT_PRECISION, check_precision
from ood_audit.progress import Progress
from ood_audit.scores.detectors import DETECTORS, make_detectors
from ood_audit.calibration.id_data import check_unlabelled, id_images, list_id_images
from ood_audit.scores.probes import DEFAULT_PROBES, check_probes
from ood_audit.vocab import SCORE_NAMES
from ood_audit.bundle.files import BANK_SOURCES
from ood_audit.bundle.provenance import read_weights_provenance
from ood_audit.bundle.write import bank_sources, write_bundle
from ood_audit.calibration.evidence import outlier_evidence, probe_evidence
from ood_audit.bundle.schema import BundleMeta, OutlierEvidence, QualityPart, TrainingPart
from ood_audit.flagging.neardup import near_duplicate_threshold
from ood_audit.calibration.normratio import ratios_from_sums
from ood_audit.flagging.perclass import DEFAULT_MIN_CLASS_IMAGES, check_min_images, per_class_thresholds
from ood_audit.calibration.phases import run_phase, score_images
from ood_audit.bundle.scorer import load_state_bytes
from ood_audit.calibration.selection import DEFAULT_SELECTOR, MIN_OUTLIERS, SELECTORS, choose_block, resolve_flag_on, selection_meta
from ood_audit.calibration.split import heldout_split, subsample_mask
from ood_audit.flagging.thresholds import quantile_table, score_stats, threshold_at, union_thresholds
from ood_audit.calibration.workers import BankWorker, NormWorker

log = logging.getLogger(__name__)

DEFAULT_FLAG_ON = ("featurenorm", "csd")
KNOWN_SCORES = SCORE_NAMES


@dataclass
class CalibrateConfig:
    data: str                          # ID images: prefix (flat or class folders) or manifest, local or s3://
    model: str                         # safetensors weights, local or s3://; model.json beside it
    output: str                        # bundle root; the bundle goes to <output>/bundles/<bundle_id>/
    spec: ModelSpec | None = None      # overrides model.json
    heldout_fraction: float = 0.1
    id_flag_rate: float = 0.05         # target share of ID images flagged (not an FPR: ID is the positive class)
    flag_on: tuple[str, ...] | None = None   # None: DEFAULT_FLAG_ON, featurenorm2 for featurenorm if inverted everywhere
    seed: int = 0
    max_select: int | None = None      # deterministic NormRatio subsample size (None = all bank images)
    block: str | None = None           # force a block instead of the selector's choice
    selector: str = DEFAULT_SELECTOR   # normratio (the paper's rule) | robust | validated
    outliers: str | None = None        # known outliers (prefix or manifest): evidence; needed by `validated`
    probes: tuple[str, ...] = DEFAULT_PROBES
    max_probe: int = 2000              # images for the probe evidence (a subset of the NormRatio images)
    k_csd: int = 10
    k_knn: int = 50
    bank_dtype: str = "float16"
    precision: str = DEFAULT_PRECISION # forward passes of calibration and every scan of the bundle
    resize_mode: str = "crop"
    workers: int = 2                   # Ray Data actors; 0 = in-process
    batch_size: int = 64
    device: str = "cpu"
    knn_backend: str = "auto"
    s3: S3Config | None = None
    min_heldout: int = 20
    per_class_thresholds: bool = False # also thresholds per predicted class (flagging.perclass)
    per_class_min_images: int = DEFAULT_MIN_CLASS_IMAGES  # held-out images a class needs for its own
    labelled: bool | None = True       # False: no labels (SPEC §16); None: from the data's layout, with a notice

    def validate(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 < self.id_flag_rate < 0.5:
            raise ConfigError(f"id_flag_rate must be in (0, 0.5), got {self.id_flag_rate}")
        check_precision(self.precision)
        for name in ("k_csd", "k_knn", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.bank_dtype not in ("float16", "float32"):
            raise ConfigError(f"bank_dtype must be float16 or float32, got {self.bank_dtype!r}")
        bad = [s for s in self.flag_on or () if s not in KNOWN_SCORES]
        if bad:
            raise ConfigError(f"flag_on has unknown score {bad[0]!r}; choose from {', '.join(KNOWN_SCORES)}")
        if self.selector not in SELECTORS:
            raise ConfigError(f"selector {self.selector!r} is unknown; choose one of {', '.join(SELECTORS)}")
        if self.selector == "validated" and not self.outliers:
            raise ConfigError("selector 'validated' needs known outliers: set outliers (--outliers URI)")
        check_min_images(self.per_class_min_images)
        if self.max_probe < 10:
            raise ConfigError(f"max_probe must be >= 10, got {self.max_probe}")
        try:
            self.probes = check_probes(tuple(self.probes))
        except ValueError as e:
            raise ConfigError(f"probes: {e}") from None
        if self.labelled is False:
            check_unlabelled(self)


@dataclass
class CalibrateResult:
    bundle_uri: str
    bundle_id: str
    meta: dict[str, Any]                         # bundle.json's meta, as stored
    summary: dict[str, Any] = field(default_factory=dict)
    info: BundleMeta | None = None               # the same, typed
    heldout: dict[str, np.ndarray] = field(default_factory=dict)  # per held-out image: uri, every score, csd_view


def read_model(uri: str, spec: ModelSpec | None, s3: S3Config | None) -> tuple[bytes, ModelSpec]:
    """Weights bytes and the model description (explicit, else ``<name>.json`` or ``model.json`` beside it)."""
    if not exists(uri, s3=s3):
        raise ConfigError(f"model weights not found: {uri}")
    data = read_bytes(uri, s3=s3)
    if spec is None:
        import json

        stem = uri[: -len(".safetensors")] if uri.endswith(".safetensors") else uri
        for cand in (stem + ".json", join_uri(parent_uri(uri), "model.json")):
            if exists(cand, s3=s3):
                spec = ModelSpec.from_dict(json.loads(read_bytes(cand, s3=s3)))
                break
        else:
            raise ConfigError(f"no model.json beside {uri}; pass --arch/--num-classes (and --small-input, --image-size)")
    spec.build(load_state_bytes(data, f"model weights {uri}"), source=uri)  # strict: fail now, not inside a worker
    return data, spec


def read_training_record(uri: str, model_bytes: bytes, s3: S3Config | None) -> TrainingPart | None:
    """What ``ood-audit train`` recorded about these weights (``<stem>.json``): validation accuracy and
    loss, chance, epochs. None when there is no such file or it describes other weights (sha256)."""
    import hashlib
    import json

    stem = uri[: -len(".safetensors")] if uri.endswith(".safetensors") else uri
    if not exists(stem + ".json", s3=s3):
        return None
    try:
        record = json.loads(read_bytes(stem + ".json", s3=s3))
    except ValueError:
        return None
    if record.get("sha256") != hashlib.sha256(model_bytes).hexdigest() or "val_accuracy" not in record:
        return None
    validation = record.get("validation") or {}
    return TrainingPart.model_validate({**record, "val_images": validation.get("images_scored"),
                                        "val_fraction": validation.get("fraction"),
                                        "data": (record.get("config") or {}).get("data")})


def _spec15_detectors(bank: dict[str, Any], labels: np.ndarray | None,
                      labelled: bool) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """SCALE's recorded setting and Mahalanobis++ fitted on the bank's L2-normalised penultimate vectors (the
    kNN bank's rows, before its float16 storage) and their labels (SPEC §15): (name -> part, name -> tensors).
    Both read the classifier: an unlabelled calibration has neither."""
    if not labelled:
        return {}, {}
    scale_part, _ = make_detectors(("scale",), block="")["scale"].state()
    states: dict[str, Any] = {"scale": scale_part}
    if labels is None:  # --labelled on a set whose labels cannot be read (a manifest without them)
        log.warning("mahalanobis++ is not fitted: the ID images' labels cannot be read")
        return states, {}
    maha = make_detectors(("mahalanobis++",), block="")["mahalanobis++"]
    maha.fit(bank["feats"], labels[np.asarray(bank["rows"])])
    states["mahalanobis++"], tensors = maha.state()
    return states, {"mahalanobis++": tensors}


def _bank_phase(cfg: CalibrateConfig, common: dict[str, Any], uris: list[str], bank_idx: np.ndarray,
                select: np.ndarray, evidence_rows: np.ndarray) -> dict[str, Any]:
    """Phase 1 over the bank images: NormRatio sums, the bank detectors' fit rows, the probe evidence norms."""
    t1 = time.perf_counter()
    table = pa.table({"uri": [uris[i] for i in bank_idx], "index": pa.array(bank_idx, pa.int64()),
                      "select": select, "evidence": evidence_rows})
    sums, count, keep, views, feats, thumbs, failures = None, 0, [], [], [], [], []
    fn_id, fn_probe = [], []
    done, pids = 0, set()
    progress = Progress("calibrate, bank phase", table.num_rows, unit="images")
    for out in run_phase(BankWorker, {**common, "seed": cfg.seed, "probes": cfg.probes}, table,
                         workers=cfg.workers, batch_size=cfg.batch_size, device=cfg.device):
        ok = out["status"] == "ok"
        r = out["ratios"][ok]
        sel = ~np.isnan(r).any(axis=1)
        sums = r[sel].sum(axis=0) if sums is None else sums + r[sel].sum(axis=0)
        count += int(sel.sum())
        has = ok & np.isfinite(out["fn_id"]).all(axis=1) & np.isfinite(out["fn_probe"]).all(axis=1)
        fn_id.append(out["fn_id"][has])
        fn_probe.append(out["fn_probe"][has])
        keep.append(out["index"][ok])
        views.append(out["views"][ok])
        feats.append(out["feats"][ok])
        thumbs.append(np.asarray(out["thumb"], dtype=object)[ok])
        failures += [(uris[i], s, e) for i, s, e in zip(out["index"][~ok], out["status"][~ok], out["error"][~ok])]
        done += len(ok)
        pids.update(np.unique(out["worker"]).tolist())
        progress.update(done)
    progress.finish()
    kept = np.concatenate(keep)
    order = np.argsort(kept, kind="stable")
    return {"sums": sums, "count": count, "rows": kept[order], "views": np.concatenate(views)[order],
            "feats": np.concatenate(feats)[order], "thumbs": np.concatenate(thumbs)[order],
            "fn_id": np.concatenate(fn_id), "fn_probe": np.concatenate(fn_probe), "failures": failures,
            "workers": len(pids), "seconds": time.perf_counter() - t1}


def calibrate(cfg: CalibrateConfig) -> CalibrateResult:
    """Run both phases and write the bundle. Deterministic for fixed data, weights and config."""
    from ood_audit.models import arch_spec, skeleton

    cfg.validate()
    t0 = time.perf_counter()
    uris, skipped_ext, labelled, labels = id_images(cfg)  # first: an unlabelled refusal needs no model
    model_bytes, spec = read_model(cfg.model, cfg.spec, cfg.s3)
    taps = arch_spec(skeleton(spec.arch, spec.num_classes, spec.small_input))  # names only: no weights needed
    blocks = list(taps.candidates)
    if cfg.block is not None and cfg.block not in blocks:
        raise ConfigError(f"unknown block {cfg.block!r}; valid blocks: {', '.join(blocks)}")
    pre = spec.preprocess(cfg.resize_mode)  # type: ignore[arg-type]
    # The key under the data root, not the URI: a copy of the set elsewhere gets the same split.
    keys = [object_key(u, cfg.data) for u in uris]
    training = read_training_record(cfg.model, model_bytes, cfg.s3)
    held, split_method, unseen, note = heldout_split(cfg.data, uris, training, fraction=cfg.heldout_fraction,
                                                     seed=cfg.seed, min_heldout=cfg.min_heldout,
                                                     min_bank=max(cfg.k_knn, 2))
    log.info("calibrate: %s", note)
    bank_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    if held_idx.size < cfg.min_heldout or bank_idx.size < max(cfg.k_knn, 2):
        raise DataError(f"{len(uris)} ID images give {bank_idx.size} bank and {held_idx.size} held-out images; "
                        f"need >= {cfg.k_knn} bank and >= {cfg.min_heldout} held-out (add data or raise heldout_fraction)")
    bank_keys = [keys[i] for i in bank_idx]
    select = subsample_mask(bank_keys, cfg.max_select, cfg.seed)
    # the same hash order, so the evidence rows are always a subset of the NormRatio rows
    evidence_rows = subsample_mask(bank_keys, min(cfg.max_probe, cfg.max_select or cfg.max_probe), cfg.seed)
    common = {"model": model_bytes, "spec": spec.to_dict(), "preprocess": pre, "s3": cfg.s3,
              "device": cfg.device, "precision": cfg.precision}
    log.info("calibrating on %d ID images: %d bank (%d for NormRatio, %d for the probe evidence), %d held-out",
             len(uris), bank_idx.size, int(select.sum()), int(evidence_rows.sum()), held_idx.size)

    # Phase 1: NormRatio terms and the bank detectors' rows over the bank part.
    bank = _bank_phase(cfg, common, uris, bank_idx, select, evidence_rows)
    failures = bank["failures"]
    n_bank = bank["views"].shape[0]
    if n_bank < max(cfg.k_knn, cfg.k_csd) or bank["count"] == 0:
        raise DataError(f"only {n_bank} bank images decoded ({len(failures)} failed); need at least {cfg.k_knn}")
    sources = bank_sources([uris[i] for i in bank["rows"]], bank["thumbs"])
    nr = ratios_from_sums(blocks, torch.from_numpy(np.asarray(bank["sums"], dtype=np.float64)), bank["count"])
    fid, fpr = bank["fn_id"], bank["fn_probe"]
    evidence = (probe_evidence(blocks, fid, fpr.reshape(fpr.shape[0], len(cfg.probes), len(blocks)), cfg.probes,
                               nr.ratios) if fid.shape[0] >= 2 else None)
    outliers = _outlier_evidence(cfg, common, [uris[i] for i in held_idx], blocks) if cfg.outliers else None
    block = cfg.block or choose_block(cfg.selector, nr.ratios, evidence, outliers)
    dets = make_detectors(("csd", "knn", "featurenorm2"), block=block, k_csd=cfg.k_csd, k_knn=cfg.k_knn,
                          bank_dtype=cfg.bank_dtype)
    dets["csd"].fit(bank["views"])
    dets["knn"].fit(bank["feats"])
    csd_state, csd_tensors = dets["csd"].state()
    knn_state, knn_tensors = dets["knn"].state()
    extra_states, extra_tensors = _spec15_detectors(bank, labels, labelled)
    log.info("NormRatio chose %s (R=%.4f) over %d images; selector %s -> %s; CSD bank %d x %d, kNN bank %d x %d",
             nr.selected, nr.ratios[nr.selected], bank["count"], cfg.selector, block, csd_state.bank_size,
             csd_state.dim, knn_state.bank_size, knn_state.dim)

    # Phase 2: held-out scores through the fitted detectors -> featurenorm2, thresholds, percentile tables.
    t2 = time.perf_counter()
    kw = {**common, "block": block, "states": {"csd": csd_state, "knn": knn_state, **extra_states},
          "banks": {"csd": {"bank": csd_tensors["bank"].numpy()}, "knn": {"bank": knn_tensors["bank"].numpy()},
                    **{k: {t: v.numpy() for t, v in ts.items()} for k, ts in extra_tensors.items()}},
          "knn_backend": cfg.knn_backend, "labelled": labelled}
    held_uris = [uris[i] for i in held_idx]
    held_scores, held_failures = score_images(kw, held_uris, workers=cfg.workers, batch_size=cfg.batch_size,
                                              device=cfg.device, what="calibrate, held-out phase")
    failed = {u for u, _, _ in held_failures}
    heldout = {"uri": np.array([u for u in held_uris if u not in failed], dtype=object),
               "csd_view": held_scores.pop("csd_view", np.zeros(0)).astype(np.int64),
               "pred_class": held_scores.pop("pred_class", np.zeros(0)),  # NaN when unlabelled: no class
               "nn_dist": held_scores.pop("nn_dist", np.zeros(0)),
               "laplacian_var": held_scores.pop("laplacian_var", np.zeros(0)),
               "grayscale": held_scores.pop("grayscale", np.zeros(0))}
    failures += held_failures
    t_held = time.perf_counter() - t2
    n_held = len(held_scores.get("featurenorm", ()))
    if n_held < cfg.min_heldout:
        raise DataError(f"only {n_held} held-out images decoded; need at least {cfg.min_heldout}")
    fn2 = dets["featurenorm2"].fit(held_scores["featurenorm"])  # SPEC §10: held-out, not the bank images
    held_scores = {k: v for s, arr in held_scores.items()
                   for k, v in ([(s, arr), ("featurenorm2", fn2.values(arr).numpy())] if s == "featurenorm"
                                else [(s, arr)])
                   if k in DETECTORS}
    asked = cfg.flag_on if cfg.flag_on is not None else DEFAULT_FLAG_ON
    flag_on, reason = resolve_flag_on([s for s in asked if s in held_scores], evidence, cfg.flag_on is not None)
    flag_th, alpha = union_thresholds(held_scores, flag_on, cfg.id_flag_rate)
    lap = heldout["laplacian_var"][np.isfinite(heldout["laplacian_var"])]
    quality = (QualityPart(blurry=blurry_threshold(lap, BLURRY_PERCENTILE), blurry_percentile=BLURRY_PERCENTILE,
                           heldout_images=int(lap.size), grayscale_share=grayscale_share(heldout["grayscale"]))
               if lap.size else None)
    nn = heldout["nn_dist"][np.isfinite(heldout["nn_dist"])]
    near_dup = near_duplicate_threshold(nn) if nn.size else None
    if labelled:
        heldout["pred_class"] = heldout["pred_class"].astype(np.int64)
    per_class = (per_class_thresholds(held_scores, heldout["pred_class"], flag_on, cfg.id_flag_rate,
                                      min_images=cfg.per_class_min_images, num_classes=spec.num_classes)
                 if cfg.per_class_thresholds else None)
    selection = selection_meta(selector=cfg.selector, selected=block, forced=cfg.block is not None, ratios=nr.ratios,
                               images=bank["count"], seed=cfg.seed, grid=3, evidence=evidence, outliers=outliers,
                               notes=[reason] if reason else [], post_relu=taps.post_relu)
    info = BundleMeta(
        model=spec.to_dict(), training=training,
        preprocess=pre, precision={"activations": cfg.precision}, selection=selection,
        featurenorm2=fn2.state()[0], csd=csd_state,
        knn=knn_state.model_copy(update={"sources": BANK_SOURCES}),
        mahalanobis=extra_states.get("mahalanobis++"), scale=extra_states.get("scale"),
        thresholds={"target_id_flag_rate": cfg.id_flag_rate, "heldout_images": n_held,
                    "per_score": {s: threshold_at(v, cfg.id_flag_rate) for s, v in held_scores.items()},
                    "flag_on": flag_on, "flag": flag_th, "flag_alpha": alpha, "flag_on_reason": reason},
        heldout_quantiles={s: quantile_table(v) for s, v in held_scores.items()},
        heldout_stats={s: score_stats(v) for s, v in held_scores.items()},
        split={"method": split_method, "heldout_fraction": cfg.heldout_fraction, "seed": cfg.seed,
               "bank_images": n_bank, "heldout_images": n_held, "heldout_unseen": unseen, "heldout_note": note},
        data={"source": cfg.data, "listed_images": len(uris), "skipped_non_images": skipped_ext,
              "decode_failures": len(failures)},
        quality=quality, near_duplicates=near_dup, per_class=per_class, labelled=labelled,
        weights=read_weights_provenance(cfg.model, model_bytes, cfg.s3))
    meta = info.to_json()
    uri = write_bundle(cfg.output, meta, s3=cfg.s3, files={"model.safetensors": model_bytes, BANK_SOURCES: sources},
                       tensors={csd_state.file: csd_tensors, knn_state.file: knn_tensors,
                                **{extra_states[k].file: t for k, t in extra_tensors.items()}})
    total = time.perf_counter() - t0
    summary = {"bundle": uri, "images": len(uris), "labelled": labelled, "selector": cfg.selector, "selected_block": block,
               "selection_warnings": selection.warnings, "flag_on": flag_on, "failures": failures[:20],
               "blurry_threshold": quality.blurry if quality else None,
               "grayscale_id_share": quality.grayscale_share if quality else None,
               "near_duplicate_threshold": near_dup.threshold if near_dup else None,
               "per_class_fallback": dict(per_class.fallback) if per_class else None,
               "failure_count": len(failures),
               "seconds": {"total": round(total, 2), "bank_phase": round(bank["seconds"], 2),
                           "heldout_phase": round(t_held, 2)},
               "bank_workers": bank["workers"],
               "img_per_s": round((n_bank + n_held) / max(bank["seconds"] + t_held, 1e-9), 1)}
    return CalibrateResult(uri, uri.rstrip("/").rsplit("/", 1)[-1], meta, summary, info, {**heldout, **held_scores})


def _outlier_evidence(cfg: CalibrateConfig, common: dict[str, Any], held_uris: list[str],
                      blocks: list[str]) -> OutlierEvidence:
    """FN at every block of the known outliers and of (up to ``max_probe``) held-out ID images."""
    out_uris, _ = list_id_images(cfg.outliers, cfg.s3)  # type: ignore[arg-type]
    keys = [object_key(u, cfg.data) for u in held_uris]
    ref = [u for u, m in zip(held_uris, subsample_mask(keys, cfg.max_probe, cfg.seed)) if m]
    table = pa.table({"uri": ref + out_uris, "index": pa.array(np.arange(len(ref) + len(out_uris)), pa.int64())})
    norms = np.full((table.num_rows, len(blocks)), np.nan)
    for out in run_phase(NormWorker, common, table, workers=cfg.workers, batch_size=cfg.batch_size,
                         device=cfg.device):
        ok = out["status"] == "ok"
        norms[out["index"][ok]] = out["norms"][ok]
    good = np.isfinite(norms).all(axis=1)
    fid, fout = norms[: len(ref)][good[: len(ref)]], norms[len(ref):][good[len(ref):]]
    if fout.shape[0] < MIN_OUTLIERS or fid.shape[0] < 20:
        raise DataError(f"--outliers {cfg.outliers}: {fout.shape[0]} outlier and {fid.shape[0]} held-out ID images "
                        f"decoded; need >= {MIN_OUTLIERS} outliers (a few dozen is better) and >= 20 held-out ID")
    res = outlier_evidence(blocks, fid, fout, source=cfg.outliers, decode_failures=int((~good[len(ref):]).sum()))
    log.info("known outliers: %d from %s against %d held-out ID images", res.outliers, cfg.outliers, res.id_images)
    return res
