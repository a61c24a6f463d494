"""Exact-duplicate digest index under an output root: first URI per content digest, exactly-once adds."""
from __future__ import annotations

import io
import os
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from ood_audit.errors import DataError
from ood_audit.store.digests import DigestIndex, content_sha256

from tests.quality.photos import jpeg, photos, random_crops


@pytest.fixture(scope="module")
def distinct() -> list[bytes]:
    """240 distinct JPEGs: random 64 px crops of the sample photos."""
    rng = np.random.default_rng(1)
    out = [jpeg(c) for a in photos().values() for c in random_crops(a, 35, rng, size=64)][:240]
    assert len({content_sha256(b) for b in out}) == len(out)
    return out


def _rows(root) -> int:
    return sum(pq.read_metadata(os.path.join(d, f)).num_rows
               for d, _, files in os.walk(root) for f in files if f.endswith(".parquet"))


def _files(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


def test_duplicates_within_one_run_resolve_to_the_lowest_plan_order(tmp_path, distinct):
    # Objects 0..199 are distinct; 200..259 repeat some of them. Added in shuffled batches of 37.
    objs = [(f"s3://b/img/{i:04d}.jpg", distinct[i]) for i in range(200)]
    copies = {200 + j: (j * 7) % 200 for j in range(60)}
    objs += [(f"s3://b/copy/{i:04d}.jpg", distinct[src]) for i, src in copies.items()]
    triples = [(content_sha256(b), uri, order) for order, (uri, b) in enumerate(objs)]
    shuffled = triples[:]
    random.Random(0).shuffle(shuffled)
    index = DigestIndex(str(tmp_path / "out"))
    for k in range(0, len(shuffled), 37):
        index.add("r1", shuffled[k:k + 37])
    first = index.lookup([t[0] for t in triples])
    for order, (uri, _) in enumerate(objs):
        expected = objs[copies[order]][0] if order in copies else uri
        assert first[order] == expected
    dup_of = [f if f != uri else None for f, (uri, _) in zip(first, objs)]
    assert sum(d is not None for d in dup_of) == 60  # the copies, and nothing else


def test_a_copy_added_before_its_original_is_superseded_by_the_lower_order(tmp_path, distinct):
    index = DigestIndex(str(tmp_path / "out"))
    d = content_sha256(distinct[0])
    assert index.add("r1", [(d, "s3://b/late.jpg", 9)]) == 1
    assert index.lookup([d]) == ["s3://b/late.jpg"]
    assert index.add("r1", [(d, "s3://b/early.jpg", 2)]) == 1
    assert index.lookup([d]) == ["s3://b/early.jpg"]
    assert index.add("r1", [(d, "s3://b/later.jpg", 5)]) == 0  # already implied: nothing written


def test_duplicates_across_two_runs_point_at_the_earlier_run(tmp_path, distinct):
    root = tmp_path / "out"
    index = DigestIndex(str(root))
    night1 = [(content_sha256(distinct[i]), f"s3://b/n1/{i}.jpg", i) for i in range(100)]
    assert index.add("20261201T000000Z-aaaaaa", night1) == 100
    # Night 2: 50 objects seen on night 1 under new names, 50 new ones. Its id sorts *before* night 1's,
    # so the answer cannot come from id order: night 1 was first because it added first.
    night2 = [(content_sha256(distinct[i]), f"s3://b/n2/{i}.jpg", i - 50) for i in range(50, 150)]
    assert index.add("00-night2", night2) == 50
    first = DigestIndex(str(root)).lookup([t[0] for t in night2])
    assert first[:50] == [f"s3://b/n1/{i}.jpg" for i in range(50, 100)]
    assert first[50:] == [f"s3://b/n2/{i}.jpg" for i in range(100, 150)]
    assert _rows(root / "digests") == 150  # one row per distinct digest


def test_no_false_duplicates_among_distinct_images(tmp_path, distinct):
    index = DigestIndex(str(tmp_path / "out"), prefix_chars=1)  # few partitions: many digests share one
    triples = [(content_sha256(b), f"/data/{i}.jpg", i) for i, b in enumerate(distinct)]
    index.add("r1", triples)
    assert index.lookup([t[0] for t in triples]) == [t[1] for t in triples]
    other = [content_sha256(b + b"\0") for b in distinct[:20]]  # near-identical bytes, different digests
    assert index.lookup(other) == [None] * 20


def test_re_adding_is_idempotent_and_names_are_content_derived(tmp_path, distinct):
    triples = [(content_sha256(b), f"s3://b/{i}.jpg", i) for i, b in enumerate(distinct)]
    a, b = tmp_path / "a", tmp_path / "b"
    first = DigestIndex(str(a))
    assert first.add("r1", triples) == len(triples)
    before = _files(a)
    assert first.add("r1", triples) == 0                    # the same batch again
    assert first.add("r1", triples[::-1][:100]) == 0        # another grouping of the same objects
    assert _files(a) == before
    assert _rows(a) == len(triples)
    # A batch that failed half way: the retry writes the missing partition, under the same name.
    lost = sorted(before)[3]
    os.remove(a / lost)
    assert first.add("r1", triples) == pq.ParquetFile(io.BytesIO(before[lost])).metadata.num_rows
    assert _files(a) == before
    # Another root given the same batch writes byte-identical files under the same names.
    DigestIndex(str(b)).add("r1", triples)
    assert _files(b) == before


def test_lookup_opens_only_the_partitions_and_row_groups_it_needs(tmp_path, distinct):
    index = DigestIndex(str(tmp_path / "out"))
    triples = [(content_sha256(b), f"/d/{i}.jpg", i) for i, b in enumerate(distinct)]
    for k in range(0, len(triples), 80):  # three adds: up to three files per partition
        index.add("r1", triples[k:k + 80])
    probe = [triples[5][0], triples[90][0], triples[200][0]]
    assert index.lookup(probe) == ["/d/5.jpg", "/d/90.jpg", "/d/200.jpg"]
    prefixes = {d[:2] for d in probe}
    files_there = sum(len(os.listdir(tmp_path / "out" / "digests" / f"p={p}")) for p in prefixes)
    assert index.last.partitions == len(prefixes)
    assert index.last.files == files_there < len(_files(tmp_path / "out"))
    assert index.last.row_groups <= len(probe)  # files that cannot hold a probe are skipped by statistics


def test_compaction_keeps_every_answer_and_leaves_one_file_per_partition(tmp_path, distinct):
    root = tmp_path / "out"
    index = DigestIndex(str(root), prefix_chars=1)
    one = [(content_sha256(b), f"/n1/{i}.jpg", 1000 - i) for i, b in enumerate(distinct[:150])]
    for k in range(0, 150, 30):
        index.add("n1", one[k:k + 30])
    index.add("n1", [(t[0], t[1].replace("n1", "n1b"), 0) for t in one[:10]])  # lower orders win
    two = [(content_sha256(b), f"/n2/{i}.jpg", i) for i, b in enumerate(distinct[100:])]
    index.add("n2", two)
    probe = [t[0] for t in one + two]
    before = index.lookup(probe)
    n_files = len(_files(root))
    removed = index.compact()
    parts = sorted(os.listdir(root / "digests"))
    assert len(_files(root)) == len(parts) and removed >= n_files - len(parts) > 0
    assert all(len(os.listdir(root / "digests" / p)) == 1 for p in parts)
    assert index.lookup(probe) == before
    assert before[:10] == [f"/n1b/{i}.jpg" for i in range(10)]
    assert _rows(root) == len(set(probe))
    assert index.compact() == 0                       # already compact
    assert index.add("n2", two) == 0                  # still idempotent after compaction
    new = content_sha256(b"new object")
    assert index.add("n3", [(new, "/n3/x.jpg", 0)]) == 1 and index.lookup([new]) == ["/n3/x.jpg"]


def test_bad_digests_and_orders_are_refused(tmp_path):
    index = DigestIndex(str(tmp_path / "out"))
    with pytest.raises(DataError):
        index.lookup(["abc"])
    with pytest.raises(DataError):
        index.add("r1", [("0" * 64, "/x.jpg", -1)])
    assert index.lookup(["A" * 64]) == [None]  # upper-case hex is accepted and normalised


def test_on_s3_across_runs(s3_bucket, s3_config, distinct):
    root = f"s3://{s3_bucket}/audit"
    index = DigestIndex(root, s3=s3_config)
    one = [(content_sha256(distinct[i]), f"s3://{s3_bucket}/in/{i}.jpg", i) for i in range(30)]
    assert index.add("n1", one) == 30
    two = [(content_sha256(distinct[i]), f"s3://{s3_bucket}/in2/{i}.jpg", i) for i in range(20, 40)]
    assert index.add("n2", two) == 10
    assert index.add("n2", two) == 0
    assert index.compact() > 0
    got = DigestIndex(root, s3=s3_config).lookup([t[0] for t in two])
    assert got == [f"s3://{s3_bucket}/in/{i}.jpg" for i in range(20, 30)] + \
        [f"s3://{s3_bucket}/in2/{i}.jpg" for i in range(30, 40)]
