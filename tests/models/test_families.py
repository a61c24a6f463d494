"""The model families of SPEC §16 (ResNeXt / Wide ResNet, ConvNeXt, EfficientNet, RegNet): their taps, the
`blocks` command, and calibrate -> the scan's scoring on real images (scikit-learn digits).

Every architecture's taps are checked on the meta device (shapes through the real traced graph, no compute);
the smallest variant of each new family also runs for real, at 32 px with its small-input stem."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from scipy.stats import betabinom, norm

from ood_audit import TapModel, build_model, save_weights
from ood_audit.bundle.files import open_bundle
from ood_audit.bundle.scorer import scorer_from_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate, list_id_images
from ood_audit.cli import main
from ood_audit.demo.data import write_digit_folders
from ood_audit.io.decode import Preprocess, decode_image
from ood_audit.models import ARCHITECTURES, ModelSpec, arch_spec, skeleton
from ood_audit.models.taps import last_map_hw

NEW_FAMILIES = {"resnext50_32x4d": "resnet", "convnext_tiny": "convnext", "efficientnet_b0": "efficientnet",
                "regnet_y_400mf": "regnet"}
RATE = 0.1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_tap_traces_with_the_shapes_of_its_role(arch):
    """All candidates at once, on the meta device. Where the penultimate vector is the pooled last map (all
    but VGG's and MobileNetV3's, whose heads have hidden layers) it has the last map's width."""
    model = skeleton(arch, 7).eval()
    spec = arch_spec(model)
    assert spec.head not in spec.candidates and spec.penultimate not in spec.candidates
    with torch.device("meta"):
        out = TapModel(model, blocks=spec.candidates)(torch.zeros(2, 3, 224, 224))
    assert out.logits.shape == (2, 7)
    assert out.penultimate.shape == (2, model.get_submodule(spec.head).in_features)
    assert out.last_map.dim() == 4
    if spec.family not in ("vgg", "mobilenet"):
        assert out.last_map.shape[1] == out.penultimate.shape[1]
    assert out.last_map.shape[2:] == (7, 7) and last_map_hw(arch, 7, False, (224, 224)) == (7, 7)
    assert list(out.blocks) == list(spec.candidates) and all(b.dim() == 4 for b in out.blocks.values())


def test_resnext_and_wide_resnet_are_resnets():
    for arch in ("resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"):
        model = skeleton(arch, 10)
        assert isinstance(model, tvm.ResNet) and arch_spec(model).family == "resnet"
        assert arch_spec(model).candidates[-1] == f"layer4.{len(model.layer4) - 1}"


@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_blocks_command_and_a_real_forward_through_every_tap(arch, capsys):
    assert main(["blocks", arch, "--small-input"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    torch.manual_seed(0)
    model = build_model(arch, 3, small_input=True).eval()
    spec = arch_spec(model)
    assert spec.family == NEW_FAMILIES[arch]
    assert lines[:-1] == list(spec.candidates)
    assert all(role in lines[-1] for role in (spec.last_map, spec.penultimate, spec.head))
    assert ("not post-ReLU" in lines[-1]) == (not spec.post_relu)
    x = torch.rand(2, 3, 32, 32)
    tap = TapModel(model, blocks=spec.candidates)
    with torch.no_grad():
        out, plain = tap(x), model(tap.normalize(x))
    assert out.last_map.shape[2:] == (4, 4)  # the small-input stem keeps a spatial last map at 32 px
    assert all(torch.isfinite(b).all() for b in (out.logits, out.penultimate, *out.blocks.values()))
    torch.testing.assert_close(out.logits, plain)
    head = model.get_submodule(spec.head)
    torch.testing.assert_close(out.logits, head(out.penultimate))  # the penultimate is the head's input
    pooled = out.last_map.mean(dim=(2, 3))
    if spec.family == "convnext":  # LayerNorm2d, then Flatten, then the Linear
        pooled = model.classifier[0](out.last_map.mean(dim=(2, 3), keepdim=True)).flatten(1)
    torch.testing.assert_close(out.penultimate, pooled, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Real digits: 80 to calibrate (half bank, half held-out) and 60 others as fresh ID images."""
    root = tmp_path_factory.mktemp("families")
    write_digit_folders(root / "all", 140, seed=5)
    for p in sorted((root / "all").rglob("*.png")):
        dest = root / ("cal" if int(p.stem) < 80 else "test") / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p, dest)
    uris, _ = list_id_images(str(root / "test"), None)
    pixels = np.stack([decode_image(open(u.removeprefix("file://"), "rb").read(), size=Preprocess(size=32)).array
                       for u in uris])
    return root, torch.from_numpy(pixels).permute(0, 3, 1, 2)


def _fresh_count_range(n_cal: int, n_test: int, alpha: float = 2 * norm.sf(4.0)) -> tuple[int, int]:
    """Fresh ID images below t = s_(k), k = ⌊ρn⌋ + 1 of n held-out scores (``threshold_at``): for exchangeable
    images their share is F(s_(k)) ~ Beta(k, n − k + 1), so the count is beta-binomial; the range holds
    with probability ≥ 1 − α (α: the two-sided tail of z = 4)."""
    k = math.floor(RATE * n_cal) + 1
    dist = betabinom(n_test, k, n_cal - k + 1)
    return int(dist.ppf(alpha / 2)), int(dist.isf(alpha / 2))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_calibrate_then_scan_scores_hold_the_target_rate(arch, digits, tmp_path):
    root, fresh = digits
    torch.manual_seed(0)
    (tmp_path / "m").mkdir()
    save_weights(build_model(arch, 10, small_input=True), tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "model.json").write_text(json.dumps(ModelSpec(arch, 10, True, 32).to_dict()))
    res = calibrate(CalibrateConfig(data=str(root / "cal"), model=str(tmp_path / "m" / "model.safetensors"),
                                    output=str(tmp_path / "out"), heldout_fraction=0.5, id_flag_rate=RATE,
                                    workers=0, k_knn=5, k_csd=5, max_probe=10, min_heldout=20,
                                    selector="normratio", probes=("jigsaw",)))
    bundle = open_bundle(res.bundle_uri)
    assert bundle.info.selection.blocks_post_relu is arch_spec(skeleton(arch, 10, True)).post_relu  # SPEC §16
    th = bundle.info.thresholds
    scores = scorer_from_bundle(bundle)(fresh)
    n_cal, n_test = th.heldout_images, len(fresh)
    low, high = _fresh_count_range(n_cal, n_test)
    for name in ("csd", "knn"):
        s = np.asarray(scores[name])
        assert s.shape == (n_test,) and np.isfinite(s).all(), name
        below = int((s < th.per_score[name]).sum())
        print(f"{arch} {name}: {below}/{n_test} fresh ID images flagged, allowed [{low}, {high}] (n_cal {n_cal})")
        assert low <= below <= high, f"{arch} {name}: {below} of {n_test} flagged, outside [{low}, {high}]"
