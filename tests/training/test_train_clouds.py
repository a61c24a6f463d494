"""Training and calibration with GCS and Azure locations (fake-gcs-server, Azurite) on a real local Ray: the data
and the weights on one cloud, Ray Train's checkpoints and the bundle on the other."""
from __future__ import annotations

import hashlib
import json

import pytest

from ood_audit.bundle.files import load_bundle
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.io.fs import S3Config, read_bytes
from ood_audit.io.listing import list_objects
from ood_audit.training import TrainConfig, train

from tests.datagen import labelled_images
from tests.fixtures.clouds import fresh_bucket

pytestmark = [pytest.mark.slow, pytest.mark.clouds]


@pytest.mark.timeout(300)
def test_train_and_calibrate_across_gcs_and_azure(ray_local, request) -> None:
    with fresh_bucket(request, "gs") as gcs, fresh_bucket(request, "az") as azure:
        for key, data in labelled_images(12, seed=1).items():
            gcs.put(f"train/{key}", data)
        config = S3Config(gcs=gcs.config.gcs, azure=azure.config.azure, retry_s=10)
        res = train(TrainConfig(data=gcs.uri("train"), output=gcs.uri("models/r18.safetensors"), epochs=1,
                                run_name="clouds", storage=azure.uri("runs"), s3=config, arch="resnet18",
                                small_input=True, batch_size=8, workers=1, cpus_per_worker=1.0))
        assert res.global_step > 0 and res.checkpoint.startswith(azure.uri("runs/clouds/"))
        checkpoint = list_objects(res.checkpoint, s3=config).column("uri").to_pylist()
        assert checkpoint and all(u.startswith(azure.uri("runs/clouds/")) for u in checkpoint)
        weights = read_bytes(gcs.uri("models/r18.safetensors"), s3=config)
        record = json.loads(read_bytes(gcs.uri("models/r18.json"), s3=config))
        assert hashlib.sha256(weights).hexdigest() == record["sha256"] == res.sha256

        cal = calibrate(CalibrateConfig(data=gcs.uri("train"), model=gcs.uri("models/r18.safetensors"),
                                        output=azure.uri("audit"), s3=config, heldout_fraction=0.3, workers=0,
                                        k_knn=5, min_heldout=5))
        assert cal.bundle_uri.startswith(azure.uri("audit/bundles/"))
        bundle = load_bundle(cal.bundle_uri, s3=config)  # every file's checksum verified
        assert cal.bundle_uri.endswith(bundle.id)
