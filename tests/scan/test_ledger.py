"""The run ledger and listing helpers without Ray: plan, chunk commits, sweeps, done sets, chunking."""
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from ood_audit.errors import ConfigError
from ood_audit.io.listing import LISTING_SCHEMA
from ood_audit.store.run_ledger import ChunkTracker, RunLedger, Plan, RunLayout, check_run_id, new_run_id
from ood_audit.scan.plan import DoneSet, Skipped, check_inputs, rechunk, skip_done
from ood_audit.scan.rows import CHUNK, RowBuilder
from ood_audit.scan.write import write_parts
from ood_audit.store.records import ChunkMarker, FeedRow, ListingInfo, feed_rows
from ood_audit.store.schema import list_parts, open_reports, partition_uri

from tests.scan.test_rows import _batch


def _pages(n, page=7, etag="e"):
    uris = [f"s3://b/k{i:04d}" for i in range(n)]
    for i in range(0, n, page):
        yield pa.table([uris[i:i + page], [etag] * len(uris[i:i + page]), list(range(len(uris[i:i + page])))],
                       schema=LISTING_SCHEMA)


def test_rechunk_exact_sizes_and_order():
    chunks = list(rechunk(_pages(45), 10))
    assert [c.num_rows for c in chunks] == [10, 10, 10, 10, 5]
    assert pa.concat_tables(chunks).column("uri").to_pylist() == [f"s3://b/k{i:04d}" for i in range(45)]


def test_plan_slices_and_identity(tmp_path):
    ledger = RunLedger(RunLayout(str(tmp_path), "r1"))
    t0 = datetime(2026, 1, 2, tzinfo=timezone.utc)
    doc = ledger.open({"bundle_id": "b1", "inputs": ["s3://x/y"]}, now=t0)
    assert doc["run_date"] == "2026-01-02" and len(doc["attempts"]) == 1
    assert ledger.plan() is None
    plan = ledger.write_plan(rechunk(_pages(25), 10), slice_rows=4, info=lambda: ListingInfo(listed=25))
    assert plan.chunk_rows == [10, 10, 5] and ledger.plan().chunk_rows == [10, 10, 5]
    assert ledger.plan().info == ListingInfo(listed=25)
    slices = ledger.slices(plan, [1, 2])
    assert [(s.chunk, s.row_group, s.start, s.rows) for s in slices] == [
        (1, 0, 0, 4), (1, 1, 4, 4), (1, 2, 8, 2), (2, 0, 0, 4), (2, 1, 4, 1)]
    again = ledger.open({"bundle_id": "b1", "inputs": ["s3://x/y"]}, now=datetime(2026, 1, 3, tzinfo=timezone.utc))
    assert again["run_date"] == "2026-01-02" and len(again["attempts"]) == 2  # the first attempt's date stays
    with pytest.raises(ConfigError, match="--run-id r1 was started with bundle_id='b1'"):
        ledger.open({"bundle_id": "b2", "inputs": ["s3://x/y"]})


def _feed(chunk, seqs, name):
    return FeedRow(chunk=chunk, file=name, rows=len(seqs), seqs=list(seqs), counts={"ok": len(seqs)}, flagged=0,
                   read_s=0.0, score_s=0.0, write_s=0.0, scanned_min=0.0, scanned_max=0.0, workers=["n:1"])


def test_chunk_tracker_commits_exact_cover_and_refuses_duplicates():
    tracker = ChunkTracker(Plan([6, 4], 2), attempt=1)
    assert tracker.add(_feed(0, [0, 1, 2], "a")) is None
    assert tracker.add(_feed(1, [3, 0, 1, 2], "b")).files == ["b"]
    marker = tracker.add(_feed(0, [5, 3, 4], "c"))
    assert marker.chunk == 0 and marker.rows == 6 and marker.files == ["a", "c"]
    assert marker.counts["ok"] == 6 and marker.workers == ["n:1"]
    dup = ChunkTracker(Plan([4], 2), attempt=1)
    dup.add(_feed(0, [0, 1], "a"))
    assert dup.add(_feed(0, [1, 2, 3], "b")) is None  # position 1 twice: never committed
    assert dup.conflicted == {0}


def test_sweep_removes_files_no_marker_names(tmp_path):
    ledger = RunLedger(RunLayout(str(tmp_path), "r1"))
    part = partition_uri(str(tmp_path), "2026-01-02")
    builder = RowBuilder({}, "bid", "r1", ["featurenorm"])
    table = builder.build(_batch(["missing"] * 4), None)
    feed1 = feed_rows(write_parts(table.slice(0, 2), partition=part, run_id="r1", attempt=1))
    feed2 = feed_rows(write_parts(table.slice(2, 2), partition=part, run_id="r1", attempt=1))
    other = feed_rows(write_parts(table, partition=part, run_id="r10", attempt=1))  # another run: untouched
    assert len(list_parts(part, run_id="r1")) == 2 and len(list_parts(part)) == 3
    marker = ChunkMarker(chunk=0, rows=2, attempt=1, files=[feed1[0].file])
    assert ledger.sweep("2026-01-02", {0: marker}) == [feed2[0].file]
    assert list_parts(part, run_id="r1") == [feed1[0].file]
    assert list_parts(part, run_id="r10") == [other[0].file]


def test_write_parts_names_depend_only_on_rows(tmp_path):
    part = partition_uri(str(tmp_path), "2026-01-02")
    table = RowBuilder({}, "bid", "r1", ["featurenorm"]).build(_batch(["missing"] * 5), None)
    first = feed_rows(write_parts(table, partition=part, run_id="r1", attempt=2))
    again = feed_rows(write_parts(table.take([4, 2, 0, 1, 3]), partition=part, run_id="r1", attempt=2))
    assert [f.file for f in first] == [f.file for f in again]  # a retried task overwrites, never adds
    assert len(list_parts(part)) == 1
    assert first[0].counts["missing"] == 5 and first[0].seqs == [0, 1, 2, 3, 4]


