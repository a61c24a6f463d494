"""The run's typed records (feed row, chunk marker, summary): round trips, old formats through the migration,
and the scan's one-time setup (the SPEC §14 thresholds decided, and warned about, once per scan)."""
import json
import logging
from types import SimpleNamespace

import pyarrow as pa
import pytest

from ood_audit.preprocess import Preprocess

from ood_audit.bundle.schema import MEASURED_ON_MODEL_INPUT, QualityPart
from ood_audit.errors import DataError, ReportError
from ood_audit.io.decode import STATUSES
from ood_audit.io.fs import write_bytes
from ood_audit.io.listing import LISTING_SCHEMA
from ood_audit.store.records import (
    FEED_SCHEMA,
    MARKER_FORMAT,
    SUMMARY_FORMAT,
    ChunkMarker,
    DuplicateStats,
    FeedRow,
    RunSummary,
    StartupPhases,
    feed_rows,
    feed_table,
    parse_marker,
    parse_summary,
)
from ood_audit.store.run_ledger import RunLayout, RunLedger
from ood_audit.store.runs import SUMMARY_JSON, find_run, list_runs, run_dir


def _feed(chunk: int, file: str, seqs: list[int], **counts: int) -> FeedRow:
    return FeedRow(chunk=chunk, file=file, rows=len(seqs), seqs=seqs, counts=counts, flagged=1, read_s=0.5,
                   score_s=1.25, write_s=0.125, scanned_min=10.0, scanned_max=12.5, workers=["n1:7", "n2:8"])


def test_feed_rows_cross_arrow_unchanged():
    rows = [_feed(0, "a", [0, 2], ok=1, missing=1), _feed(3, "b", [1], ok=1)]
    table = feed_table(rows)
    assert table.schema == FEED_SCHEMA
    assert table.column("n_missing").to_pylist() == [1, 0]  # every status has its column, zero when absent
    back = feed_rows(table)
    assert [r.file for r in back] == ["a", "b"] and back[0].seqs == [0, 2]
    assert back[0].counts == {s: {"ok": 1, "missing": 1}.get(s, 0) for s in STATUSES}
    assert (back[1].score_s, back[1].workers) == (1.25, ["n1:7", "n2:8"])


def test_marker_from_feeds_round_trips_through_the_ledger(tmp_path):
    feeds = [_feed(2, "p2", [1], ok=1), _feed(2, "p1", [0, 2], ok=1, decode_error=1)]
    marker = ChunkMarker.of_feeds(2, 3, feeds, attempt=4)
    assert marker.files == ["p1", "p2"] and marker.rows == 3 and marker.attempt == 4
    assert marker.counts["ok"] == 2 and marker.counts["decode_error"] == 1 and marker.flagged == 2
    assert (marker.seconds.read_s, marker.seconds.score_s, marker.seconds.write_s) == (1.0, 2.5, 0.25)
    assert marker.workers == ["n1:7", "n2:8"] and marker.marker_format == MARKER_FORMAT
    ledger = RunLedger(RunLayout(str(tmp_path), "r1"))
    ledger.commit(marker)
    assert ledger.markers() == {2: marker}


def test_old_marker_reads_and_a_broken_one_is_one_line(tmp_path):
    ledger = RunLedger(RunLayout(str(tmp_path), "r1"))
    old = {"chunk": 0, "rows": 2, "attempt": 1, "files": ["f"], "counts": {"ok": 2}, "flagged": 0,
           "seconds": {"read_s": 0.1, "score_s": 0.2, "write_s": 0.3}, "workers": ["w"],
           "committed_at": "2026-01-02T00:00:00+00:00"}  # as written before markers carried a format
    write_bytes(ledger.layout.marker(0), json.dumps(old).encode())
    marker = ledger.markers()[0]
    assert marker.marker_format == MARKER_FORMAT and marker.files == ["f"] and marker.seconds.score_s == 0.2
    with pytest.raises(DataError, match=r"c000001\.json field files"):
        parse_marker({"chunk": 1, "rows": 2, "attempt": 1, "files": "f"}, ledger.layout.marker(1))


