import json

import numpy as np
import pytest
import torch

from ood_audit import build_model, norm_ratio, save_weights
from ood_audit.bundle.files import load_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate, list_id_images
from ood_audit.calibration.split import heldout_mask
from ood_audit.io.uri import object_key
from ood_audit.flagging.thresholds import flags, percentile, quantile_table, threshold_at, union_thresholds
from ood_audit.cli import main
from ood_audit.io.dataset import decode_dataset
from ood_audit.models import ModelSpec

from tests.datagen import labelled_images, upload, write_local

SPEC = ModelSpec("resnet18", 2, small_input=True, image_size=32)


def _model_files(root):
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    save_weights(build_model("resnet18", 2, small_input=True), root / "model.safetensors")
    (root / "model.json").write_text(json.dumps(SPEC.to_dict()))
    return str(root / "model.safetensors")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_distributed_calibration_on_s3_matches_single_process(ray_local, s3_client, s3_bucket, s3_config, tmp_path):
    data = upload(s3_client, s3_bucket, "id", labelled_images(60, seed=1))
    s3_client.put_object(Bucket=s3_bucket, Key="id/class0/broken.png", Body=b"\x89PNG garbage")
    model = _model_files(tmp_path / "m")
    cfg = CalibrateConfig(data=data, model=model, output=f"s3://{s3_bucket}/audit", heldout_fraction=0.2,
                          workers=2, batch_size=16, s3=s3_config, k_knn=10, selector="normratio",
                          min_heldout=5)
    res = calibrate(cfg)
    assert res.summary["bank_workers"] == 2  # both actors did work
    assert res.bundle_uri.startswith(f"s3://{s3_bucket}/audit/bundles/")
    b = load_bundle(res.bundle_uri, s3=s3_config)
    info = b.info
    assert info.data is not None and info.data.decode_failures == 1

    # single-process NormRatio over the same bank images, with the same global indices and seed
    uris, _ = list_id_images(data, s3_config)
    held = heldout_mask([object_key(u, data) for u in uris], 0.2, 0)  # keys under the data root
    bank = [(i, u) for i, u in enumerate(uris) if not held[i] and not u.endswith("broken.png")]
    dec = decode_dataset([u for _, u in bank], size=32, s3=s3_config)
    x = torch.from_numpy(dec.images).permute(0, 3, 1, 2).float() / 255
    idx = torch.tensor([i for i, _ in bank])
    ref = norm_ratio(SPEC.build(b.tensors("model.safetensors")), [{"image": x, "index": idx}], seed=0,
                     mean=SPEC.mean, std=SPEC.std)
    assert info.selection.images == ref.count == len(bank)
    for blk, r in ref.ratios.items():
        assert info.selection.ratios[blk] == pytest.approx(r, rel=1e-6)
    assert info.selection.selected == ref.selected
    assert info.csd is not None and info.knn is not None
    assert info.csd.bank_size == 6 * len(bank) and info.knn.bank_size == len(bank)
    assert b.tensors("csd_bank.safetensors")["bank"].shape == (6 * len(bank), 512)
    th = info.thresholds
    assert set(th.per_score) == {"featurenorm", "featurenorm2", "msp", "energy", "maxlogit", "msp+fn", "energy+fn",
                                    "csd", "knn", "scale", "mahalanobis++"}  # a labelled calibration: SPEC §15's too
    assert info.selection.evidence is not None
    assert info.selection.evidence.images == len(bank)  # probe evidence gathered across both actors
    broken_held = sum(bool(held[i]) for i, u in enumerate(uris) if u.endswith("broken.png"))
    assert th.heldout_images == int(held.sum()) - broken_held


