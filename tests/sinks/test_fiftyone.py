"""The FiftyOne sink against real FiftyOne and its real mongod (PyPI ``fiftyone``, in its own cached venv:
:func:`tests.sinks.servers.fiftyone_venv`). FiftyOne is not in this venv, so each export runs in a subprocess of
the FiftyOne venv that also sees this project (:class:`~tests.sinks.servers.FiftyOneRunner`), which then reads
the dataset back as FiftyOne has it; every expected value is derived here, from the runs' Parquet rows, the
objects themselves and the bundle.

- Two real nights of the shared real scan (objects in SeaweedFS): ``s3://`` objects, which open-source FiftyOne
  cannot read, are copied locally; a re-run adds nothing.
- A real scan of local, non-square and EXIF-rotated images with the same bundle, exported by the nightly's
  export stage and then the CLI: the CSD boxes are the product's geometry on the upright image; a ledger that
  lost its record of a batch (the process died after FiftyOne added it) adds nothing either.
- FiftyOne's database unreachable: one line. Without FiftyOne in this venv: the one line that says how to
  install it (fast, not ``slow``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from ood_audit.cli import main
from ood_audit.errors import ConfigError
from ood_audit.sinks.fiftyone import INSTALL_HINT, fiftyone_available
from ood_audit.store.schema import SPEC_SCORES

pytestmark = pytest.mark.timeout(900)
BUDGET = 1000
CHILD = "from tests.sinks.test_fiftyone import child; child()"


def child() -> None:
    """In the FiftyOne venv: the exports of ``sys.argv[1]`` (JSON ``{"exports": [...], "dataset": NAME}``, each
    export CLI ``argv``, or a ``nightly`` config whose first export runs as the nightly's export stage), one
    after the other; after each, the dataset's sample count, and after the last, the dataset as FiftyOne reads
    it, to ``sys.argv[2]``."""
    job = json.loads(sys.argv[1])
    out: dict[str, Any] = {"exports": []}
    for e in job["exports"]:
        done: dict[str, Any] = {}
        if "nightly" in e:
            from ood_audit.io.fs import S3Config
            from ood_audit.nightly.config import parse_config
            from ood_audit.nightly.run import NightlyResult, _export

            cfg = parse_config(e["nightly"])
            res = NightlyResult(e["run_id"])
            _export(cfg, cfg.exports[0], e["run_id"], S3Config.from_env(cfg.s3.endpoint_url, retry_s=cfg.s3.retry_s),
                    res, None)
            done["rc"], done["summary"] = 0, res.exports[0]
        else:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                done["rc"] = main(e["argv"])
            done["summary"] = json.loads(buf.getvalue()) if done["rc"] == 0 else None
        if job.get("dataset"):
            import fiftyone as fo

            done["count"] = len(fo.load_dataset(job["dataset"]))
        out["exports"].append(done)
    if job.get("dataset"):
        import fiftyone as fo

        ds = fo.load_dataset(job["dataset"])
        out.update(persistent=ds.persistent, media_type=ds.media_type,
                   schema={k: type(v).__name__ for k, v in ds.get_field_schema().items()},
                   samples=[s.to_dict() for s in ds])
    Path(sys.argv[2]).write_text(json.dumps(out, default=str))


def _run(runner, exports: list[dict], dataset: str | None, tmp_path: Path,
         env: dict[str, str] | None = None) -> dict:
    """``exports`` in one FiftyOne process (:func:`child`); its mongod stops with it, the dataset stays."""
    dump = tmp_path / f"dump-{uuid.uuid4().hex[:8]}.json"
    res = runner.run(CHILD, json.dumps({"exports": exports, "dataset": dataset}), str(dump), env=env)
    assert res.returncode == 0 and dump.exists(), f"exit {res.returncode}: {res.stderr[-3000:]}"
    return {**json.loads(dump.read_text()), "stderr": res.stderr}


def _key(uri: str, etag: str | None, bundle_id: str) -> str:
    return hashlib.sha256("\x1f".join((uri, etag or "", bundle_id)).encode()).hexdigest()[:32]


def _upright(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.exif_transpose(im).size


def _expected_box(row: dict, upright: tuple[int, int], geometry: tuple[Any, tuple[int, int]]) -> list[float]:
    """The product's geometry (:func:`ood_audit.scores.csd.view_box`) on the upright image, relative."""
    from ood_audit.scores.csd import view_box

    (w, h), (pre, map_hw) = upright, geometry
    left, top, right, bottom = view_box(row["csd_view"], pre, (w, h), map_hw)
    return [left / w, top / h, (right - left) / w, (bottom - top) / h]


def _bundle(scan) -> tuple[tuple[Any, tuple[int, int]], list[str]]:
    """The bundle's preprocess and last-map size, and its bank's URIs, as the report reads them."""
    from ood_audit.bundle.files import open_bundle
    from ood_audit.models.taps import last_map_hw

    b = open_bundle(scan.bundle_uri, s3=scan.s3, verify=False)
    m, pre = b.info.model, b.info.preprocess
    return ((pre, last_map_hw(m.arch, m.num_classes, m.small_input, pre.output_hw)),
            b.bank_sources().column("uri").to_pylist())


def _rows(output: str, s3, run_id: str) -> dict[str, dict]:
    from ood_audit import load_report

    return {r["uri"]: r for r in load_report(output, run_id, s3=s3).to_pylist() if r["status"] == "ok"}


def _check_sample(s: dict, row: dict, bank: list[str], policy: str = "top-k") -> None:
    """One sample's fields against its Parquet row (SPEC §12's anomaly: 1 - min(pct featurenorm, csd) / 100)."""
    anomaly = 1 - min(row["pct_featurenorm"], row["pct_csd"]) / 100
    for c in ("uri", "etag", "run_id", "bundle_id", "flagged", "pred_class", "csd_view", "duplicate_of",
              "near_duplicate_of_id"):
        assert s.get(c) == row[c], c
    for c in ("flag_reasons", "quality_issues"):
        assert s.get(c) == (None if row[c] is None else list(row[c])), c
    for c in [c for score in SPEC_SCORES for c in (score, f"pct_{score}")]:  # every sink's scores (SPEC §12)
        assert (s.get(c) is None) == (row[c] is None) and (row[c] is None or abs(s[c] - row[c]) < 1e-6), c
    assert s["export_key"] == _key(row["uri"], row["etag"], row["bundle_id"])
    assert s["policy"] == policy and s["queue"] == "outliers" and s["tags"] == ["ood_audit"]
    assert s["flagged_by"] == (row["flag_reasons"] or [None])[0]
    assert abs(s["anomaly"] - anomaly) < 1e-6 and abs(s["label"]["confidence"] - anomaly) < 1e-6
    assert s["label"]["label"] == ("outlier" if row["flagged"] else "in-distribution")
    assert s["nearest_uris"] == [bank[r] for r in row["knn_nn"]] and len(row["knn_nn"]) > 0
    assert all(abs(a - b) < 1e-5 for a, b in zip(s["nearest_distances"], row["knn_nn_dist"], strict=True))


def _box(s: dict) -> list[float] | None:
    dets = (s.get("csd_box") or {}).get("detections") or []
    assert len(dets) <= 1
    return dets[0]["bounding_box"] if dets else None


# -- two real nights from S3 ------------------------------------------------------------------------------------


def test_two_real_nights_from_s3_fill_a_dataset_once(real_scan, fiftyone, tmp_path):
    import boto3

    from tests.sinks.test_real_scan import _expected

    scan, want = real_scan, _expected(real_scan)
    env = {"AWS_ACCESS_KEY_ID": scan.s3.access_key, "AWS_SECRET_ACCESS_KEY": scan.s3.secret_key,
           "AWS_REGION": "us-east-1"}
    name = f"real-scan-{uuid.uuid4().hex[:8]}"
    argv = ["export", "--report", scan.output, "--s3-endpoint", scan.s3.endpoint_url, "--policy", "top-k",
            "--budget", str(BUDGET), "--json", "--to", "fiftyone", "--fiftyone-dataset", name]
    first = _run(fiftyone, [{"argv": [*argv, "--run-id", "night-1"]}], name, tmp_path, env)
    last = _run(fiftyone, [{"argv": [*argv, "--run-id", "night-2"]}] * 2, name, tmp_path, env)  # and a re-run
    docs = first["exports"] + last["exports"]
    counts = [d["count"] for d in docs]
    print(f"fiftyone dataset {name}: samples after night 1, night 2, the re-run: {counts}")
    n1 = len(want["night-1"])
    assert counts == [n1, n1 + 2, n1 + 2]
    assert [d["summary"]["sent_now"] for d in docs] == [n1, 2, 0] and docs[2]["summary"]["already_sent"] == \
        docs[2]["summary"]["selected"]
    assert last["persistent"] is True and last["media_type"] == "image"
    assert {"csd_box": "EmbeddedDocumentField", "label": "EmbeddedDocumentField", "export_key": "StringField",
            "nearest_uris": "ListField", "quality_issues": "ListField"}.items() <= last["schema"].items()
    samples = last["samples"]
    by_run = {r: sorted(s["uri"] for s in samples if s["run_id"] == r) for r in ("night-1", "night-2")}
    assert by_run == want

    geometry, bank = _bundle(scan)
    rows = {r: _rows(scan.output, scan.s3, r) for r in ("night-1", "night-2")}
    client = boto3.client("s3", endpoint_url=scan.s3.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=scan.s3.access_key, aws_secret_access_key=scan.s3.secret_key)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=scan.bucket, Prefix="incoming/")
    there = {o["Key"] for page in pages for o in page.get("Contents", [])}
    gone = {s["uri"] for s in samples} - {f"s3://{scan.bucket}/{k}" for k in there}
    assert scan.deleted_uri in gone  # and night 2 dropped one more
    media_root = fiftyone.home / "datasets" / "ood-audit-media" / name
    boxes = 0
    for s in samples:
        row = rows[s["run_id"]][s["uri"]]
        _check_sample(s, row, bank)
        path = Path(s["filepath"])  # open-source FiftyOne reads local files: the object's copy
        assert path.parent.parent == media_root and path.suffix == Path(s["uri"]).suffix
        key = s["uri"].split(f"s3://{scan.bucket}/", 1)[1]
        if key not in there:  # gone since its scan: no copy, and the box on the recorded size, as in the report
            assert not path.exists() and s["media_error"] == "deleted since the scan"
            upright = (row["width"], row["height"])
        else:  # the object as it is now (a changed one too, as the report shows it)
            data = client.get_object(Bucket=scan.bucket, Key=key)["Body"].read()
            assert path.read_bytes() == data and s["media_error"] is None
            upright = _upright(data)
        if row["csd_view"] is not None:
            assert _box(s) == pytest.approx(_expected_box(row, upright, geometry), abs=1e-6)
            assert s["csd_box"]["detections"][0]["label"] == ("q00", "q01", "q10", "q11", "global",
                                                              "centre")[row["csd_view"]]
            boxes += 1
    assert boxes > n1 // 2


