"""The one input transform (ood_audit.preprocess): typed, stored in the bundle, read from older bundles as they
were calibrated, and the one home of the uint8 -> [0, 1] scaling and the normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_audit.bundle.schema import parse_meta
from ood_audit.errors import BundleError, ConfigError
from ood_audit.models import TapModel, build_model
from ood_audit.preprocess import IMAGENET_MEAN, Preprocess, decoded_to_unit, to_unit


def _meta(preprocess: dict) -> dict:
    return {"schema_version": 2, "model": {"arch": "resnet18", "num_classes": 2, "small_input": True,
                                           "image_size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.1]},
            "preprocess": preprocess, "selection": {"ratios": {"layer4.1": 1.0}, "selected": "layer4.1"},
            "thresholds": {"target_id_flag_rate": 0.05, "heldout_images": 20, "per_score": {}, "flag_on": [],
                           "flag": {}}, "heldout_quantiles": {}}


def test_the_bundle_part_is_typed_and_older_files_read_as_calibrated():
    old = parse_meta(_meta({"size": [32, 32], "mode": "crop", "resize_shorter": None, "jpeg_draft": True}), "old")
    pre = old.preprocess
    assert isinstance(pre, Preprocess)
    assert pre.output_hw == (32, 32) and pre.mode == "crop"
    assert pre.jpeg_draft_longer == 0                    # written before the field: the model size alone
    assert pre.mean == (0.5, 0.4, 0.3) and pre.std == (0.25, 0.2, 0.1)  # where mean/std lived before: the model
    new = parse_meta(_meta(Preprocess(32, mean=(0.1, 0.2, 0.3)).to_dict()), "new")
    assert new.preprocess == Preprocess(32, mean=(0.1, 0.2, 0.3))
    assert Preprocess.from_dict(new.preprocess.to_dict()) == new.preprocess
    assert Preprocess.from_dict(dict(new.preprocess)) == new.preprocess  # a mapping of its fields, as Ray passes


def test_bad_values_are_one_line_errors_naming_the_field():
    with pytest.raises(ConfigError, match="preprocess.mode: Input should be 'crop' or 'resize'"):
        Preprocess(32, mode="squash")
    with pytest.raises(ConfigError, match="resize_shorter=200 is smaller"):
        Preprocess(224, resize_shorter=200)
    with pytest.raises(ConfigError, match="std must be > 0"):
        Preprocess(32, std=(0.2, 0.0, 0.2))
    with pytest.raises(BundleError, match="field preprocess: .*size must be positive") as err:
        parse_meta(_meta({"size": [0, 32]}), "edited")
    assert "\n" not in str(err.value)


def test_the_pixel_scaling_is_the_one_every_stage_used():
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8))
    # the formula training, calibration and the scorer each wrote before: permute, float, / 255
    expected = batch.permute(0, 3, 1, 2).float().div_(255.0)
    assert torch.equal(decoded_to_unit(batch), expected)
    assert torch.equal(decoded_to_unit(batch, "cpu"), expected)
    assert torch.equal(to_unit(batch.permute(0, 3, 1, 2)), expected)
    assert torch.equal(to_unit(expected), expected)  # already [0, 1]: unchanged
    assert torch.equal(decoded_to_unit(torch.full((1, 1, 1, 3), 255, dtype=torch.uint8)), torch.ones(1, 3, 1, 1))


def test_the_model_normalises_with_the_preprocess_mean_and_std():
    pre = Preprocess(32)
    assert pre.mean == IMAGENET_MEAN
    tap = TapModel(build_model("resnet18", 2, small_input=True), mean=pre.mean, std=pre.std)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    assert torch.equal(tap.normalize(x), (x - mean) / std)
