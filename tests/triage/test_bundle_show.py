"""`ood-audit bundle show` on a real small bundle: its optional calibrated parts (the blurry threshold, the
near-duplicate tau, per-class thresholds with their fallbacks) in the text and in ``--json``."""
from __future__ import annotations

import json

import pytest
import torch

from ood_audit import build_model, save_weights
from ood_audit.bundle.files import load_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.bundle.schema import ClassThresholds, parse_meta
from ood_audit.cli import main
from ood_audit.commands.bundle import findings_lines
from ood_audit.models import ModelSpec

from tests.datagen import labelled_images, write_local

SPEC = ModelSpec("resnet18", 2, small_input=True, image_size=32)
MIN_IMAGES = 50


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """160 stripe images (two classes), half held out, calibrated with per-class thresholds; the seeded
    untrained model's predictions decide which class has 50 held-out images, so the test reads the answer
    from the bundle rather than assuming it."""
    root = tmp_path_factory.mktemp("show")
    data = write_local(root / "id", labelled_images(80, seed=3))
    torch.manual_seed(0)
    (root / "m").mkdir()
    save_weights(build_model("resnet18", 2, small_input=True), root / "m" / "model.safetensors")
    (root / "m" / "model.json").write_text(json.dumps(SPEC.to_dict()))
    res = calibrate(CalibrateConfig(data=str(data), model=str(root / "m" / "model.safetensors"),
                                    output=str(root / "out"), heldout_fraction=0.5, workers=0, k_knn=5,
                                    min_heldout=10, selector="normratio", max_select=40, max_probe=20,
                                    per_class_thresholds=True, per_class_min_images=MIN_IMAGES))
    return res.bundle_uri, load_bundle(res.bundle_uri)


@pytest.mark.timeout(600)
def test_show_prints_the_optional_parts(bundle, capsys):
    uri, b = bundle
    q, nd, pc = b.info.quality, b.info.near_duplicates, b.info.per_class
    assert q is not None and nd is not None and pc is not None
    assert main(["bundle", "show", uri]) == 0
    out = capsys.readouterr().out
    assert "thresholds at target ID false-flag rate" in out  # format_bundle's part is still there
    assert (f"quality: blurry below Laplacian variance {q.blurry:.6g}, percentile 1 of {q.heldout_images} "
            "held-out ID images") in out
    assert f"near-duplicates: tau = {nd.threshold:.6g}" in out and f"at most 1% of {nd.heldout_images} held-out" in out
    assert (f"per-class thresholds: {len(pc.classes)} of 2 classes have their own, {len(pc.fallback)} fall back "
            "to the global thresholds") in out
    assert f"(own thresholds need {MIN_IMAGES} held-out images of the predicted class; target ID flag rate 0.05" in out
    for label, counts in (("own", {c: t.images for c, t in pc.classes.items()}), ("fallback", pc.fallback)):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"{label} (class")), None)
        if counts:
            want = ", ".join(f"{c}: {n}" for c, n in sorted(counts.items()))
            assert line is not None and line.split("): ", 1)[1] == want
        else:
            assert line is None
    assert sum(t.images for t in pc.classes.values()) + sum(pc.fallback.values()) == b.info.thresholds.heldout_images


@pytest.mark.timeout(600)
def test_show_json_carries_the_parts(bundle, capsys):
    uri, b = bundle
    assert main(["bundle", "show", uri, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["quality"]["blurry"] == b.info.quality.blurry
    assert doc["near_duplicates"]["threshold"] == b.info.near_duplicates.threshold
    assert doc["per_class"]["min_images"] == MIN_IMAGES
    assert {int(c) for c in doc["per_class"]["classes"]} | {int(c) for c in doc["per_class"]["fallback"]} == {0, 1}


def test_a_bundle_without_the_parts_says_so(bundle):
    _, b = bundle
    old = parse_meta({k: v for k, v in b.meta.items() if k not in ("quality", "near_duplicates", "per_class")},
                     "before the optional parts")
    lines = findings_lines(old)
    assert lines[1].startswith("  quality: no blurry threshold")
    assert lines[2].startswith("  near-duplicates: no tau")
    assert lines[3].startswith("  per-class thresholds: none")


def test_fallback_classes_with_their_names_are_listed(bundle):
    """The other split than the real bundle's: every class but 0 falls back, class names shown."""
    _, b = bundle
    pc = b.info.per_class
    assert pc is not None
    template = next(iter(pc.classes.values()), None) or ClassThresholds(images=60, per_score={}, flag={},
                                                                        flag_alpha=0.0)
    edited = b.info.model_copy(update={
        "per_class": pc.model_copy(update={"classes": {0: template.model_copy(update={"images": 61})},
                                           "fallback": {1: 19}}),
        "model": b.info.model.model_copy(update={"class_names": ["horizontal", "vertical"]})})
    lines = findings_lines(edited)
    assert lines[3] == "  per-class thresholds: 1 of 2 classes have their own, 1 fall back to the global thresholds"
    assert lines[5] == "    own (class: held-out images): 0 horizontal: 61"
    assert lines[6] == "    fallback (class: held-out images): 1 vertical: 19"
