"""Audits without labels and the weights' provenance (SPEC §16), on real images.

The backbone is trained here on one real task, scikit-learn digits 0-4 (a small_input ResNet-18, two epochs);
the ID data of the audit is another: digits 5-9 in a flat prefix, no class folders, so the model's head knows
none of its classes. Calibration then fits the label-free detectors only, and a real Ray scan of the demo's
real outlier kinds (letters, photo crops, textures, faces, noise) against unseen digits 5-9 is scored with
them and reported.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ood_audit import build_model, save_weights
from ood_audit.bundle.files import load_bundle
from ood_audit.bundle.provenance import provenance_lines, read_weights_provenance
from ood_audit.bundle.write import write_bundle
from ood_audit.cli import main
from ood_audit.demo.data import OUTLIER_KINDS, demo_files, digit_variants
from ood_audit.metrics import ood_metrics
from ood_audit.models import ModelSpec
from ood_audit.scores.detectors import LOGIT_DETECTORS

from tests.datagen import png_bytes, upload, write_local

SPEC = ModelSpec("resnet18", 5, small_input=True, image_size=32)
RECIPE = {"mode": "ce", "epochs": 2, "lr": 0.002, "optimizer": "adam"}
LABEL_FREE = {"featurenorm", "featurenorm2", "csd", "knn"}


def _train_on_digits_0_to_4(images: np.ndarray, labels: np.ndarray) -> torch.nn.Module:
    """Two epochs of plain cross-entropy (Adam) on real digits 0-4: a backbone trained on other data."""
    torch.manual_seed(0)
    model = build_model("resnet18", 5, small_input=True)
    mean, std = torch.tensor(SPEC.mean).view(1, 3, 1, 1), torch.tensor(SPEC.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y = torch.from_numpy(labels).long()
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    model.train()
    for _ in range(RECIPE["epochs"]):
        for idx in torch.randperm(len(x), generator=torch.Generator().manual_seed(1)).split(50):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """(root, the backbone's weights, the flat ID prefix of digits 5-9, 60 unseen digits 5-9 as files)."""
    root = tmp_path_factory.mktemp("unlabelled")
    images, labels = digit_variants(1797, seed=0)  # the 1797 real originals, shuffled
    other, own = labels < 5, labels >= 5
    model = _train_on_digits_0_to_4(images[other][:250], labels[other][:250])
    weights = root / "m" / "backbone.safetensors"
    weights.parent.mkdir()
    save_weights(model, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    # the sidecar ``ood-audit train`` writes, with its provenance record (format of issue 22)
    weights.with_suffix(".json").write_text(json.dumps({
        **SPEC.to_dict(), "sha256": digest, "run_name": "digits-0-4",
        "provenance": {"how": "trained", "source": None, "source_sha256": None, "run": "digits-0-4",
                       "init": None, "init_sha256": None, "recipe": RECIPE}}))
    id_images = images[own]
    flat = write_local(root / "id", {f"{i:04d}.png": png_bytes(a) for i, a in enumerate(id_images[:150])})
    unseen = {f"digits/{i:04d}.png": png_bytes(a) for i, a in enumerate(id_images[150:210])}
    return root, weights, flat, unseen


@pytest.fixture(scope="module")
def calibrated(unlabelled):
    """Calibrated by the CLI on the flat prefix, without --unlabelled: unlabelled with a notice."""
    import contextlib
    import io
    import logging

    root, weights, flat, _ = unlabelled
    notices = io.StringIO()
    handler = logging.StreamHandler(notices)
    logging.getLogger("ood_audit").addHandler(handler)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = main(["calibrate", "--data", str(flat), "--model", str(weights), "--output", str(root / "out"),
                       "--workers", "0", "--heldout-fraction", "0.3", "--k-knn", "10", "--max-select", "60",
                       "--max-probe", "10", "--probes", "jigsaw", "--selector", "normratio"])
    finally:
        logging.getLogger("ood_audit").removeHandler(handler)
    assert rc == 0
    return out.getvalue().strip().splitlines()[-1], notices.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_flat_prefix_calibrates_the_label_free_detectors_only(calibrated):
    uri, notices = calibrated
    lines = [ln for ln in notices.splitlines() if "without labels" in ln]
    assert len(lines) == 1 and "--unlabelled" in lines[0]
    info = load_bundle(uri).info
    assert info.labelled is False
    assert set(info.thresholds.per_score) == LABEL_FREE  # the label-free detectors, no logit score
    assert set(info.heldout_quantiles) == LABEL_FREE
    assert info.csd is not None and info.knn is not None and info.featurenorm2 is not None
    assert info.per_class is None
    # the rest as usual: block selection, thresholds, the quality calibration and near-duplicate tau
    assert info.selection.selected in info.selection.ratios
    assert set(info.thresholds.flag_on) <= LABEL_FREE and info.thresholds.flag
    assert info.quality is not None and info.near_duplicates is not None


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.timeout(400)
def test_scan_of_real_outliers_separates_them_on_csd_and_reports_no_class(
        unlabelled, calibrated, ray_local, s3_client, s3_bucket, s3_config):
    from ood_audit.report import ReportOptions, build_report, render_html
    from ood_audit.scan import ScanConfig, run_scan
    from ood_audit.store.runs import find_run, run_dataset

    _, _, _, unseen = unlabelled
    uri, _ = calibrated
    _, incoming, _ = demo_files(seed=5, n_incoming_digits=1, per_kind=20)
    files = {**unseen, **{k: v for k, v in incoming.items() if k.split("/")[0] in OUTLIER_KINDS}}
    inputs = upload(s3_client, s3_bucket, "incoming", files)
    output = f"s3://{s3_bucket}/audit"
    run_scan(ScanConfig(bundle=uri, output=output, inputs=(inputs,), s3=s3_config, run_id="night-1",
                        chunk_size=64, batch_size=32, workers=1, read_threads=4))
    rows = run_dataset(find_run(output, "night-1", s3=s3_config), s3=s3_config).to_table().to_pylist()
    assert len(rows) == len(files) and all(r["status"] == "ok" for r in rows)
    assert all(r["pred_class"] is None for r in rows)  # no class was predicted
    assert all(r[s] is None for r in rows for s in LOGIT_DETECTORS if s in r)
    assert all(np.isfinite(r["csd"]) and r["flagged"] is not None for r in rows)
    kind = [r["uri"][len(inputs) + 1:].split("/")[0] for r in rows]
    csd = np.array([r["csd"] for r in rows])
    is_id = np.array([k == "digits" for k in kind])
    per_kind = {k: ood_metrics(csd[is_id], csd[np.array(kind) == k])["auroc"] for k in OUTLIER_KINDS}
    pooled = ood_metrics(csd[is_id], csd[~is_id])
    print(f"CSD AUROC unseen digits 5-9 vs outliers: pooled {pooled['auroc']:.3f}, FPR95 {pooled['fpr95']:.3f}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in per_kind.items()))
    assert pooled["auroc"] > 0.9

    data = build_report(output, "night-1", s3=s3_config, options=ReportOptions(top=12))
    assert not data.labelled and data.grid
    shown = {c.score for it in data.grid for c in it.scores} | {h.score for h in data.histograms}
    assert "csd" in shown and shown <= LABEL_FREE  # no logit score is shown
    page = render_html(data)
    assert "No class was predicted" in page and "predicted class" not in page


def _calibrate_argv(tmp_path, *extra):
    return ["calibrate", "--data", str(tmp_path / "id"), "--model", str(tmp_path / "m.safetensors"),
            "--output", str(tmp_path / "o"), "--workers", "0", *extra]


@pytest.mark.parametrize("extra, flag", [
    (["--unlabelled", "--per-class-thresholds"], "--per-class-thresholds"),
    (["--unlabelled", "--flag-on", "csd,msp"], "--flag-on msp"),
    (["--unlabelled", "--flag-on", "energy"], "--flag-on energy"),
    (["--per-class-thresholds"], "--per-class-thresholds"),  # no class folders: unlabelled, so refused too
])
def test_what_needs_labels_is_refused_in_one_line(tmp_path, capsys, extra, flag):
    write_local(tmp_path / "id", {"a.png": png_bytes(np.zeros((8, 8, 3), np.uint8))})
    assert main(_calibrate_argv(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0]


def test_weights_provenance_is_read_only_when_the_sidecar_describes_these_weights(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights bytes")
    digest = hashlib.sha256(b"weights bytes").hexdigest()
    p = read_weights_provenance(str(weights), weights.read_bytes())
    assert p.how == "unknown" and p.sha256 == digest and p.note is None  # no sidecar
    record = {"sha256": digest, "provenance": {"how": "imported", "source": "/models/resnet50.pth",
                                               "source_sha256": "ab" * 32, "recipe": None}}
    (tmp_path / "w.json").write_text(json.dumps(record))
    p = read_weights_provenance(str(weights), weights.read_bytes())
    assert (p.how, p.source, p.source_sha256, p.sha256) == ("imported", "/models/resnet50.pth", "ab" * 32, digest)
    text = "\n".join(provenance_lines(p))
    assert f"imported from /models/resnet50.pth (sha256 {'ab' * 32})" in text and digest in text
    (tmp_path / "w.json").write_text(json.dumps({**record, "sha256": "0" * 64}))  # beside other weights
    p = read_weights_provenance(str(weights), weights.read_bytes())
    assert p.how == "unknown" and p.sha256 == digest and "describes other weights" in p.note


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bundle_records_and_shows_the_weights_provenance(unlabelled, calibrated, capsys):
    _, weights, _, _ = unlabelled
    uri, _ = calibrated
    w = load_bundle(uri).info.weights
    assert w is not None and w.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (w.how, w.run, w.init, w.recipe) == ("trained", "digits-0-4", None, RECIPE)
    capsys.readouterr()
    assert main(["bundle", "show", uri]) == 0
    out = capsys.readouterr().out
    assert "weights: trained by run digits-0-4 from scratch" in out and w.sha256 in out
    assert "recipe: " + ", ".join(f"{k}={v}" for k, v in sorted(RECIPE.items())) in out  # canonical JSON: sorted
    assert "labels: none" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_bundle_written_before_labelled_and_provenance_still_loads(calibrated, tmp_path, capsys):
    uri, _ = calibrated
    b = load_bundle(uri)
    meta = {k: v for k, v in b.meta.items() if k not in ("labelled", "weights")}
    old = write_bundle(str(tmp_path), meta, files={n: b.file_bytes(n) for n in b.files})
    info = load_bundle(old).info
    assert info.labelled is True and info.weights is None  # read as before: labelled, no provenance
    capsys.readouterr()
    assert main(["bundle", "show", old]) == 0
    assert "provenance not recorded" in capsys.readouterr().out
