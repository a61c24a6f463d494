"""Scan test fixtures: one small calibrated bundle (the local Ray is the session's: ``ray_local``).

The bundle comes from the real calibration (tiny ResNet18 small_input, 32 px, two stripe classes), so the
scan is tested against exactly what calibrate writes.
"""
from __future__ import annotations

import json

import pytest
import torch

from ood_audit import build_model, save_weights
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.models import ModelSpec

from tests.datagen import labelled_images, write_local

SPEC = ModelSpec("resnet18", 2, small_input=True, image_size=32)


@pytest.fixture(scope="package")
def bundle_uri(tmp_path_factory) -> str:
    """A calibrated bundle in a local directory."""
    root = tmp_path_factory.mktemp("scan_bundle")
    torch.manual_seed(0)
    (root / "m").mkdir()
    save_weights(build_model("resnet18", 2, small_input=True), root / "m" / "model.safetensors")
    (root / "m" / "model.json").write_text(json.dumps(SPEC.to_dict()))
    data = write_local(root / "id", labelled_images(40, seed=2))
    res = calibrate(CalibrateConfig(data=str(data), model=str(root / "m" / "model.safetensors"),
                                    output=str(root / "out"), heldout_fraction=0.3, workers=0, k_knn=5,
                                    min_heldout=10))
    return res.bundle_uri
