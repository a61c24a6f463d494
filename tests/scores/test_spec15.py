"""SPEC §15's Mahalanobis++ and SCALE: each formula against an independent float64 numpy reference, the
inversion on ill-conditioned features, and the bundle round trip on real digits: calibration fits and records
them, and the scan's scorer reproduces calibration's held-out scores exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ood_audit import build_model, save_weights
from ood_audit.bundle.files import open_bundle
from ood_audit.bundle.scorer import scorer_from_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate, list_id_images
from ood_audit.calibration.split import heldout_mask
from ood_audit.demo.data import write_digit_folders
from ood_audit.errors import ConfigError
from ood_audit.flagging.thresholds import quantile_table
from ood_audit.io.decode import Preprocess, decode_image
from ood_audit.io.uri import object_key
from ood_audit.models import ModelSpec
from ood_audit.scores.detectors import MahalanobisPP, Scale
from ood_audit.scores.mahalanobis import fit_shared_gaussian, mahalanobis_pp, precision_of
from ood_audit.scores.scale import scale_energy, scale_ratio


def _ledoit_wolf(centred, sigma):
    """Ledoit & Wolf (2004)'s intensity, written from its definition: b² averages ‖x xᵀ − S‖²_F row by row."""
    n, d = centred.shape
    mu = np.trace(sigma) / d
    d2 = np.linalg.norm(sigma - mu * np.eye(d)) ** 2 / d
    b2 = sum(np.linalg.norm(np.outer(x, x) - sigma) ** 2 for x in centred) / (n * n * d)
    delta = min(b2, d2) / d2
    return delta, delta * mu / (1 - delta)


def _reference_mahalanobis(bank, labels, test):
    """The SPEC §15 formula written out with numpy, class by class, in float64."""
    z = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    classes = sorted(set(labels.tolist()))
    means = {c: z[labels == c].mean(0) for c in classes}
    centred = np.stack([z[i] - means[labels[i]] for i in range(len(z))])
    sigma = centred.T @ centred / len(z)
    _, eps = _ledoit_wolf(centred, sigma)
    inv = np.linalg.inv(sigma + eps * np.eye(sigma.shape[0]))
    q = test / np.linalg.norm(test, axis=1, keepdims=True)
    d = np.stack([np.einsum("nd,de,ne->n", q - means[c], inv, q - means[c]) for c in classes], axis=1)
    return -d.min(1), inv, eps


def test_mahalanobis_pp_matches_the_numpy_formula_on_class_structured_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 16))
    labels = rng.integers(0, 4, 400)
    bank = centres[labels] + rng.normal(0, 1, (400, 16)) * rng.uniform(0.2, 2.0, 16)  # unequal variances
    test = np.concatenate([centres[rng.integers(0, 4, 50)] + rng.normal(0, 1, (50, 16)),
                           rng.normal(0, 6, (50, 16))])  # in-class points and far ones
    bank = bank.astype(np.float32)  # what the calibration's bank holds
    want, want_inv, want_eps = _reference_mahalanobis(bank.astype(np.float64), labels, test)
    means, precision, classes, delta, eps = fit_shared_gaussian(bank, labels)
    assert 0 < delta < 1
    assert classes.tolist() == [0, 1, 2, 3] and eps == pytest.approx(want_eps, rel=1e-6)
    np.testing.assert_allclose(precision.numpy(), want_inv, rtol=1e-9, atol=1e-9 * np.abs(want_inv).max())
    got = mahalanobis_pp(torch.as_tensor(test, dtype=torch.float32), means, precision).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-4)
    assert got[:50].mean() > got[50:].mean()  # in-class points score higher (higher = ID)
    # the detector: fit on rows and labels, state round trip, the same scores
    det = MahalanobisPP().fit(bank, labels)
    part, tensors = det.state()
    assert (part.classes, part.dim, part.bank_images) == (4, 16, 400) and part.epsilon == pytest.approx(want_eps)
    back = MahalanobisPP.from_state(part, {k: v.clone() for k, v in tensors.items()})
    assert torch.equal(back.means, det.means) and torch.equal(back.precision, det.precision)