# -- local, non-square and rotated images, through the nightly's export stage ---------------------------------


SIZES = {"wide.png": (64, 32), "tall.png": (30, 72), "odd.png": (50, 37), "square.png": (32, 32),
         "banner.jpg": (96, 24)}


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype="uint8"))


@pytest.fixture(scope="module")
def local_scan(real_scan, shared_ray, tmp_path_factory):
    """A real scan of a local folder with the real scan's bundle; ``night2()`` adds an image, changes one and
    scans again."""
    from ood_audit.scan import ScanConfig, run_scan

    root = tmp_path_factory.mktemp("fo-local")
    images, output = root / "images", str(root / "audit")
    images.mkdir()
    for i, (name, size) in enumerate(SIZES.items()):
        _image(size, i).save(images / name)
    rotated = _image((60, 28), 99)  # stored 60x28, shown upright as 28x60 (EXIF orientation 6)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(images / "rotated.jpg", exif=exif.tobytes())
    scan = dict(bundle=real_scan.bundle_uri, output=output, inputs=(str(images),), s3=real_scan.s3, chunk_size=100,
                batch_size=32, workers=1, read_threads=4)
    shared_ray.ensure()
    run_scan(ScanConfig(run_id="night-1", **scan))

    def night2() -> None:  # after night 1's export: a catch-up would send night 2's rows too
        _image((80, 44), 7).save(images / "added.png")
        _image((44, 80), 8).save(images / "wide.png")  # new content, new etag
        shared_ray.ensure()
        run_scan(ScanConfig(run_id="night-2", **scan))

    return {"output": output, "images": images, "scan": real_scan, "night2": night2}


