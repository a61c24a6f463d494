"""What calibration adds to the bundle for the scan's findings, on real data (scikit-learn digits):
the calibrated ``blurry`` threshold, the near-duplicate τ with ``near_duplicate_of_id``, and per-class
thresholds whose overall ID flag rate stays at the target."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import betabinom, norm

from ood_audit import build_model, save_weights
from ood_audit.bundle.files import open_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate, list_id_images
from ood_audit.bundle.schema import MEASURED_ON_MODEL_INPUT, parse_meta
from ood_audit.flagging.perclass import per_class_flags
from ood_audit.bundle.scorer import scorer_from_bundle
from ood_audit.flagging.thresholds import flags
from ood_audit.cli import main
from ood_audit.demo.data import write_digit_folders
from ood_audit.errors import ConfigError
from ood_audit.io.decode import Preprocess, decode_image
from ood_audit.io.quality import blurry_threshold, measure
from ood_audit.models import ModelSpec
from ood_audit.scan.rows import RowBuilder

SPEC = ModelSpec("resnet18", 10, small_input=True, image_size=32)
ALPHA, MIN_IMAGES = 0.05, 50


def _tolerance(p: float, n_cal: int, n_test: int, floor_bias: float, z: float = 4.0) -> float:
    """|rate − p| allowed on fresh ID images: the calibrated order statistics' own spread (≈ p(1−p)/n_cal),
    the fresh sample's binomial p(1−p)/n_test, and the floor bias of the order statistics (≤ 1/n_c per
    class with its own thresholds, so ≤ classes/n_cal overall); z = 4."""
    return z * math.sqrt(p * (1 - p) * (1 / n_cal + 1 / n_test)) + floor_bias


def _order_statistic_counts(rate: float, n_cal: int, n_test: int, alpha: float = 2 * norm.sf(4.0)) -> tuple[int, int]:
    """The range of fresh-image counts under τ = d_(k), k = ⌊ρn⌋ + 1 of n held-out distances, that holds with
    probability ≥ 1 − α (α: the two-sided tail of z = 4, 6.3e-5).

    For exchangeable ID images the share of fresh images below the k-th smallest of n held-out values is
    F(d_(k)) ~ Beta(k, n − k + 1), so the fresh count is beta-binomial(n_test, k, n − k + 1), exactly. With
    k ≈ 6 this is right-skewed: a normal spread around ρ allows too few (its 4σ bound failed about once in
    330 runs), and every run is a new draw, as the held-out split hashes URIs in a new temporary folder."""
    k = math.floor(rate * n_cal) + 1
    dist = betabinom(n_test, k, n_cal - k + 1)
    return int(dist.ppf(alpha / 2)), int(dist.isf(alpha / 2))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """Real digits: 1000 to calibrate (half bank, half held-out), the next 500 as fresh ID test images.
    The split hashes the URIs, so it (and every figure below) changes with the temporary directory: the
    assertions are tolerances derived from the sample sizes, not values."""
    root = tmp_path_factory.mktemp("findings")
    write_digit_folders(root / "all", 1797, seed=0)
    for p in sorted((root / "all").rglob("*.png")):
        if int(p.stem) >= 1500:
            continue
        dest = root / ("cal" if int(p.stem) < 1000 else "test") / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p, dest)
    (root / "m").mkdir()
    save_weights(_linear_probe(root / "cal"), root / "m" / "model.safetensors")
    (root / "m" / "model.json").write_text(json.dumps(SPEC.to_dict()))
    res = calibrate(CalibrateConfig(data=str(root / "cal"), model=str(root / "m" / "model.safetensors"),
                                    output=str(root / "out"), heldout_fraction=0.5, workers=0, k_knn=10,
                                    max_select=100, max_probe=50, selector="normratio", id_flag_rate=ALPHA,
                                    per_class_thresholds=True, per_class_min_images=MIN_IMAGES))
    bundle = open_bundle(res.bundle_uri)
    scorer = scorer_from_bundle(bundle)
    sources = bundle.bank_sources()
    rows = RowBuilder(bundle.info, bundle.id, "r", scorer.score_names,
                      bank_uris=sources.column("uri").to_pylist())
    test_uris, _ = list_id_images(str(root / "test"), None)
    fresh = _scan(scorer, rows, Preprocess.from_dict(dict(bundle.info.preprocess)), test_uris)
    return fresh, res, bundle, scorer, rows


def _linear_probe(folder) -> torch.nn.Module:
    """The seeded untrained ResNet-18 with its last layer fitted (ridge regression on one-hot labels) to the
    calibration images' penultimate features: a classifier that predicts every digit class, in seconds."""
    from ood_audit.bundle.scorer import make_scorer
    from ood_audit.models import block_candidates

    torch.manual_seed(0)
    model = build_model("resnet18", 10, small_input=True)
    scorer = make_scorer(model.state_dict(), SPEC, block_candidates(model)[-1])
    uris, _ = list_id_images(str(folder), None)
    pre = Preprocess(size=32)
    x = torch.from_numpy(np.stack([decode_image(open(u.removeprefix("file://"), "rb").read(), size=pre).array
                                   for u in uris])).permute(0, 3, 1, 2)
    with torch.no_grad():
        f = torch.cat([scorer.features(x[i:i + 256]).penultimate.float() for i in range(0, len(x), 256)]).double()
    y = torch.nn.functional.one_hot(torch.tensor([int(u.split("digit_")[1].split("/")[0]) for u in uris]), 10)
    mu = f.mean(0)
    fc = f - mu
    gram = fc.T @ fc
    lam = 0.1 * torch.trace(gram) / gram.shape[0]  # well conditioned: the fit does not hinge on float rounding
    w = torch.linalg.solve(gram + lam * torch.eye(f.shape[1], dtype=f.dtype), fc.T @ y.double())
    with torch.no_grad():
        model.fc.weight.copy_(w.T.float())
        model.fc.bias.copy_((y.double().mean(0) - mu @ w).float())
    return model