def _commit(output, run_id, bundle_id, feeds, day=datetime(2026, 1, 2, tzinfo=timezone.utc)):
    """Commit the chunk ``feeds`` cover, as the scan does: run.json, then the chunk's marker."""
    ledger = RunLedger(RunLayout(str(output), run_id))
    ledger.open({"bundle_id": bundle_id}, now=day)
    rows = sum(len(f.seqs) for f in feeds)
    ledger.commit(ChunkMarker.of_feeds(feeds[0].chunk, rows, feeds, 1))


def test_done_set_counts_only_final_statuses_of_the_same_bundle(tmp_path):
    part = partition_uri(str(tmp_path), "2026-01-02")
    statuses = ["ok", "decode_error", "unsupported", "missing", "too_large"]
    batch = _batch(statuses)
    scores = {"featurenorm": np.array([1.0])}
    _commit(tmp_path, "old", "b1", feed_rows(write_parts(RowBuilder({}, "b1", "old", ["featurenorm"]).build(
        batch, scores), partition=part, run_id="old", attempt=1)))
    _commit(tmp_path, "other", "b2", feed_rows(write_parts(RowBuilder({}, "b2", "other", ["featurenorm"]).build(
        _batch(["ok"] * 5), {"featurenorm": np.ones(5)}), partition=part, run_id="other", attempt=1)))
    assert open_reports(str(tmp_path)).count_rows() == 10
    done = DoneSet.from_reports(str(tmp_path), "b1")
    assert len(done) == 3
    listing = pa.table({"uri": batch["uri"].tolist() + ["s3://b/new.png"],
                        "etag": ["e0", "e1", "changed", "e3", "e4", None]}, schema=LISTING_SCHEMA.remove(2))
    assert done.contains(listing).tolist() == [True, True, False, False, False, False]
    counter = Skipped()
    kept = list(skip_done([listing.append_column("size", pa.array([1] * 6, pa.int64()))], done, counter))
    assert counter.listed == 6 and counter.skipped == 2 and kept[0].num_rows == 4
    assert len(DoneSet.from_reports(str(tmp_path / "nothing"), "b1")) == 0


def test_stray_part_files_are_invisible_and_swept(tmp_path):
    """A part file no marker names (a crashed attempt's) is read by no reader, and `runs sweep` removes it."""
    from ood_audit.store.run_ledger import sweep_output
    from ood_audit.store.runs import all_committed_parts, committed_parts, parts_dataset

    out = str(tmp_path)
    part = partition_uri(out, "2026-01-02")
    ok = {"featurenorm": np.ones(5)}
    committed = feed_rows(write_parts(RowBuilder({}, "b1", "r1", ["featurenorm"]).build(_batch(["ok"] * 5), ok),
                                      partition=part, run_id="r1", attempt=1))
    _commit(tmp_path, "r1", "b1", committed)
    stray = _batch(["ok"] * 5)
    stray["uri"] = np.array([f"s3://b/stray{i}.png" for i in range(5)], dtype=object)
    stray[CHUNK] = np.ones(5, np.int32)  # chunk 1 of r1: written, never committed
    stray_feeds = feed_rows(write_parts(RowBuilder({}, "b1", "r1", ["featurenorm"]).build(stray, ok), partition=part,
                                        run_id="r1", attempt=2))
    orphan = feed_rows(write_parts(RowBuilder({}, "b1", "gone", ["featurenorm"]).build(stray, ok), partition=part,
                                   run_id="gone", attempt=1))
    assert len(list_parts(part)) == 3
    parts = committed_parts(out, "r1")
    assert parts is not None and list(parts.names) == [f.file for f in committed]
    assert [p.run_id for p in all_committed_parts(out)] == ["r1"]  # "gone" has no run.json, nothing committed
    rows = parts_dataset(all_committed_parts(out)).to_table(columns=["uri"]).column("uri").to_pylist()
    assert sorted(rows) == sorted(_batch(["ok"] * 5)["uri"].tolist())
    done = DoneSet.from_reports(out, "b1")
    assert len(done) == 5
    listing = pa.table({"uri": stray["uri"].tolist(), "etag": stray["etag"].tolist()}, schema=LISTING_SCHEMA.remove(2))
    assert not done.contains(listing).any()  # the stray rows are scanned again
    result = sweep_output(out)
    assert sorted(result.removed) == sorted(partition_uri(out, "2026-01-02") + "/" + f.file
                                            for f in stray_feeds + orphan)
    assert list_parts(part) == [f.file for f in committed] and result.busy_runs == []
    assert sweep_output(out).removed == []


def test_inputs_and_run_ids():
    assert check_inputs(["s3://b/a", "s3://b/ab"], "s3://b/out") == ["s3://b/a", "s3://b/ab"]
    with pytest.raises(ConfigError, match="--input s3://b/a/sub lies inside --input s3://b/a"):
        check_inputs(["s3://b/a", "s3://b/a/sub"], "s3://b/out")
    with pytest.raises(ConfigError, match="--output s3://b/a/out lies inside --input s3://b/a"):
        check_inputs(["s3://b/a"], "s3://b/a/out")
    with pytest.raises(ConfigError, match="--input 'hdfs://x'"):
        check_inputs(["hdfs://x"], "s3://b/out")
    assert check_run_id(new_run_id()) and check_run_id("nightly_2026-01-02")
    for bad in ("", "a b", "a.b", "-x", "x" * 65):
        with pytest.raises(ConfigError, match="--run-id"):
            check_run_id(bad)
