"""The scan's read task computes ``content_sha256`` and the SPEC §14 quality issues of every object."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from ood_audit.scan.read import fetch_decode
from ood_audit.scan.rows import CHUNK, DIGEST, PIXELS, QUALITY, READ_S, SEQ, RowBuilder

from tests.datagen import png_bytes
from tests.quality.photos import jpeg, photos, resized


def _objects(tmp_path):
    photo = jpeg(resized(photos()["astronaut"]))
    files = {
        "black.png": png_bytes(np.zeros((64, 64, 3), np.uint8)),
        "photo.jpg": photo,
        "copy.jpg": photo,
        "strip.jpg": jpeg(resized(photos()["china"], (3000, 100))),
        "broken.jpg": photo[:200],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = [str(tmp_path / n) for n in files] + [str(tmp_path / "gone.jpg")]
    return files, uris


COLOUR_ID = {"grayscale_id_share": 0.0}  # a bundle whose held-out ID images are colour: grayscale is reported


def _read(uris, quality=COLOUR_ID):
    n = len(uris)
    batch = {"uri": np.array(uris, dtype=object), "etag": np.array(["e"] * n, dtype=object),
             "size": np.full(n, -1, np.int64), CHUNK: np.zeros(n, np.int32), SEQ: np.arange(n, dtype=np.int32)}
    return fetch_decode(batch, preprocess={"size": [32, 32]}, s3=None, max_bytes=1 << 24, max_pixels=1 << 26,
                        threads=2, quality=quality)


def test_read_task_adds_digest_and_quality_issues(tmp_path):
    files, uris = _objects(tmp_path)
    out = _read(uris)
    assert list(out["status"]) == ["ok", "ok", "ok", "ok", "decode_error", "missing"]
    digests = list(out[DIGEST])
    assert digests[:5] == [hashlib.sha256(d).hexdigest() for d in files.values()]
    assert digests[5] is None                      # nothing fetched
    assert digests[1] == digests[2]               # the copy has the photo's digest
    # Issues on the decoded array; tiny and odd_aspect_ratio from the original size (3000×100).
    assert out[QUALITY].to_pylist() == [["dark", "low_information", "grayscale"], [], [], ["odd_aspect_ratio"], None,
                                        None]
    assert out[QUALITY].type == pa.list_(pa.string())  # a list between stages, typed even where every list is empty
    assert out[PIXELS].shape == (6, 32, 32, 3)
    blurry_everywhere = _read(uris[:2], quality={**COLOUR_ID, "blurry": 1e9})
    assert blurry_everywhere[QUALITY].to_pylist() == [["dark", "blurry", "low_information", "grayscale"], ["blurry"]]


def test_report_rows_carry_the_new_columns_and_failed_rows_have_no_issues(tmp_path):
    _, uris = _objects(tmp_path)
    batch = _read(uris)
    batch[READ_S] = np.zeros(len(uris), np.float32)
    builder = RowBuilder({}, "bid", "run1", ["featurenorm"])
    ok = batch["status"] == "ok"
    table = builder.build({k: v for k, v in batch.items() if k != PIXELS},
                          {"featurenorm": np.ones(int(ok.sum())), "pred_class": np.zeros(int(ok.sum()))})
    assert table.column("content_sha256").to_pylist() == list(batch[DIGEST])
    assert table.column("quality_issues").to_pylist() == [["dark", "low_information", "grayscale"], [], [],
                                                           ["odd_aspect_ratio"], None, None]
    assert table.schema.field("quality_issues").type == pa.list_(pa.string())