def test_local_images_get_the_products_box_and_a_lost_ledger_adds_nothing(local_scan, fiftyone, tmp_path):
    scan, output, images = local_scan["scan"], local_scan["output"], local_scan["images"]
    env = {"AWS_ACCESS_KEY_ID": scan.s3.access_key, "AWS_SECRET_ACCESS_KEY": scan.s3.secret_key,
           "AWS_REGION": "us-east-1"}
    name = f"local-{uuid.uuid4().hex[:8]}"
    config = {"bundle": scan.bundle_uri, "inputs": [str(images)], "output": output,
              "s3": {"endpoint_url": scan.s3.endpoint_url},
              "exports": [{"sink": "fiftyone", "dataset": name, "policy": "top-k", "budget": BUDGET}]}
    cli = ["export", "--report", output, "--s3-endpoint", scan.s3.endpoint_url, "--run-id", "night-2", "--catch-up",
           "--policy", "top-k", "--budget", str(BUDGET), "--json", "--to", "fiftyone", "--fiftyone-dataset", name]
    night1 = _run(fiftyone, [{"nightly": config, "run_id": "night-1"}], name, tmp_path, env)["exports"][0]
    local_scan["night2"]()
    night2 = _run(fiftyone, [{"argv": cli}], name, tmp_path, env)["exports"][0]
    assert night1["summary"]["sink"] == "fiftyone" and night1["count"] == len(SIZES) + 1
    assert night2["summary"]["sent_now"] == 2 and night2["count"] == len(SIZES) + 3  # added.png, the new wide.png

    ledger = Path(output) / "exports"
    batches = sorted(ledger.glob("fiftyone-*/outliers/*.parquet"))
    assert len(batches) == 2 and not list(ledger.glob("fiftyone-*/outliers/inflight/*"))
    for f in batches:  # as if each export died after FiftyOne added its batch, before the ledger recorded it
        f.unlink()
    final = _run(fiftyone, [{"argv": cli}] * 2, name, tmp_path, env)  # that ledger, then a re-run
    lost, again = final["exports"]
    print(f"fiftyone dataset {name}: samples after night 1, night 2, a lost ledger, a re-run: "
          f"{[d['count'] for d in (night1, night2, lost, again)]}")
    assert lost["count"] == again["count"] == night2["count"]
    assert "already in dataset" in final["stderr"] and lost["summary"]["already_sent"] == 0
    assert lost["summary"]["sent_now"] == lost["summary"]["selected"] == night2["count"]  # now recorded
    assert again["summary"]["sent_now"] == 0 and again["summary"]["already_sent"] == again["summary"]["selected"]

    geometry, bank = _bundle(scan)
    rows = {r: _rows(output, scan.s3, r) for r in ("night-1", "night-2")}
    samples = final["samples"]
    assert sorted(s["uri"] for s in samples) == sorted(
        [*rows["night-1"], *(u for u in rows["night-2"] if rows["night-2"][u]["etag"] != rows["night-1"].get(
            u, {}).get("etag"))])
    checked = set()
    for s in samples:
        row = rows[s["run_id"]][s["uri"]]
        _check_sample(s, row, bank)
        assert s["filepath"] == s["uri"] and s["media_error"] is None  # a local path: FiftyOne reads it as it is
        if s["run_id"] == "night-1" and s["uri"].endswith("wide.png"):
            continue  # its object changed since: the box is drawn on what is there now, as the report does
        if row["csd_view"] is None:
            continue
        upright = _upright(Path(s["uri"]).read_bytes())
        assert _box(s) == pytest.approx(_expected_box(row, upright, geometry), abs=1e-6), s["uri"]
        checked.add(Path(s["uri"]).name)
    assert {"tall.png", "odd.png", "banner.jpg", "rotated.jpg"} <= checked, checked
    rot = next(s for s in samples if s["uri"].endswith("rotated.jpg"))
    row = rows["night-1"][rot["uri"]]
    assert (row["width"], row["height"]) == (60, 28)  # the header's size, before rotation: not the box's
    assert _box(rot) != pytest.approx(_expected_box(row, (60, 28), geometry), abs=1e-3)


