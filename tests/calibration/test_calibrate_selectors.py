"""Calibrate with each selector through the CLI (in-process, no Ray): evidence, outliers, featurenorm2."""
import json

import numpy as np
import pytest
import torch

from ood_audit import build_model, save_weights
from ood_audit.bundle.files import load_bundle
from ood_audit.calibration.calibrate import list_id_images
from ood_audit.bundle.scorer import scorer_from_bundle
from ood_audit.calibration.split import heldout_mask
from ood_audit.io.uri import object_key
from ood_audit.flagging.thresholds import threshold_at
from ood_audit.cli import main
from ood_audit.io.dataset import decode_dataset
from ood_audit.models import ModelSpec
from ood_audit.scores.featurenorm import feature_norm_two_sided

from tests.datagen import labelled_images, png_bytes, write_local


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("selectors")
    # 120 images: at --heldout-fraction 0.35 the held-out count (binomial, mean 42) clears the 20 minimum
    # by four standard deviations whatever the temporary path the split hashes.
    data = write_local(root / "id", labelled_images(60, seed=3))
    rng = np.random.default_rng(0)
    write_local(root / "outliers", {f"o{i}.png": png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                                    for i in range(12)})
    torch.manual_seed(0)
    (root / "m").mkdir()
    save_weights(build_model("resnet18", 2, small_input=True), root / "m" / "model.safetensors")
    (root / "m" / "model.json").write_text(json.dumps(ModelSpec("resnet18", 2, True, 32).to_dict()))
    return root, data


def _calibrate(root, data, capsys, *extra):
    argv = ["calibrate", "--data", str(data), "--model", str(root / "m" / "model.safetensors"),
            "--output", str(root / "out"), "--workers", "0", "--heldout-fraction", "0.35", "--k-knn", "5",
            "--flag-on", "featurenorm2,csd", *extra]
    assert main(argv) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.timeout(300)
def test_robust_selector_is_recorded_with_evidence_and_featurenorm2(setup, capsys):
    root, data = setup
    uri = _calibrate(root, data, capsys, "--selector", "robust", "--probes", "jigsaw,blur,noise")
    b = load_bundle(uri)
    sel = b.info.selection
    assert sel.selector == "robust" and sel.selected == sel.choices["robust"]
    assert sel.evidence is not None and sel.evidence.probes == ["jigsaw", "blur", "noise"]
    assert sel.evidence.images == sel.images  # max_probe >= bank: every NormRatio image
    assert set(sel.evidence.per_block) == set(sel.ratios)
    assert sel.outliers is None
    th = b.info.thresholds
    assert "featurenorm2" in th.per_score and "featurenorm2" in b.info.heldout_quantiles
    assert th.flag_on == ["featurenorm2", "csd"]
    fn2 = b.info.featurenorm2
    assert fn2 is not None and fn2.block == sel.selected and fn2.scale > 0 and fn2.heldout_images == th.heldout_images

    # the scan's scorer, built from the bundle alone, reproduces the held-out featurenorm2 threshold
    scorer = scorer_from_bundle(b)
    assert "featurenorm2" in scorer.score_names
    uris, _ = list_id_images(str(data), None)
    held = [u for u, h in zip(uris, heldout_mask([object_key(u, str(data)) for u in uris], 0.35, 0)) if h]
    x = torch.from_numpy(decode_dataset(held, size=32).images).permute(0, 3, 1, 2)
    s = scorer(x)
    np.testing.assert_array_equal(s["featurenorm2"], feature_norm_two_sided(torch.from_numpy(s["featurenorm"]),
                                                                            fn2.center, fn2.scale).numpy())
    assert threshold_at(s["featurenorm2"], 0.05) == pytest.approx(th.per_score["featurenorm2"], rel=1e-9)
    assert np.median(np.log(s["featurenorm"].astype(np.float64))) == pytest.approx(fn2.center, rel=1e-9)


@pytest.mark.timeout(300)
def test_validated_selector_records_outliers_and_show_prints_evidence(setup, capsys):
    root, data = setup
    uri = _calibrate(root, data, capsys, "--selector", "validated", "--outliers", str(root / "outliers"),
                     "--max-probe", "20")
    sel = load_bundle(uri).info.selection
    assert sel.selector == "validated"
    assert sel.outliers is not None and sel.evidence is not None
    assert sel.outliers.outliers == 12 and sel.outliers.source == str(root / "outliers")
    assert sel.outliers.id_images == 20  # held-out ID reference capped by --max-probe
    assert sel.selected == sel.choices["validated"]
    assert sel.evidence.images == 20
    assert any("only 12 known outliers" in w for w in sel.warnings)
    assert main(["bundle", "show", uri]) == 0
    out = capsys.readouterr().out
    assert "block selection: validated selected" in out and "known outliers: 12 images" in out
    assert "<- selected" in out and "jigsaw" in out and "worst probe AUROC per block" in out
    assert "WARNING: only 12 known outliers" in out
    assert "featurenorm2 = -|log FN" in out


def test_validated_without_outliers_is_one_line(setup, capsys):
    root, data = setup
    rc = main(["calibrate", "--data", str(data), "--model", str(root / "m" / "model.safetensors"),
               "--output", str(root / "x"), "--workers", "0", "--selector", "validated"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--outliers" in err[0]