def _summary() -> RunSummary:
    return RunSummary.model_validate({
        "run_id": "r1", "run_date": "2026-01-02", "reports": "/o/reports/run_date=2026-01-02", "complete": True,
        "bundle": {"id": "b" * 32, "uri": "/b", "flag_on": ["csd"], "precision": "float32"},
        "inputs": ["/in"], "manifest": None, "incremental": False, "objects": 3,
        "chunks": {"total": 1, "committed": 1},
        "listing": {"listed": 3, "skipped_done": 0, "done_set": None, "done_set_s": 0.0, "listing_s": 0.1,
                    "keys_per_s": 30.0, "chunk_size": 10},
        "counts": {s: 1 if s == "ok" else 0 for s in STATUSES}, "flagged": 1, "rows_committed": 3,
        "rows_in_files": 3, "files": 1, "attempts": 1,
        "executions": [{"attempt": 1, "seconds": 2.0, "rows": 3, "chunks_committed": 1, "error": None}],
        "throughput": {"objects_per_s": 1.5, "steady_objects_per_s": None, "startup_s": 0.5},
        "timings_s": {"listing": 0.1, "scan_wall": 2.0, "stage_busy": {"read": 0.1, "score": 0.2, "write": 0.3}},
        "workers": {"scoring_actors": 1, "nodes": 1}, "config": {"batch_size": 64}, "quality_thresholds": {"dark": 20.0},
        "software": {"ray": "x"}, "created_at": "2026-01-02T00:00:00+00:00",
        "started_at": "2026-01-02T00:00:00+00:00", "ended_at": "2026-01-02T00:01:00+00:00",
        "startup_s": {"bundle_load": 0.1, "planning": 0.2, "ray_start": None, "actor_start": None,
                      "first_batch": None},
        "duplicates": {"rows": 1, "within_run": 1, "earlier_runs": 0, "digests_added": 3, "files_rewritten": 1,
                       "unstaged_files": 0, "seconds": 0.12345}})


# The keys summary.json had before the record was typed: external readers rely on them.
OLD_KEYS = {"run_id", "run_date", "reports", "complete", "bundle", "inputs", "manifest", "incremental", "objects",
            "chunks", "listing", "counts", "flagged", "rows_committed", "rows_in_files", "files", "attempts",
            "executions", "throughput", "timings_s", "workers", "config", "quality_thresholds", "software",
            "created_at", "started_at", "ended_at", "startup_s", "duplicates"}


def test_summary_round_trips_with_the_old_keys_and_a_version(tmp_path):
    summary = _summary()
    doc = summary.to_json()
    assert set(doc) == OLD_KEYS | {"summary_format"} and doc["summary_format"] == SUMMARY_FORMAT
    assert doc["duplicates"]["seconds"] == 0.123  # rounded when written, as before
    ledger = RunLedger(RunLayout(str(tmp_path), "r1"))
    uri = ledger.write_summary(summary)
    back = parse_summary(json.loads(open(uri).read()), uri)
    assert back.to_json() == doc
    run = find_run(str(tmp_path), "r1")
    assert run.summary == back and run.flag_on == ["csd"] and run.bundle_id == "b" * 32


def test_old_summary_reads_through_the_migration(tmp_path):
    out = str(tmp_path)
    # written by hand in the old shape: no summary_format, and from before startup_s, duplicates, flag_on and
    # quality_thresholds were recorded
    old = {"run_id": "old", "run_date": "2025-06-01", "reports": f"{out}/reports/run_date=2025-06-01",
           "complete": True, "bundle": {"id": "c" * 32, "uri": "/b"}, "inputs": ["/in"], "objects": 0,
           "chunks": {"total": 0, "committed": 0}, "listing": {"listed": 0, "skipped_done": 0},
           "counts": {"ok": 0}, "flagged": 0, "executions": [],
           "throughput": {"objects_per_s": None}, "timings_s": {"listing": 0.0, "scan_wall": 0.0,
                                                                "stage_busy": {"read": 0.0}},
           "created_at": "2025-06-01T01:00:00+00:00", "unknown_later_key": [1, 2]}
    write_bytes(f"{run_dir(out, 'old')}/{SUMMARY_JSON}", json.dumps(old).encode())
    (run,) = list_runs(out)
    s = run.summary
    assert s.summary_format == SUMMARY_FORMAT
    assert s.startup_s is None and s.duplicates is None and s.quality_thresholds is None
    assert s.timings_s.stage_busy.read == 0.0 and s.timings_s.stage_busy.score is None
    assert run.flag_on == ["featurenorm", "csd"]  # calibration's default, for summaries from before flag_on
    assert (run.run_date, run.complete, run.started_at) == ("2025-06-01", True, "2025-06-01T01:00:00+00:00")
    assert s.to_json()["unknown_later_key"] == [1, 2]  # kept, not dropped


