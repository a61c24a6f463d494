"""Human-readable summary of an audit bundle (`ood-audit bundle show`)."""
from __future__ import annotations

from typing import Any

from ood_audit.calibration.evidence_view import evidence_lines
from ood_audit.bundle.provenance import provenance_lines
from ood_audit.bundle.schema import BundleMeta, SelectionPart, TrainingPart


def format_bundle(b: Any) -> str:
    """``b``: a loaded bundle; its typed metadata (:class:`~ood_audit.bundle.schema.BundleMeta`) is shown."""
    m: BundleMeta = b.info
    mod, th = m.model, m.thresholds
    lines = [f"bundle {b.id}", f"  uri: {b.uri}",
             f"  created: {b.provenance.get('created_at', '?')}",
             f"  model: {mod.arch} ({mod.num_classes} classes, {mod.image_size} px"
             f"{', small input' if mod.small_input else ''}); {m.precision.activations} activations",
             _training_line(m.training)]
    if not m.labelled:
        lines.append("  labels: none (calibrated on unlabelled ID images, SPEC §16): featurenorm, featurenorm2, csd "
                     "and knn only; no class is predicted")
    lines += [*provenance_lines(m.weights), ""]
    lines += _selection_lines(m.selection)
    lines += ["", f"thresholds at target ID false-flag rate {th.target_id_flag_rate} "
                  f"(held-out {th.heldout_images} images; flagged = any of {th.flag_on} below its "
                  f"flag threshold, union calibrated at alpha {th.flag_alpha:.4f})"]
    if m.split is not None and m.split.heldout_note:
        lines.append(f"  {m.split.heldout_note}")
    if th.flag_on_reason:
        lines.append(f"  flag_on: {th.flag_on_reason}")
    for s, t in th.per_score.items():
        extra = f"   flag threshold {th.flag[s]:.6g}" if s in th.flag else ""
        lines.append(f"  {s:<12} {t:>14.6g}{extra}")
    fn2 = m.featurenorm2
    if fn2:
        lines.append(f"  featurenorm2 = -|log FN - {fn2.center:.6g}| / {fn2.scale:.6g} "
                     f"(median, MAD of log FN at {fn2.block} over {fn2.heldout_images} held-out ID images)")
    if m.scale:
        lines.append(f"  scale = logsumexp(W a·exp(r) + b), r = sum a / sum a above its own p-th percentile, "
                     f"p = {m.scale.percentile:g} ({m.scale.source})")
    if m.mahalanobis:
        mp = m.mahalanobis
        lines.append(f"  mahalanobis++ = -min_c (z - mu_c)^T (Sigma + eps I)^-1 (z - mu_c), z = f / ||f||: {mp.classes} "
                     f"class means and one covariance over {mp.bank_images} bank images x {mp.dim}, eps = "
                     f"{mp.epsilon:.3g} (Ledoit-Wolf shrinkage {mp.shrinkage:.3f})")
    lines.append("")
    for label, bank in (("CSD", m.csd), ("kNN", m.knn)):
        if bank:
            lines.append(f"{label} bank: {bank.bank_size} x {bank.dim} ({bank.dtype}, k={bank.k}, "
                         f"{bank.index.type})")
    lines.append("files: " + ", ".join(f"{n} ({f['bytes']} B)" for n, f in sorted(b.files.items())))
    return "\n".join(lines)


def _training_line(t: TrainingPart | None) -> str:
    if t is None or t.val_accuracy is None:
        return "  model validation accuracy: not recorded (weights not trained by ood-audit train, or no split)"
    chance = f", chance {t.chance_accuracy:.3f}" if t.chance_accuracy is not None else ""
    line = (f"  model validation accuracy: {t.val_accuracy:.3f} on {t.val_images} held-out images{chance} "
            f"(run {t.run_name}, {t.mode}, {t.epochs} epochs)")
    return line + (f"\n  WARNING: {t.warning}" if t.warning else "")


def _selection_lines(sel: SelectionPart) -> list[str]:
    ratios = sel.ratios
    forced = " (forced with --block)" if sel.forced else ""
    lines = [f"block selection: {sel.selector} selected {sel.selected}{forced}; NormRatio over "
             f"{sel.images} images, seed {sel.seed}"]
    if sel.blocks_post_relu is False:
        lines.append("  this family's blocks are not post-ReLU: FeatureNorm takes the ReLU of each block's output "
                     "(SPEC §16); read its evidence below before flagging on it")
    if sel.choices:
        lines.append("  choices: " + ", ".join(f"{k} -> {v}" for k, v in sel.choices.items()))
    if sel.evidence is not None or sel.outliers is not None:
        lines += evidence_lines(sel)
    else:  # bundles written before the evidence existed
        best = max(ratios.values()) if ratios else 1.0
        for blk, r in ratios.items():
            mark = " <- selected" if blk == sel.selected else ""
            mark += " (NormRatio choice)" if blk == sel.normratio_choice and blk != sel.selected else ""
            bar = "#" * max(1, int(30 * r / best)) if best > 0 else ""
            lines.append(f"  {blk:<28} R={r:8.4f} {bar}{mark}")
    for w in sel.warnings:
        lines.append(f"  WARNING: {w}")
    return lines