# -- failures -------------------------------------------------------------------------------------------------


def test_an_unreachable_database_is_one_line_and_records_nothing(fiftyone, tmp_path):
    from tests.reports import row, write_run

    out = str(tmp_path / "audit")
    write_run(out, "n1", [row(f"{tmp_path}/img-{i}.png", pct=1.0) for i in range(3)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the block ends
    uri = f"mongodb://ood:hunter2-not-for-logs@127.0.0.1:{port}/?serverSelectionTimeoutMS=1500"
    argv = ["export", "--report", out, "--to", "fiftyone", "--fiftyone-dataset", "never"]
    res = fiftyone.run(CHILD, json.dumps({"exports": [{"argv": argv}]}), str(tmp_path / "dump.json"),
                       env={"FIFTYONE_DATABASE_URI": uri})
    doc = json.loads((tmp_path / "dump.json").read_text())["exports"][0]
    lines = [x for x in res.stderr.splitlines() if "ood-audit: error" in x]
    assert doc["rc"] == 2 and len(lines) == 1, res.stderr[-3000:]
    assert (f"fiftyone dataset 'never' (mongodb://127.0.0.1:{port}/fiftyone): cannot open the dataset: "
            "ConnectionError: Could not connect to `mongod`") in lines[0]
    assert "Traceback" not in res.stderr and "hunter2" not in res.stderr
    assert not list((tmp_path / "audit").glob("exports/*/*/*.parquet"))
    res = fiftyone.run(CHILD, json.dumps({"exports": [{"argv": argv[:-2]}]}), str(tmp_path / "dump.json"))
    assert "ood-audit: error: --to fiftyone needs --fiftyone-dataset NAME" in res.stderr, res.stderr[-2000:]


def test_without_fiftyone_the_export_says_how_to_install_it(capsys):
    """FiftyOne is an optional extra, absent from this venv: one line and exit 2, before anything is read."""
    from ood_audit.nightly.config import parse_config

    if fiftyone_available():
        pytest.skip("FiftyOne is installed in this venv")
    assert main(["export", "--report", "/nonexistent-report", "--to", "fiftyone", "--fiftyone-dataset", "d"]) == 2
    err = capsys.readouterr().err
    assert err == f"ood-audit: error: {INSTALL_HINT}\n"
    assert main(["export", "--report", "/nonexistent-report", "--to", "jsonl", "--manifest-prefix", "/tmp/m",
                 "--fiftyone-dataset", "d"]) == 2
    assert "--fiftyone-dataset does not apply to --to jsonl" in capsys.readouterr().err
    base = {"bundle": "s3://b/bundle", "inputs": ["s3://b/in"], "output": "s3://b/out"}
    with pytest.raises(ConfigError, match=r"exports\[0\]\.dataset: needs FiftyOne: pip install 'ood-audit\[fiftyone"):
        parse_config({**base, "exports": [{"sink": "fiftyone", "dataset": "d"}]})
