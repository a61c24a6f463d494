"""The deploy manifests parse and point at entrypoints that exist."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "cluster").glob("*.yaml"))


def test_manifests_exist():
    names = {p.name for p in MANIFESTS}
    assert {"rayjob-calibrate.yaml", "raycronjob-nightly-scan.yaml", "cronjob-fallback.yaml",
            "cluster-launcher.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_and_entrypoints_exist(path):
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    text = path.read_text()
    for job in ("jobs/scan.py", "jobs/calibrate.py", "jobs/train.py"):
        if job in text:
            assert (ROOT / job).is_file(), job
    if doc.get("kind") == "RayCronJob":
        assert doc["spec"]["schedule"] and "entrypoint" in doc["spec"]["jobTemplate"]
    if doc.get("kind") == "RayJob":
        assert "rayClusterSpec" in doc["spec"] and doc["spec"]["entrypoint"].startswith("python jobs/")