def test_inversion_holds_on_ill_conditioned_features():
    """Fewer bank images than dimensions, and nearly collinear features: Σ is singular; Σ + εI is inverted in
    float64 as numpy does it."""
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(5, 64))
    bank = rng.normal(size=(40, 5)) @ basis + 1e-6 * rng.normal(size=(40, 64))  # rank ~5 in 64 dims
    labels = np.repeat([0, 1], 20)
    z = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    means = np.stack([z[labels == c].mean(0) for c in (0, 1)])
    centred = z - means[labels]
    sigma = centred.T @ centred / len(z)
    assert np.linalg.cond(sigma) > 1e12  # as ill-conditioned as promised
    delta, eps = _ledoit_wolf(centred, sigma)
    assert 0 < delta < 1
    want = np.linalg.inv(sigma + eps * np.eye(64))
    got = precision_of(torch.as_tensor(sigma), eps).numpy()
    assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()
    _, precision, _, got_delta, got_eps = fit_shared_gaussian(bank, labels)
    assert (got_delta, got_eps) == (pytest.approx(delta), pytest.approx(eps))
    assert np.abs(precision.numpy() - want).max() <= 1e-9 * np.abs(want).max()


def test_scale_on_activation_vectors_with_a_known_ratio():
    # 17 activations of 1 and 3 of 10: the 85th percentile (linear interpolation, as numpy's) lies between 1
    # and 10, so exactly the three 10s are above it: r = 47 / 30.
    a = np.array([[1.0] * 17 + [10.0] * 3, [0.0] * 20, [2.0] * 20])
    assert np.percentile(a[0], 85) == pytest.approx(2.35)
    r = scale_ratio(torch.as_tensor(a, dtype=torch.float32), 85).numpy()
    np.testing.assert_allclose(r, [47 / 30, 1.0, 1.0], rtol=1e-6)  # nothing above the percentile: not rescaled
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(3, 20)), rng.normal(size=3)
    scaled = a * np.exp(np.array([47 / 30, 1.0, 1.0]))[:, None]
    logits = scaled @ w.T + b
    want = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    got = scale_energy(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(w, dtype=torch.float32),
                       torch.as_tensor(b, dtype=torch.float32), 85).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    part, _ = Scale(85).state()
    assert Scale.from_state(part).percentile == 85.0 and "85" in part.source


@pytest.mark.timeout(300)
def test_calibration_records_both_and_the_scan_reproduces_the_heldout_scores(tmp_path):
    spec = ModelSpec("resnet18", 10, small_input=True, image_size=32)
    data = write_digit_folders(tmp_path / "digits", 120, seed=0)
    torch.manual_seed(0)
    (tmp_path / "m").mkdir()
    save_weights(build_model("resnet18", 10, small_input=True), tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "model.json").write_text(json.dumps(spec.to_dict()))
    res = calibrate(CalibrateConfig(data=str(data), model=str(tmp_path / "m" / "model.safetensors"),
                                    output=str(tmp_path / "out"), heldout_fraction=0.3, workers=0, k_knn=5,
                                    min_heldout=10))
    bundle = open_bundle(res.bundle_uri)
    info = bundle.info
    assert info.scale is not None and info.scale.percentile == 85.0
    assert info.mahalanobis is not None and info.mahalanobis.classes == 10 and info.mahalanobis.dim == 512
    assert info.mahalanobis.bank_images == info.split.bank_images and info.mahalanobis.epsilon > 0
    assert {"scale", "mahalanobis++"} <= set(info.heldout_quantiles)
    # the scan's scorer, restored from the bundle, on the held-out images: the same scores to the last bit
    uris, _ = list_id_images(str(data), None)
    held = [u for u, h in zip(uris, heldout_mask([object_key(u, str(data)) for u in uris], 0.3, 0)) if h]
    pre = Preprocess.from_dict(dict(info.preprocess))
    pixels = torch.from_numpy(np.stack([decode_image(open(u, "rb").read(), size=pre).array for u in held]))
    scores = scorer_from_bundle(bundle)(pixels.permute(0, 3, 1, 2))
    for name in ("scale", "mahalanobis++"):
        assert quantile_table(np.asarray(scores[name], dtype=np.float32)) == info.heldout_quantiles[name], name


def test_mahalanobis_pp_is_refused_without_labels():
    with pytest.raises(ConfigError, match="needs labelled ID images"):
        MahalanobisPP().fit(np.ones((4, 3)))
    from ood_audit.calibration.calibrate import check_unlabelled

    with pytest.raises(ConfigError, match="--flag-on mahalanobis\\+\\+: class means needs labelled"):
        check_unlabelled(CalibrateConfig(data="x", model="m.safetensors", output="o", labelled=False,
                                         flag_on=("csd", "mahalanobis++")))