def _scan(scorer, rows, pre: Preprocess, uris: list[str], pixels: np.ndarray | None = None):
    """Report rows for ``uris`` as the scan's scoring actor builds them."""
    if pixels is None:
        pixels = np.stack([decode_image(open(u.removeprefix("file://"), "rb").read(), size=pre).array for u in uris])
    n = len(uris)
    batch = {"uri": np.array(uris, dtype=object), "etag": np.array(["e"] * n, dtype=object),
             "size": np.ones(n, np.int64), "status": np.array(["ok"] * n, dtype=object),
             "error": np.array([None] * n, dtype=object), "width": np.full(n, 32, np.int32),
             "height": np.full(n, 32, np.int32), "_chunk": np.zeros(n, np.int32),
             "_seq": np.arange(n, dtype=np.int32), "_read_s": np.zeros(n, np.float32)}
    scores = scorer(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    return rows.build(batch, scores), scores


def test_blurry_threshold_is_the_heldout_first_percentile_of_the_decoded_images(calibrated):
    _, res, bundle, _, _ = calibrated
    q = bundle.info.quality
    pre = Preprocess.from_dict(dict(bundle.info.preprocess))
    lap = [measure(decode_image(open(u.removeprefix("file://"), "rb").read(), size=pre,  # SPEC §14's working copy
                                working_size=q.working_size).working).laplacian_var for u in res.heldout["uri"]]
    assert q is not None and q.heldout_images == len(lap) and q.blurry_percentile == 1.0
    assert q.blurry == pytest.approx(blurry_threshold(np.array(lap)), rel=1e-12)
    assert q.config().blurry == q.blurry and res.summary["blurry_threshold"] == q.blurry and q.comparable
    before = q.model_copy(update={"measured_on": MEASURED_ON_MODEL_INPUT})  # a bundle from before the working copy
    assert not before.comparable and before.config().blurry is None  # another scale: blur is not checked
    old = {k: v for k, v in bundle.meta.items() if k not in ("quality", "near_duplicates", "per_class")}
    info = parse_meta(old, "before the optional parts")  # bundles written before them still load
    assert info.quality is None and info.near_duplicates is None and info.per_class is None


def test_near_duplicates_of_the_bank_name_their_source(calibrated):
    fresh, res, bundle, scorer, rows = calibrated
    nd = bundle.info.near_duplicates
    held = res.heldout
    assert nd is not None and nd.heldout_images == len(held["uri"]) and nd.rate == 0.01
    assert np.mean(held["nn_dist"] < nd.threshold) <= nd.rate
    pre = Preprocess.from_dict(dict(bundle.info.preprocess))
    sources = bundle.bank_sources().column("uri").to_pylist()
    # copies of 100 bank images under new names: each row names the bank image it copies
    pick = sources[::len(sources) // 100][:100]
    copies = np.stack([decode_image(open(u.removeprefix("file://"), "rb").read(), size=pre).array for u in pick])
    table, _ = _scan(scorer, rows, pre, [f"s3://incoming/copy{i}.png" for i in range(len(pick))], copies)
    assert table.column("near_duplicate_of_id").to_pylist() == pick
    # fresh ID images: near-duplicates at about the rate τ was set for
    table, scores = fresh
    got = table.column("near_duplicate_of_id").to_pylist()
    hit = np.array([g is not None for g in got])
    want = scores["knn_nn_dist"][:, 0] < nd.threshold
    assert np.array_equal(hit, want)
    assert all(g == sources[r] for g, r in zip(got, scores["knn_nn"][:, 0]) if g is not None)
    rate = hit.mean()
    print(f"near-duplicates: tau={nd.threshold:.4f}, held-out {np.mean(held['nn_dist'] < nd.threshold):.4f}, "
          f"fresh ID {rate:.4f} of {hit.size}, copies {len(pick)}/{len(pick)}")
    low, high = _order_statistic_counts(nd.rate, nd.heldout_images, hit.size)
    assert low <= hit.sum() <= high, f"{hit.sum()} of {hit.size} fresh ID images under τ, outside [{low}, {high}]"


def test_per_class_thresholds_keep_the_overall_rate_and_record_fallbacks(calibrated):
    fresh, res, bundle, scorer, rows = calibrated
    pc = bundle.info.per_class
    held = res.heldout
    assert pc is not None and pc.min_images == MIN_IMAGES and pc.target_id_flag_rate == ALPHA
    counts = np.bincount(held["pred_class"], minlength=SPEC.num_classes)
    assert {c: th.images for c, th in pc.classes.items()} == {c: int(n) for c, n in enumerate(counts)
                                                              if n >= MIN_IMAGES}
    assert pc.fallback == {c: int(n) for c, n in enumerate(counts) if n < MIN_IMAGES}
    assert res.summary["per_class_fallback"] == pc.fallback
    assert pc.classes  # ~50 held-out images a class: some have their own, most runs some fall back too
    pre = Preprocess.from_dict(dict(bundle.info.preprocess))
    # held-out: each class with its own thresholds at or under the target, so overall too
    table, scores = _scan(scorer, rows, pre, list(held["uri"]))
    flagged = np.array(table.column("flagged").to_pylist())
    assert np.array_equal(scores["pred_class"], held["pred_class"])
    for c in pc.classes:
        assert flagged[held["pred_class"] == c].mean() <= ALPHA
    th = bundle.info.thresholds
    want, _ = per_class_flags(scores, held["pred_class"], pc, th.per_score, th.flag)
    assert np.array_equal(flagged, want) and not np.array_equal(want, flags(scores, th.flag, th.flag_on)[0])
    held_rate, n_cal = flagged.mean(), len(held["uri"])
    # fresh ID images: the overall rate at the target within sampling error
    table, scores = fresh
    flagged = np.array(table.column("flagged").to_pylist())
    tol = _tolerance(ALPHA, n_cal, flagged.size, len(pc.classes) / n_cal)
    global_rate = flags(scores, th.flag, th.flag_on)[0].mean()
    print(f"per-class: {len(pc.classes)} classes own, fallback {pc.fallback}; held-out rate "
          f"{held_rate:.4f}, "
          f"ID test {flagged.mean():.4f} of {flagged.size} (global thresholds {global_rate:.4f}), tolerance {tol:.4f}")
    assert abs(flagged.mean() - ALPHA) <= tol


def test_per_class_min_images_is_validated_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--per-class-min-images must be >= 50"):
        CalibrateConfig(data="x", model="y", output="z", per_class_min_images=49).validate()
    code = main(["calibrate", "--data", str(tmp_path), "--model", str(tmp_path / "m.safetensors"),
                 "--output", str(tmp_path / "o"), "--per-class-thresholds", "--per-class-min-images", "20"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--per-class-min-images" in err and len(err.splitlines()) == 1
