"""Audit bundles (SPEC §10): content-derived id, immutability, checksums, local and S3."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ood_audit.bundle.files import BUNDLE_JSON, compute_bundle_id, load_bundle, software_versions
from ood_audit.bundle.write import write_bundle
from ood_audit.errors import BundleError
from ood_audit.io.fs import S3Config


def sample(seed: int = 0) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    meta = {
        "architecture": "resnet18_cifar",
        "num_classes": 10,
        "input_size": 32,
        "normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
        "blocks": {"layer3.1": np.float32(1.25), "layer4.1": 1.5},  # numpy scalars are accepted
        "selected_block": "layer4.1",
        "thresholds": {"featurenorm": 3.25, "csd": -0.5},
    }
    tensors = {
        "model.safetensors": {"fc.weight": torch.randn(10, 4, generator=g), "fc.bias": torch.zeros(10)},
        "csd_bank.safetensors": {"bank": torch.randn(12, 4, generator=g).half()},
        "knn_bank.safetensors": {"bank": torch.randn(6, 4, generator=g)},
    }
    return meta, tensors


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_round_trip_local(tmp_path: Path) -> None:
    meta, tensors = sample()
    uri = write_bundle(str(tmp_path), meta, tensors=tensors, files={"extra.json": b'{"a": 1}'})
    bundle_id = Path(uri).name
    assert uri == str(tmp_path / "bundles" / bundle_id) and len(bundle_id) == 32
    bundle = load_bundle(uri)
    assert bundle.id == bundle_id
    assert bundle.meta == meta  # the caller's metadata, exactly as given
    got = bundle.tensors("model.safetensors")
    assert torch.equal(got["fc.weight"], tensors["model.safetensors"]["fc.weight"])
    assert bundle.tensors("csd_bank.safetensors")["bank"].dtype == torch.float16
    assert bundle.json_file("extra.json") == {"a": 1}
    doc = json.loads((Path(uri) / BUNDLE_JSON).read_text())
    assert doc["bundle_id"] == bundle_id
    assert set(doc["files"]) == {"model.safetensors", "csd_bank.safetensors", "knn_bank.safetensors", "extra.json"}
    assert all(set(f) == {"sha256", "bytes"} for f in doc["files"].values())
    assert "torch" in doc["provenance"]["software"] and doc["provenance"]["created_at"]
    assert compute_bundle_id(doc["meta"], doc["files"]) == bundle_id
    assert load_bundle(str(Path(uri) / BUNDLE_JSON)).id == bundle_id  # the bundle.json path works too


def test_same_content_same_id_no_rewrite(tmp_path: Path) -> None:
    meta, tensors = sample()
    first = write_bundle(str(tmp_path), meta, tensors=tensors)
    before = {p: os.stat(Path(first) / p).st_mtime_ns for p in os.listdir(first)}
    second = write_bundle(str(tmp_path), dict(meta), tensors=sample()[1])
    assert second == first
    assert {p: os.stat(Path(first) / p).st_mtime_ns for p in os.listdir(first)} == before  # untouched
    assert len(listing(tmp_path)) == 4
    other_meta = dict(meta, thresholds={"featurenorm": 3.5, "csd": -0.5})
    third = write_bundle(str(tmp_path), other_meta, tensors=tensors)
    fourth = write_bundle(str(tmp_path), meta, tensors=sample(seed=1)[1])
    assert len({first, third, fourth}) == 3
    assert len(os.listdir(tmp_path / "bundles")) == 3


def test_interrupted_write_is_completed(tmp_path: Path) -> None:
    meta, tensors = sample()
    uri = write_bundle(str(tmp_path), meta, tensors=tensors)
    (Path(uri) / BUNDLE_JSON).unlink()
    (Path(uri) / "knn_bank.safetensors").write_bytes(b"half-written")
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(uri)
    assert write_bundle(str(tmp_path), meta, tensors=tensors) == uri
    assert load_bundle(uri).tensors("knn_bank.safetensors")["bank"].shape == (6, 4)


def test_tampered_file_is_refused_by_name(tmp_path: Path) -> None:
    meta, tensors = sample()
    uri = write_bundle(str(tmp_path), meta, tensors=tensors)
    path = Path(uri) / "csd_bank.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="csd_bank.safetensors fails its checksum"):
        load_bundle(uri)
    lazy = load_bundle(uri, verify=False)  # reads still verify
    with pytest.raises(BundleError, match="csd_bank.safetensors fails its checksum"):
        lazy.tensors("csd_bank.safetensors")
    path.unlink()
    with pytest.raises(BundleError, match="missing its file csd_bank.safetensors"):
        load_bundle(uri)


def test_bad_bundle_json(tmp_path: Path) -> None:
    meta, tensors = sample()
    uri = write_bundle(str(tmp_path), meta, tensors=tensors)
    manifest = Path(uri) / BUNDLE_JSON
    doc = json.loads(manifest.read_text())
    manifest.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(uri)
    manifest.write_text(json.dumps({k: v for k, v in doc.items() if k != "files"}))
    with pytest.raises(BundleError, match="lacks the required key.*files"):
        load_bundle(uri)
    edited = dict(doc, meta=dict(doc["meta"], selected_block="layer1.0"))
    manifest.write_text(json.dumps(edited))
    with pytest.raises(BundleError, match="does not match its content"):
        load_bundle(uri)
    evil = dict(doc, files={"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}})
    manifest.write_text(json.dumps(evil))
    with pytest.raises(BundleError, match="not allowed"):
        load_bundle(uri)
    with pytest.raises(BundleError, match="no bundle at"):
        load_bundle(str(tmp_path / "bundles" / "nothing"))


def test_refuses_pickles_bad_names_and_bad_meta(tmp_path: Path) -> None:
    meta, tensors = sample()
    with pytest.raises(BundleError, match="no pickles"):
        write_bundle(str(tmp_path), meta, files={"model.pt": b"x"})
    with pytest.raises(BundleError, match="not allowed"):
        write_bundle(str(tmp_path), meta, files={"sub/model.safetensors": b"x"})
    with pytest.raises(BundleError, match="null instead of NaN"):
        write_bundle(str(tmp_path), dict(meta, t=float("nan")), tensors=tensors)
    with pytest.raises(BundleError, match="not a torch.Tensor"):
        write_bundle(str(tmp_path), meta, tensors={"model.safetensors": {"w": [1, 2]}})
    with pytest.raises(BundleError, match="at least one file"):
        write_bundle(str(tmp_path), meta)
    assert not (tmp_path / "bundles").exists()


def test_round_trip_s3(s3_config: S3Config, s3_bucket: str, s3_client: Any) -> None:
    meta, tensors = sample()
    root = f"s3://{s3_bucket}/audits"
    uri = write_bundle(root, meta, tensors=tensors, s3=s3_config)
    assert uri.startswith(f"s3://{s3_bucket}/audits/bundles/")
    assert write_bundle(root, meta, tensors=tensors, s3=s3_config) == uri
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="audits/")["Contents"]]
    assert len(keys) == 4 and len(set(keys)) == 4  # no duplicates after the second write
    bundle = load_bundle(uri + "/", s3=s3_config)
    assert torch.equal(bundle.tensors("knn_bank.safetensors")["bank"], tensors["knn_bank.safetensors"]["bank"])
    key = uri[len(f"s3://{s3_bucket}/"):] + "/model.safetensors"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"tampered")
    with pytest.raises(BundleError, match="model.safetensors fails its checksum"):
        load_bundle(uri, s3=s3_config)


def test_software_versions() -> None:
    versions = software_versions()
    assert {"python", "torch", "numpy", "pyarrow"} <= set(versions)