@pytest.mark.timeout(300)
def test_same_content_same_bundle_id_and_show(tmp_path, capsys):
    data = str(write_local(tmp_path / "id", labelled_images(40, seed=2)))
    model = _model_files(tmp_path / "m")
    cfg = CalibrateConfig(data=data, model=model, output=str(tmp_path / "out"), heldout_fraction=0.3,
                          workers=0, k_knn=5, min_heldout=10)
    a, b = calibrate(cfg), calibrate(cfg)
    assert a.bundle_id == b.bundle_id
    assert len(list((tmp_path / "out" / "bundles").iterdir())) == 1
    assert main(["bundle", "show", a.bundle_uri]) == 0
    out = capsys.readouterr().out
    assert "<- selected" in out and "thresholds at target ID false-flag rate 0.05" in out
    c = calibrate(CalibrateConfig(**{**cfg.__dict__, "seed": 1}))
    assert c.bundle_id != a.bundle_id


def test_bad_calibrate_arguments_are_one_line(tmp_path, capsys):
    rc = main(["calibrate", "--data", str(tmp_path), "--model", str(tmp_path / "m.safetensors"),
               "--output", str(tmp_path), "--heldout-fraction", "2", "--workers", "0"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heldout_fraction" in err[0]


def test_threshold_keeps_target_rate_and_percentiles():
    rng = np.random.default_rng(0)
    s = rng.normal(size=1000)
    t = threshold_at(s, 0.05)
    assert np.mean(s < t) == pytest.approx(0.05, abs=1e-9)  # exactly floor(0.05*1000) below
    table = quantile_table(s)
    p = percentile(np.array([t, s.min() - 1, s.max() + 1, np.median(s)]), table)
    assert p[0] == pytest.approx(5.0, abs=0.2) and p[1] == 0 and p[2] == 100 and p[3] == pytest.approx(50, abs=0.2)


def test_union_thresholds_hold_the_joint_rate():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=2000), rng.normal(size=2000)  # independent: naive union would flag ~9.75%
    th, alpha = union_thresholds({"a": a, "b": b}, ["a", "b"], 0.05)
    flagged, reasons = flags({"a": a, "b": b}, th, ["a", "b"])
    assert 0.04 <= flagged.mean() <= 0.05
    assert alpha < 0.05
    assert all(bool(r) == f for r, f in zip(reasons, flagged))


@pytest.mark.timeout(300)
def test_bundle_carries_the_models_validation_accuracy(tmp_path, capsys):
    """`train` writes <stem>.json with the weights' sha256 and validation figures; calibrate copies them into
    the bundle and `bundle show` prints them, but only for the weights that json describes."""
    import hashlib

    data = str(write_local(tmp_path / "id", labelled_images(50, seed=3)))
    root = tmp_path / "m"
    root.mkdir()
    torch.manual_seed(0)
    weights = root / "digits.safetensors"
    save_weights(build_model("resnet18", 2, small_input=True), weights)
    record = {**SPEC.to_dict(), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "val_accuracy": 0.975,
              "val_loss": 0.08, "chance_accuracy": 0.5, "epochs": 10, "mode": "ce", "run_name": "r1", "warning": None,
              "validation": {"fraction": 0.1, "images_scored": 6}}
    (root / "digits.json").write_text(json.dumps(record))
    cfg = CalibrateConfig(data=data, model=str(weights), output=str(tmp_path / "out"), heldout_fraction=0.3,
                          workers=0, k_knn=5, min_heldout=10)
    res = calibrate(cfg)
    assert res.info.training is not None
    assert res.info.training.val_accuracy == 0.975 and res.info.training.val_images == 6
    stored = load_bundle(res.bundle_uri).info.training
    assert stored is not None and stored.run_name == "r1"
    assert main(["bundle", "show", res.bundle_uri]) == 0
    assert "model validation accuracy: 0.975 on 6 held-out images, chance 0.500" in capsys.readouterr().out
    # The same json beside other weights describes nothing about them.
    (root / "digits.json").write_text(json.dumps({**record, "sha256": "0" * 64}))
    other = calibrate(CalibrateConfig(**{**cfg.__dict__, "output": str(tmp_path / "out2")}))
    assert other.info.training is None and other.meta.get("training", "absent") is None  # stored as null
    assert main(["bundle", "show", other.bundle_uri]) == 0
    assert "model validation accuracy: not recorded" in capsys.readouterr().out