def test_unknown_or_broken_summary_is_one_line(tmp_path):
    with pytest.raises(ReportError, match=r"s\.json has summary_format 99; this ood-audit reads 1 to"):
        parse_summary({"run_id": "r", "summary_format": 99}, "s.json")
    with pytest.raises(ReportError, match=r"s\.json field chunks\.total"):
        parse_summary({"run_id": "r", "chunks": {"total": "many"}}, "s.json")
    with pytest.raises(ReportError, match=r"s\.json is not a JSON object"):
        parse_summary([1], "s.json")


def test_typed_parts_serialise_like_the_old_dicts():
    assert StartupPhases(bundle_load=0.1).to_json() == {"bundle_load": 0.1, "planning": None, "ray_start": None,
                                                         "actor_start": None, "first_batch": None}
    stats = DuplicateStats()
    stats.rows += 2
    assert stats.to_json()["rows"] == 2


def _fake_bundle() -> SimpleNamespace:
    """A bundle whose blurry threshold was measured on the model input: the scan warns and skips blur."""
    quality = QualityPart(blurry=5.0, heldout_images=10, measured_on=MEASURED_ON_MODEL_INPUT)
    info = SimpleNamespace(preprocess=Preprocess(size=32), quality=quality,
                           thresholds=SimpleNamespace(flag_on=("featurenorm",)),
                           precision=SimpleNamespace(activations="float32"))
    return SimpleNamespace(id="f" * 32, uri="/fake-bundle", info=info)


def test_quality_thresholds_are_decided_and_warned_about_once_per_scan(tmp_path, monkeypatch, caplog):
    """The pass and the summary use the one decision: a pass is run (its pipeline fails at once, so no Ray is
    needed) and the summary written, and the bundle's warning is logged once."""
    from ood_audit.scan import ScanConfig, ScanIncomplete, driver, pipeline, run_scan

    monkeypatch.setattr(driver, "open_bundle", lambda uri, s3=None: _fake_bundle())
    monkeypatch.setattr(driver, "actor_resources", lambda cfg: pipeline.Actors({"num_cpus": 0.5}, "cpu", 1))
    seen = []

    def failing_pipeline(ctx, todo, attempt, actors):
        seen.append(ctx.quality)
        raise RuntimeError("no cluster in this test")

    monkeypatch.setattr(driver, "build_pipeline", failing_pipeline)
    listing = pa.table({"uri": ["/in/a.png", "/in/b.png"], "etag": ["e", "e"], "size": [1, 1]}, schema=LISTING_SCHEMA)
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="ood_audit.scan"), pytest.raises(ScanIncomplete):
        run_scan(ScanConfig(bundle="/fake-bundle", output=out, run_id="q1", max_attempts=1), listing=[listing],
                 start_ray=lambda: None)
    warnings = [r for r in caplog.records if "blurry threshold" in r.getMessage()]
    assert len(warnings) == 1 and len(seen) == 1
    summary = find_run(out, "q1").summary
    assert seen[0].blurry is None and summary.quality_thresholds == seen[0].model_dump()
    assert not summary.complete and summary.executions[0].error == "RuntimeError: no cluster in this test"


def test_steady_rate_leaves_out_the_start_and_the_drain():
    from ood_audit.scan.summary import steady_rate, steady_window

    # 10 slow rows of start-up, then 10 rows/s for 8 s, then a slow drain of 10 rows.
    progress = [(0.0, 0), (5.0, 10)] + [(5.0 + k, 10 + 10 * k) for k in range(1, 9)] + [(23.0, 100)]
    start, end, rows = steady_window(progress, 0.2, 0.9)
    assert (start, end, rows) == (6.0, 13.0, 70)  # from 20 rows (20 %) to 90 rows (90 %)
    assert steady_rate(progress) == 10.0
    assert steady_window(progress[:2], 0.2, 0.9) is None and steady_rate([(0.0, 0)] * 3) is None
