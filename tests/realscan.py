"""Two real nightly scans in SeaweedFS, for the triage tests (exports, report, drift, browser).

Real handwritten digits (scikit-learn's ``load_digits``, via :func:`ood_audit.demo.demo_files`) are the ID
set; the incoming prefix mixes unseen digits with letters, noise, photo crops and broken files. The model
is a seeded, untrained ResNet18 (training is tested elsewhere; here only what comes after the scan is):
calibration is the real one, in-process, and both nights are real Ray Data scans.

Night 2 adds an object whose key contains ``<script>``, changes one object (a new etag), drops one, and,
after its scan, deletes its most anomalous object, so a report must show a placeholder for it.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ood_audit import build_model, save_weights
from ood_audit.calibration.calibrate import CalibrateConfig, calibrate
from ood_audit.demo import demo_files
from ood_audit.io.fs import S3Config
from ood_audit.models import ModelSpec

from tests.datagen import upload

SPEC = ModelSpec("resnet18", 10, small_input=True, image_size=32)
SCRIPT_KEY = "letters/<script>alert('x')</script>.png"


@dataclass
class RealScan:
    bucket: str
    output: str                 # s3://bucket/audit: the scan's output root
    s3: S3Config
    bundle_uri: str
    inputs: str                 # s3://bucket/incoming
    run_ids: list[str]          # oldest first
    deleted_uri: str            # removed after night 2's scan
    changed_uri: str            # new content (etag) in night 2
    script_uri: str             # the key with markup, added in night 2
    objects: dict[str, list[str]] = field(default_factory=dict)  # run id -> scanned uris


def make_real_scan(s3: S3Config, client: Any, bucket: str) -> RealScan:
    """The two nights, scanned on the Ray this process is connected to (the session's shared one)."""
    from ood_audit.scan import ScanConfig, run_scan
    from ood_audit.store.runs import find_run, most_anomalous, run_dataset

    root = Path(tempfile.mkdtemp(prefix="ood-audit-realscan-"))
    # 600 ID digits and the probe evidence on 200 of them: enough for every bundle part the triage tests read
    # (the model is untrained; how well it separates is not what they test).
    id_files, incoming, _ = demo_files(seed=3, n_incoming_digits=80, per_kind=20, n_train=600)
    incoming.pop("broken/<script>alert(1)</script>.png", None)
    upload(client, bucket, "id", id_files)
    torch.manual_seed(0)
    save_weights(build_model("resnet18", 10, small_input=True), root / "model.safetensors")
    (root / "model.json").write_text(json.dumps(SPEC.to_dict()))
    cal = calibrate(CalibrateConfig(data=f"s3://{bucket}/id", model=str(root / "model.safetensors"),
                                    output=f"s3://{bucket}/bundles", s3=s3, workers=0, k_knn=10, max_probe=200,
                                    flag_on=("featurenorm", "csd")))  # explicit: kept even if FN is inverted
    output, inputs = f"s3://{bucket}/audit", f"s3://{bucket}/incoming"
    scan = dict(bundle=cal.bundle_uri, output=output, inputs=(inputs,), s3=s3, chunk_size=100, batch_size=32,
                workers=2, read_threads=8)
    objects: dict[str, list[str]] = {}
    night1 = dict(incoming)
    upload(client, bucket, "incoming", night1)
    run_scan(ScanConfig(run_id="night-1", **scan))
    objects["night-1"] = [f"{inputs}/{k}" for k in night1]

    dropped = sorted(k for k in night1 if k.startswith("digits/"))[0]
    changed = sorted(k for k in night1 if k.startswith("letters/"))[0]
    client.delete_object(Bucket=bucket, Key=f"incoming/{dropped}")
    night2 = {k: v for k, v in night1.items() if k != dropped}
    night2[changed] = night1[sorted(k for k in night1 if k.startswith("noise/"))[0]]
    night2[SCRIPT_KEY] = night1[sorted(k for k in night1 if k.startswith("letters/"))[1]]
    upload(client, bucket, "incoming", {changed: night2[changed], SCRIPT_KEY: night2[SCRIPT_KEY]})
    run_scan(ScanConfig(run_id="night-2", **scan))
    objects["night-2"] = [f"{inputs}/{k}" for k in night2]
    run = find_run(output, "night-2", s3=s3)
    top = most_anomalous(run_dataset(run, s3=s3), 1, run.flag_on, columns=["uri"]).column("uri")[0].as_py()
    client.delete_object(Bucket=bucket, Key=top.split(f"s3://{bucket}/", 1)[1])
    return RealScan(bucket=bucket, output=output, s3=s3, bundle_uri=cal.bundle_uri, inputs=inputs,
                    run_ids=["night-1", "night-2"], deleted_uri=top, changed_uri=f"{inputs}/{changed}",
                    script_uri=f"{inputs}/{SCRIPT_KEY}", objects=objects)
