"""One calibration path: `evaluate` = `calibrate` + the scan's scoring; the typed bundle schema; the
precision policy shared by calibration and scan; flag_on under inverted evidence."""
import json

import numpy as np
import pytest
import torch

from ood_audit import build_model, save_weights
from ood_audit.bundle.files import open_bundle
from ood_audit.bundle.write import write_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.bundle.schema import SCHEMA_VERSION, ProbeBlockEvidence, ProbeEvidence, parse_meta
from ood_audit.bundle.scorer import scorer_from_bundle
from ood_audit.calibration.selection import resolve_flag_on
from ood_audit.flagging.thresholds import flags
from ood_audit.cli import main
from ood_audit.demo.data import write_digit_folders
from ood_audit.errors import BundleError
from ood_audit.evaluate import evaluate, model_spec
from ood_audit.io.decode import Preprocess, decode_image
from ood_audit.metrics import ood_metrics
from ood_audit.models import ModelSpec
from ood_audit.scan.rows import RowBuilder

from tests.datagen import labelled_images, write_local

SPEC = ModelSpec("resnet18", 10, small_input=True, image_size=32)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Real handwritten digits (scikit-learn) as 32 px PNG class folders, a seeded model, and noise images."""
    root = tmp_path_factory.mktemp("onepath")
    train = write_digit_folders(root / "train", 260, seed=0)
    test = write_digit_folders(root / "test", 60, seed=1)
    rng = np.random.default_rng(3)
    noise = write_local(root / "noise", {f"n{i}.png": _png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                                         for i in range(40)})
    torch.manual_seed(0)
    (root / "m").mkdir()
    save_weights(build_model("resnet18", 10, small_input=True), root / "m" / "model.safetensors")
    (root / "m" / "model.json").write_text(json.dumps(SPEC.to_dict()))
    return root, str(train), str(test), str(noise), str(root / "m" / "model.safetensors")


def _png(a):
    from tests.datagen import png_bytes

    return png_bytes(a)


def _decode(folder: str, pre: Preprocess) -> torch.Tensor:
    from ood_audit.calibration.calibrate import list_id_images

    uris, _ = list_id_images(folder, None)
    px = np.stack([decode_image(open(u.removeprefix("file://"), "rb").read(), size=pre).array for u in uris])
    return torch.from_numpy(px).permute(0, 3, 1, 2)


@pytest.mark.timeout(600)
def test_evaluate_is_calibrate_plus_the_scans_scores(digits, tmp_path, capsys):
    root, train, test, noise, weights = digits
    res = evaluate(model_spec("resnet18", weights, small_input=True, image_size=32), weights, train, test,
                   {"noise": noise}, k_knn=10, batch_size=64, selector="normratio", bundle_root=str(tmp_path / "eval"))
    assert main(["calibrate", "--data", train, "--model", weights, "--output", str(tmp_path / "cal"),
                 "--workers", "0", "--k-knn", "10", "--selector", "normratio"]) == 0
    cal_uri = capsys.readouterr().out.strip().splitlines()[-1]
    eval_bundle, cal_bundle = open_bundle(res.bundle), open_bundle(cal_uri)
    assert eval_bundle.id == cal_bundle.id  # the same calibration, byte for byte
    assert eval_bundle.files == cal_bundle.files

    # evaluate's metrics are those of the bundle's scan scorer on the same images
    scorer = scorer_from_bundle(cal_bundle)
    pre = Preprocess.from_dict(dict(cal_bundle.info.preprocess))
    id_scores, ood_scores = scorer(_decode(test, pre)), scorer(_decode(noise, pre))
    assert res.counts["id_test"] == len(id_scores["featurenorm"]) and res.counts["noise"] == 40
    got = {r["score"]: r for r in res.rows}
    assert set(got) == set(scorer.score_names)
    for s in scorer.score_names:
        m = ood_metrics(id_scores[s], ood_scores[s])
        for k, v in m.items():
            assert got[s][k] == pytest.approx(v, abs=1e-4), (s, k)


def test_schema_versions_newer_refused_older_migrated(tmp_path):
    meta = {"schema_version": SCHEMA_VERSION + 1, "anything": 1}
    uri = write_bundle(str(tmp_path), meta, files={"model.safetensors": b"x"})
    with pytest.raises(BundleError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade ood-audit") as e:
        open_bundle(uri)
    assert "\n" not in str(e.value)
    # the CLI says it in one line, no traceback
    from tests.test_evaluate_cli import _cli

    r = _cli("bundle", "show", uri)
    assert r.returncode == 2 and "schema version" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    bad = write_bundle(str(tmp_path / "b"), {"schema_version": SCHEMA_VERSION, "model": {"arch": "resnet18"}},
                       files={"model.safetensors": b"x"})
    with pytest.raises(BundleError, match="metadata field model.num_classes"):
        open_bundle(bad)


@pytest.mark.timeout(300)
def test_schema_1_bundles_read_as_float32_with_the_renamed_target(tmp_path):
    data = str(write_local(tmp_path / "id", labelled_images(40, seed=2)))
    torch.manual_seed(0)
    save_weights(build_model("resnet18", 2, small_input=True), tmp_path / "model.safetensors")
    res = calibrate(CalibrateConfig(data=data, model=str(tmp_path / "model.safetensors"), output=str(tmp_path / "o"),
                                    spec=ModelSpec("resnet18", 2, True, 32), heldout_fraction=0.3, workers=0,
                                    k_knn=5, min_heldout=10, id_flag_rate=0.1))
    assert res.meta == res.info.to_json() and {"schema_version", "precision"} <= set(res.meta)  # stored in full
    assert res.info.schema_version == SCHEMA_VERSION and res.info.precision.activations == "float32"
    old = {k: v for k, v in res.meta.items() if k not in ("schema_version", "precision")}
    old["thresholds"] = {("target_fpr" if k == "target_id_flag_rate" else k): v
                         for k, v in old["thresholds"].items() if k != "flag_on_reason"}
    info = parse_meta(old, "old")
    assert info.schema_version == SCHEMA_VERSION and info.precision.activations == "float32"
    assert info.thresholds.target_id_flag_rate == 0.1
    assert info.thresholds.per_score == res.info.thresholds.per_score


@pytest.mark.timeout(600)
def test_precision_policy_calibration_and_scan_flag_alike(digits, tmp_path):
    """Under the bf16 policy (CPU autocast), the scan's scorer reproduces calibration's held-out flags and
    CSD views exactly; an fp32 scan of the same bundle would compute different scores."""
    root, train, _, _, weights = digits
    res = calibrate(CalibrateConfig(data=train, model=weights, output=str(tmp_path / "o"), workers=0, k_knn=10,
                                    heldout_fraction=0.3, precision="bfloat16", selector="normratio"))
    bundle = open_bundle(res.bundle_uri)
    assert bundle.info.precision.activations == "bfloat16"
    scorer = scorer_from_bundle(bundle)
    assert scorer.precision == "bfloat16"
    pre = Preprocess.from_dict(dict(bundle.info.preprocess))
    held = res.heldout
    px = np.stack([decode_image(open(u.removeprefix("file://"), "rb").read(), size=pre).array for u in held["uri"]])
    x = torch.from_numpy(px).permute(0, 3, 1, 2)
    assert scorer.tap(x[:2].float() / 255).logits.dtype == torch.bfloat16  # the policy is really applied
    # In batches of calibration's size, as a scan does: bf16 kernels may round differently for another batch
    # shape, and the image at a threshold (an order statistic of these very scores) flips on one ulp.
    size = CalibrateConfig.batch_size  # the dataclass default this calibration used
    parts = [scorer(x[i:i + size]) for i in range(0, len(x), size)]
    scan = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    th = bundle.info.thresholds
    want, _ = flags({s: held[s] for s in th.flag}, th.flag, th.flag_on)
    rows = RowBuilder(bundle.info, bundle.id, "r", scorer.score_names)
    batch = {"uri": held["uri"], "etag": ["e"] * len(px), "size": [1] * len(px), "status": ["ok"] * len(px),
             "error": [None] * len(px), "width": [32] * len(px), "height": [32] * len(px),
             "_chunk": [0] * len(px), "_seq": list(range(len(px))), "_read_s": [0.0] * len(px)}
    table = rows.build({k: np.asarray(v, dtype=object if k in ("uri", "etag", "status", "error") else None)
                        for k, v in batch.items()}, scan)
    assert table.column("flagged").to_pylist() == want.tolist()
    assert table.column("csd_view").to_pylist() == held["csd_view"].tolist()
    assert 0 < want.mean() <= th.target_id_flag_rate + 1e-9
    fp32 = scorer_from_bundle(bundle)
    fp32.tap.precision = "float32"
    assert not np.array_equal(fp32(x)["featurenorm"], scan["featurenorm"])


def test_flag_on_moves_to_featurenorm2_only_when_every_block_is_inverted():
    def ev(above):
        per = {b: ProbeBlockEvidence(auroc={"jigsaw": 1 - a}, auroc_two_sided={"jigsaw": 0.9},
                                     above_id_median={"jigsaw": a}, min_auroc=1 - a, min_auroc_two_sided=0.9,
                                     max_above_id_median=a)
               for b, a in above.items()}
        return ProbeEvidence(probes=["jigsaw"], images=100, per_block=per, inversion_level=0.6)

    assert resolve_flag_on(["featurenorm", "csd"], ev({"a": 0.9, "b": 0.3})) == (["featurenorm", "csd"], None)
    flag_on, reason = resolve_flag_on(["featurenorm", "csd"], ev({"a": 0.9, "b": 0.7}))
    assert flag_on == ["featurenorm2", "csd"] and "inverted at every candidate block" in reason
    assert resolve_flag_on(["featurenorm2", "featurenorm"], ev({"a": 0.9}))[0] == ["featurenorm2"]
    assert resolve_flag_on(["csd"], ev({"a": 0.9})) == (["csd"], None)
    assert resolve_flag_on(["featurenorm"], None) == (["featurenorm"], None)
    kept, risk = resolve_flag_on(["featurenorm", "csd"], ev({"a": 0.9, "b": 0.7}), explicit=True)
    assert kept == ["featurenorm", "csd"] and "will not be flagged" in risk


def _smooth_images(n: int, seed: int) -> dict[str, bytes]:
    """Smooth colour gradients: a jigsaw of one has edges everywhere, so its FeatureNorm is higher at every block."""
    from tests.datagen import png_bytes

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    out = {}
    for i in range(n):
        a, b, c = rng.uniform(0, 1, 3)
        img = np.stack([a * x + (1 - a) * y, b * y, c * (1 - x)], -1) * 255
        out[f"c{i % 2}/{i:03d}.png"] = png_bytes(img.astype(np.uint8))
    return out


@pytest.mark.timeout(300)
def test_inverted_everywhere_flags_on_featurenorm2_and_catches_what_featurenorm_misses(tmp_path):
    from ood_audit.scores import jigsaw_indexed

    data = str(write_local(tmp_path / "id", _smooth_images(80, seed=0)))
    torch.manual_seed(0)
    save_weights(build_model("resnet18", 2, small_input=True), tmp_path / "model.safetensors")
    res = calibrate(CalibrateConfig(data=data, model=str(tmp_path / "model.safetensors"), output=str(tmp_path / "o"),
                                    spec=ModelSpec("resnet18", 2, True, 32), heldout_fraction=0.3, workers=0,
                                    k_knn=5, min_heldout=10, probes=("jigsaw", "pixel_shuffle")))
    sel = res.info.selection
    assert all(sel.evidence.per_block[b].above_id_median["jigsaw"] > 0.6 for b in sel.candidates)
    th = res.info.thresholds
    assert th.flag_on == ["featurenorm2", "csd"] and "featurenorm2" in th.flag
    assert th.flag_on_reason and th.flag_on_reason in sel.warnings
    assert np.mean(flags({s: res.heldout[s] for s in th.flag}, th.flag, th.flag_on)[0]) <= th.target_id_flag_rate

    # jigsawed ID images: the one-sided score flags fewer than the ID rate (inverted), the two-sided more
    bundle = open_bundle(res.bundle_uri)
    scorer = scorer_from_bundle(bundle)
    x = _decode(data, Preprocess.from_dict(dict(bundle.info.preprocess))).float() / 255
    s = scorer(jigsaw_indexed(x, torch.arange(len(x)), 7, 3))
    below_fn = np.mean(s["featurenorm"] < th.per_score["featurenorm"])
    below_fn2 = np.mean(s["featurenorm2"] < th.per_score["featurenorm2"])
    assert below_fn < th.target_id_flag_rate < below_fn2
