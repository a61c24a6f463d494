"""The pinned bundle is the bundle (SPEC §10): ``bundles/<id>/`` loads only if it holds bundle ``<id>``, and a
scoring actor refuses a bundle other than the one its scan started with."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ood_audit.bundle.files import load_bundle
from ood_audit.bundle.write import write_bundle
from ood_audit.cli import main
from ood_audit.errors import BundleError

from tests.calibration.test_bundle import sample


def _two_bundles(root: Path) -> tuple[Path, Path]:
    meta, tensors = sample(0)
    pinned = Path(write_bundle(str(root), meta, tensors=tensors))
    meta, tensors = sample(1)
    foreign = Path(write_bundle(str(root), meta, tensors=tensors))
    assert pinned.name != foreign.name  # different content, different id
    return pinned, foreign


def test_foreign_bundle_copied_into_a_pinned_directory_is_refused_in_one_line(tmp_path, capsys):
    pinned, foreign = _two_bundles(tmp_path)
    assert load_bundle(str(pinned)).id == pinned.name  # the genuine one loads
    shutil.rmtree(pinned)
    shutil.copytree(foreign, pinned)  # self-consistent: its own checksums and id all match its content
    assert load_bundle(str(foreign)).id == foreign.name
    with pytest.raises(BundleError) as err:
        load_bundle(str(pinned))
    text = str(err.value)
    assert pinned.name in text and foreign.name in text and "\n" not in text
    rc = main(["bundle", "show", str(pinned)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and pinned.name in lines[0] and foreign.name in lines[0]


def test_scoring_actor_refuses_a_bundle_other_than_the_scans(tmp_path):
    from ood_audit.scan.score import ScoreActor

    pinned, foreign = _two_bundles(tmp_path)
    with pytest.raises(BundleError) as err:
        ScoreActor(str(pinned), "run", bundle_id=foreign.name, device="cpu")
    assert foreign.name in str(err.value) and pinned.name in str(err.value) and "\n" not in str(err.value)
    # Given its own id, the same actor gets past the pin (these test bundles then fail the audit schema).
    with pytest.raises(BundleError) as err:
        ScoreActor(str(pinned), "run", bundle_id=pinned.name, device="cpu")
    assert foreign.name not in str(err.value)


@pytest.mark.s3
def test_s3_bundle_objects_are_never_overwritten(s3_config, s3_bucket, s3_client):
    """On S3 each bundle object is put with If-None-Match: an object already at a bundle's key with other
    content (a half-copied foreign bundle) is refused in one line, not replaced."""
    meta, tensors = sample(0)
    root = f"s3://{s3_bucket}/pin"
    uri = write_bundle(root, meta, tensors=tensors, s3=s3_config)
    key = uri[len(f"s3://{s3_bucket}/"):]
    assert write_bundle(root, meta, tensors=tensors, s3=s3_config) == uri  # same content: nothing written
    s3_client.delete_object(Bucket=s3_bucket, Key=f"{key}/bundle.json")
    s3_client.put_object(Bucket=s3_bucket, Key=f"{key}/model.safetensors", Body=b"someone else's")
    with pytest.raises(BundleError) as err:
        write_bundle(root, meta, tensors=tensors, s3=s3_config)
    assert "model.safetensors already exists" in str(err.value) and "\n" not in str(err.value)
    body = s3_client.get_object(Bucket=s3_bucket, Key=f"{key}/model.safetensors")["Body"].read()
    assert body == b"someone else's"
